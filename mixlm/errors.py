"""One error line and a stable exit code for every user error, never a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

import click

from mixlm.schemas import CorruptRecordError, InputError, UnavailableError
from mixlm.store.errors import (
    EncoderNotFoundError,
    JobNotFoundError,
    StoreCorruptError,
    StoreError,
    StoreNotFoundError,
)

F = TypeVar("F", bound=Callable)

# Exit codes scripts may rely on (docs/reliability.md lists them with the failures behind them).
EXIT_ERROR = 1
EXIT_NOT_FOUND = 2
EXIT_NO_STORE = 3
EXIT_CORRUPT = 4
EXIT_UNAVAILABLE = 5


class JobCancelled(BaseException):
    """A job stopped by SIGINT or SIGTERM; the command exits 128 + the signal number.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way up
    (Beam's among them) swallows or rewraps it.
    """

    def __init__(self, signum: int, message: str):
        self.signum = signum
        super().__init__(message)


def _exit_code(exc: BaseException) -> int | None:
    if isinstance(exc, JobCancelled):
        return 128 + exc.signum
    if isinstance(exc, (CorruptRecordError, StoreCorruptError)):
        return EXIT_CORRUPT
    if isinstance(exc, StoreNotFoundError):
        return EXIT_NO_STORE
    if isinstance(exc, (JobNotFoundError, EncoderNotFoundError, FileNotFoundError)):
        return EXIT_NOT_FOUND
    if isinstance(exc, UnavailableError):
        return EXIT_UNAVAILABLE
    if isinstance(exc, (StoreError, InputError)):
        return EXIT_ERROR
    return None  # a programming error: its traceback is the useful report


def user_errors(func: F) -> F:
    """Turn the library's expected errors into ``<prog>: error: <message>`` and an exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (Exception, JobCancelled) as exc:  # noqa: BLE001 - narrowed by _exit_code, others re-raised
            code = _exit_code(exc)
            if code is None:
                raise
            prog = click.get_current_context().find_root().command.name or "mixlm"
            click.echo(f"{prog}: error: {exc}", err=True)
            sys.exit(code)

    return wrapper  # type: ignore[return-value]


def fail(message: str, code: int = EXIT_ERROR) -> None:
    prog = click.get_current_context().find_root().command.name or "mixlm"
    click.echo(f"{prog}: error: {message}", err=True)
    sys.exit(code)

