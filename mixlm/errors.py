"""One error line and a stable exit code for every user error, never a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

import click

from mixlm.schemas import CorruptRecordError, ValidationError
from mixlm.store.errors import EncoderNotFoundError, JobNotFoundError, StoreError, StoreNotFoundError

F = TypeVar("F", bound=Callable)

# Exit codes scripts may rely on.
EXIT_ERROR = 1
EXIT_NOT_FOUND = 2
EXIT_NO_STORE = 3
EXIT_CORRUPT = 4


def _exit_code(exc: Exception) -> int | None:
    if isinstance(exc, CorruptRecordError):
        return EXIT_CORRUPT
    if isinstance(exc, StoreNotFoundError):
        return EXIT_NO_STORE
    if isinstance(exc, (JobNotFoundError, EncoderNotFoundError, FileNotFoundError)):
        return EXIT_NOT_FOUND
    if isinstance(exc, (StoreError, ValidationError, ValueError, KeyError)):
        return EXIT_ERROR
    return None


def user_errors(func: F) -> F:
    """Turn the library's expected errors into ``<prog>: error: <message>`` and an exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - narrowed by _exit_code, others re-raised
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
