"""``mixlm-store``: inspect and maintain an embedding store."""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

from mixlm.errors import EXIT_NOT_FOUND, CommandGroup, fail, user_errors
from mixlm.options import store_option
from mixlm.output import columns_table, echo_err, key_value_table, output_option, render
from mixlm.schemas import DTYPES
from mixlm.store.index import build_vector_index
from mixlm.store.online import EmbeddingStore
from mixlm.store.transfer import export_snapshot, load_verified, verify_snapshot
from mixlm.version import __version__

PROGRESS_EVERY_S = 2.0
JOB_COLUMNS = ("job_id", "kind", "status", "encoder_id", "started", "finished", "read", "written",
               "deleted", "stale", "dead_lettered", "corrupt_replaced")


def _open(ctx: click.Context, *, write: bool = False, create: bool = False) -> EmbeddingStore:
    """The store, read-only unless the command writes (reads work on a read-only filesystem)."""
    return EmbeddingStore.open(ctx.obj["store"], create=create, readonly=not (write or create))


@click.group(name="mixlm-store", cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@store_option()
@click.version_option(__version__, prog_name="mixlm-store")
@click.pass_context
def main(ctx: click.Context, store_path: Path) -> None:
    """Inspect and maintain a mixlm embedding store (LMDB online records + Parquet snapshots).

    --store goes before the command or after it: 'mixlm-store --store DIR get JOB' and
    'mixlm-store get JOB --store DIR' are the same.
    """
    ctx.ensure_object(dict)["store"] = store_path


@main.command()
@click.argument("job_id")
@output_option()
@store_option(after_command=True)
@click.pass_context
@user_errors
def get(ctx: click.Context, job_id: str, output: str) -> None:
    """Show the manifest of JOB_ID: status, counts, offsets, outputs, errors."""
    manifest = _open(ctx).jobs.get(job_id).to_dict()
    click.echo(render(manifest, output, key_value_table(manifest)))


@main.command("dead-letters")
@click.argument("job_id")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="show at most N")
@output_option()
@store_option(after_command=True)
@click.pass_context
@user_errors
def dead_letters(ctx: click.Context, job_id: str, limit: int | None, output: str) -> None:
    """Show JOB_ID's dead letters: the reason, the source and the raw event."""
    store = _open(ctx)
    store.jobs.get(job_id)  # an unknown job is an error, not an empty list
    letters = [letter.to_dict() for letter in store.dead_letters.list(job_id, limit)]
    rows = [{**letter, "raw": _preview(letter["raw"] if letter["raw"] is not None else letter["raw_base64"])}
            for letter in letters]
    table = columns_table(rows, ("source", "reason", "raw")) if rows else f"job {job_id} has no dead letters"
    click.echo(render(letters, output, table))


def _preview(text: str, limit: int = 60) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


@main.command()
@click.option("--limit", type=click.IntRange(min=1), default=None, help="show at most N jobs")
@output_option()
@store_option(after_command=True)
@click.pass_context
@user_errors
def jobs(ctx: click.Context, limit: int | None, output: str) -> None:
    """List jobs, newest first."""
    manifests = [m.to_dict() for m in _open(ctx).jobs.list()[:limit]]
    rows = [{**m, **m["counts"]} for m in manifests]
    table = columns_table(rows, JOB_COLUMNS) if rows else "no jobs yet"
    click.echo(render(manifests, output, table))


@main.command()
@click.argument("item_id")
@click.option("--encoder", "encoder_id", help="encoder id (default: the active encoder)")
@click.option("--vectors", "show_vectors", is_flag=True, help="also print the vector values")
@output_option()
@store_option(after_command=True)
@click.pass_context
@user_errors
def item(ctx: click.Context, item_id: str, encoder_id: str | None, show_vectors: bool, output: str) -> None:
    """Show ITEM_ID's stored record: header fields and vector shape and norms."""
    store = _open(ctx)
    encoder_id = store.resolve_encoder(encoder_id)
    record = store.get(encoder_id, item_id)
    if record is None:
        fail(f"item {item_id!r} not found for encoder {encoder_id} in {store.root}", EXIT_NOT_FOUND)
    summary = record.summary()
    if show_vectors and not record.deleted:
        summary["vectors"] = record.vectors.astype(np.float32).round(6).tolist()
    click.echo(render(summary, output, key_value_table(summary)))


@main.command()
@output_option()
@store_option(after_command=True)
@click.pass_context
@user_errors
def stats(ctx: click.Context, output: str) -> None:
    """Records per encoder (live and deleted), sizes, active encoder, job count."""
    data = _open(ctx).stats()
    table = key_value_table({k: v for k, v in data.items() if k != "encoders"})
    if data["encoders"]:
        table += "\n\n" + columns_table(data["encoders"], ("encoder_id", "live", "deleted", "n_tokens",
                                                           "dim", "dtype", "value_bytes"))
    click.echo(render(data, output, table))


@main.command()
@click.argument("snapshot_dir", type=click.Path(path_type=Path))
@click.option("--encoder", "encoder_id", help="load only this encoder's files")
@click.option("--allow-unverified", is_flag=True,
              help="also load parts without row checksums (written by mixlm before they existed), unverified")
@output_option()
@store_option(after_command=True)
@click.pass_context
@user_errors
def load(ctx: click.Context, snapshot_dir: Path, encoder_id: str | None, allow_unverified: bool,
         output: str) -> None:
    """Build or refresh LMDB from a Parquet snapshot folder (creates the store if needed).

    Every row is verified against its checksum before anything is written (or the store is
    created): a damaged part is refused whole, naming the file and the row (exit 4). Replays
    are harmless: a record older than or equal to the stored version is skipped.
    """
    snapshot = verify_snapshot(snapshot_dir, encoder_id, allow_unverified=allow_unverified)
    store = _open(ctx, create=True)
    last_report = [0.0]

    def progress(manifest) -> None:
        if time.monotonic() - last_report[0] < PROGRESS_EVERY_S:
            return
        last_report[0] = time.monotonic()
        counts = manifest.counts
        echo_err(f"loaded {counts.read:,} records ({counts.written:,} written, {counts.deleted:,} deleted, "
                 f"{counts.stale:,} stale)")

    manifest = load_verified(store, snapshot, progress=progress).to_dict()
    click.echo(render(manifest, output, key_value_table(manifest)))


@main.command()
@click.argument("out_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--encoder", "encoder_id", help="encoder id (default: the active encoder)")
@click.option("--dtype", type=click.Choice(DTYPES), default=None, help="vector type (default: as stored)")
@store_option(after_command=True)
@click.pass_context
@user_errors
def export(ctx: click.Context, out_dir: Path, encoder_id: str | None, dtype: str | None) -> None:
    """Write one encoder's records (tombstones included) as a Parquet snapshot under OUT_DIR."""
    store = _open(ctx)
    files = export_snapshot(store, out_dir, store.resolve_encoder(encoder_id), dtype=dtype)
    for file in files:
        click.echo(str(file))


@main.command()
@click.argument("encoder_id")
@store_option(after_command=True)
@click.pass_context
@user_errors
def promote(ctx: click.Context, encoder_id: str) -> None:
    """Make ENCODER_ID the active encoder, atomically (readers switch on their next lookup)."""
    previous = _open(ctx, write=True).promote(encoder_id)
    click.echo(f"active encoder: {encoder_id} (was {previous or 'none'})")


@main.group()
def index() -> None:
    """First-stage FAISS indexes over an encoder's retrieval vectors."""


@index.command("build")
@click.option("--encoder", "encoder_id", help="encoder id (default: the active encoder)")
@output_option()
@store_option(after_command=True)
@click.pass_context
@user_errors
def index_build(ctx: click.Context, encoder_id: str | None, output: str) -> None:
    """Build (or rebuild) the FAISS index of one encoder's live records."""
    store = _open(ctx.find_root(), write=True)  # the index is written into the store
    summary = build_vector_index(store, store.resolve_encoder(encoder_id))
    click.echo(render(summary, output, key_value_table(summary)))
