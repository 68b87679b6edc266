"""One error line and the error's own exit code for every ``MixlmError``, never a traceback.

The error classes and their codes live at the bottom of the package (``mixlm.schemas.errors``);
this module only maps them, by ``exit_code``, for the command line. Anything else (a
``KeyError`` from a bug) propagates with its traceback: that is the useful report.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

import click

from mixlm.schemas.errors import (
    EXIT_CORRUPT,
    EXIT_ERROR,
    EXIT_NO_STORE,
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    JobCancelled,
    MixlmError,
)

__all__ = ["EXIT_CORRUPT", "EXIT_ERROR", "EXIT_NOT_FOUND", "EXIT_NO_STORE", "EXIT_UNAVAILABLE", "EXIT_USAGE",
           "CommandGroup", "fail", "user_errors"]

F = TypeVar("F", bound=Callable)


def user_errors(func: F) -> F:
    """Turn a ``MixlmError`` (or ``JobCancelled``) into ``<prog>: error: <message>`` and its ``exit_code``."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (MixlmError, JobCancelled) as exc:
            fail(str(exc), exc.exit_code)

    return wrapper  # type: ignore[return-value]


def fail(message: str, code: int = EXIT_ERROR) -> None:
    prog = click.get_current_context().find_root().command.name or "mixlm"
    click.echo(f"{prog}: error: {message}", err=True)
    sys.exit(code)


class CommandGroup(click.Group):
    """The root group of ``mixlm`` and ``mixlm-store``: click's usage errors (an unknown command
    or option, a bad option value, a missing argument) exit ``EXIT_USAGE`` instead of click's 2,
    which mixlm reserves for "not found"."""

    def make_context(self, *args, **kwargs) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            exc.exit_code = EXIT_USAGE
            raise

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            exc.exit_code = EXIT_USAGE
            raise
