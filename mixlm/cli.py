"""``mixlm``: the top-level command; each capability registers its group here."""

import click

from mixlm.bench.cli import bench
from mixlm.pipelines.cli import backfill, stream
from mixlm.version import __version__


@click.group(name="mixlm", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mixlm")
def main() -> None:
    """mixlm: LLM ranking with cached item embedding tokens (MixLM)."""


for command in (backfill, stream, bench):
    main.add_command(command)
