"""Errors raised by the data contracts."""


class ValidationError(ValueError):
    """An input that breaks a contract; ``str()`` is one line a person can act on."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class CorruptRecordError(ValueError):
    """A stored value that fails its integrity check (bad magic, size or checksum)."""
