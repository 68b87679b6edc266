"""``mixlm``: the top-level command; each capability registers its group here."""

import click

from mixlm.bench.cli import bench
from mixlm.devbroker.cli import kafka
from mixlm.encoders.cli import bundle, models
from mixlm.errors import CommandGroup
from mixlm.pipelines.cli import backfill, stream
from mixlm.pipelines.produce import produce
from mixlm.ranker.cli import rank, search
from mixlm.ranker.serve_cli import serve
from mixlm.training.cli import evaluate, train
from mixlm.version import __version__


@click.group(name="mixlm", cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mixlm")
def main() -> None:
    """mixlm: LLM ranking with cached item embedding tokens (MixLM)."""


for command in (bundle, models, backfill, stream, kafka, produce, rank, search, serve, train, evaluate, bench):
    main.add_command(command)
