"""The error model: ``MixlmError``, the base of every error a person can act on, and its exit codes.

Each error class carries the exit code a command ends with (``exit_code``); the command line
prints ``str()`` (one line) and exits with it. Any other exception is a programming error and
keeps its traceback. The codes are documented in docs/reliability.md and the README.
"""

EXIT_ERROR = 1  # bad input: an argument, a config, a file that is not what it claims
EXIT_NOT_FOUND = 2  # a job, item, encoder or path that does not exist
EXIT_NO_STORE = 3  # no mixlm store at the path
EXIT_CORRUPT = 4  # a record, a snapshot part or the LMDB file failed its integrity check
EXIT_UNAVAILABLE = 5  # the environment failed: disk full, read-only filesystem, no broker, no server
EXIT_USAGE = 64  # the command line itself: an unknown command or option, a bad option value (sysexits' EX_USAGE)


class MixlmError(Exception):
    """Base class of mixlm's expected errors; ``str()`` is one line, ``exit_code`` the command's exit status."""

    exit_code = EXIT_ERROR


class InputError(MixlmError, ValueError):
    """Bad input from a user (an argument, a config, a file); ``str()`` is one line a person can act on."""


class ValidationError(InputError):
    """An input that breaks a contract; ``str()`` is one line a person can act on."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class PathNotFoundError(MixlmError, FileNotFoundError):
    """A file or folder the user named does not exist (or is not what was asked for)."""

    exit_code = EXIT_NOT_FOUND


class CorruptRecordError(MixlmError, ValueError):
    """A stored value that fails its integrity check (bad magic, size or checksum)."""

    exit_code = EXIT_CORRUPT


class UnavailableError(MixlmError, RuntimeError):
    """The environment failed, not the input: disk full, a read-only filesystem, no Kafka broker."""

    exit_code = EXIT_UNAVAILABLE


class JobCancelled(BaseException):
    """A job stopped by SIGINT or SIGTERM; the command exits 128 + the signal number.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way up
    (Beam's among them) swallows or rewraps it; hence not a ``MixlmError``, but it carries an
    ``exit_code`` all the same.
    """

    def __init__(self, signum: int, message: str):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(message)
