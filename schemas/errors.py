"""Errors raised by the data contracts, and the base classes the command line maps to exit codes."""


class InputError(ValueError):
    """Bad input from a user (an argument, a config, a file); ``str()`` is one line a person can act on."""


class ValidationError(InputError):
    """An input that breaks a contract; ``str()`` is one line a person can act on."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class CorruptRecordError(ValueError):
    """A stored value that fails its integrity check (bad magic, size or checksum)."""


class UnavailableError(RuntimeError):
    """The environment failed, not the input: disk full, a read-only filesystem, no Kafka broker."""
