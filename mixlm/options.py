"""Options every command shares (``--store``, ``--bundle``), each declared once here."""

from __future__ import annotations

from pathlib import Path

import click

from mixlm.config import default_store_path

_STORE_DEFAULT = "$MIXLM_STORE or ~/.local/share/mixlm/store"


def store_option(*, after_command: bool = False):
    """``--store DIR`` as ``store_path``: the store directory, ``$MIXLM_STORE`` or the default path.

    ``after_command``: the copy on each ``mixlm-store`` command, so that ``mixlm-store get JOB
    --store DIR`` works as well as ``mixlm-store --store DIR get JOB``; given there, it replaces
    the group's value (``ctx.obj["store"]``), which keeps its environment variable and default.
    """
    where = (dict(default=None, expose_value=False, callback=_store_after_command,
                  help=f"store directory  [default: {_STORE_DEFAULT}]") if after_command
             else dict(envvar="MIXLM_STORE", default=default_store_path, show_default=_STORE_DEFAULT,
                       help="store directory"))
    return click.option("--store", "store_path", type=click.Path(path_type=Path), **where)


def _store_after_command(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.ensure_object(dict)["store"] = value


def bundle_option(*, required: bool = True, help: str = "model bundle directory (mixlm bundle init / mixlm train)"):
    """``--bundle DIR`` as ``bundle_dir``: an existing model bundle directory."""
    return click.option("--bundle", "bundle_dir", required=required, default=None,
                        type=click.Path(exists=True, file_okay=False), help=help)
