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
from mixlm.verbosity import quiet_third_party
from mixlm.version import __version__


@click.group(name="mixlm", cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True,
              help="also show the progress bars and warnings of the libraries underneath (transformers, torch, ...)")
@click.version_option(__version__, prog_name="mixlm")
def main(verbose: bool) -> None:
    """mixlm: LLM ranking with cached item embedding tokens (MixLM)."""
    if not verbose:
        quiet_third_party()


for command in (bundle, models, backfill, stream, kafka, produce, rank, search, serve, train, evaluate, bench):
    main.add_command(command)
