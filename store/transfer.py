"""Moving records between a snapshot folder and the online store (``load`` and ``export``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from mixlm.schemas import JobManifest
from mixlm.schemas.timefmt import utc_now
from mixlm.store.errors import EncoderNotFoundError, StoreError
from mixlm.store.online import EmbeddingStore
from mixlm.store.snapshot import SnapshotWriter, file_metadata, read_snapshot, snapshot_files

T = TypeVar("T")
LOAD_BATCH = 2_000


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def snapshot_encoder(path: str | Path, encoder_id: str | None = None) -> tuple[str, list[Path]]:
    """The one encoder of the snapshot files under ``path`` (or ``encoder_id``'s files)."""
    files = snapshot_files(path)
    by_encoder: dict[str, list[Path]] = {}
    for file in files:
        by_encoder.setdefault(file_metadata(file)["encoder_id"], []).append(file)
    if not by_encoder:
        raise StoreError(f"no snapshot part files (part-*.parquet) under {path}")
    if encoder_id is None:
        if len(by_encoder) > 1:
            encoders = ", ".join(sorted(by_encoder))
            raise StoreError(f"{path} holds several encoders ({encoders}); pick one with --encoder")
        encoder_id = next(iter(by_encoder))
    if encoder_id not in by_encoder:
        raise EncoderNotFoundError(f"no snapshot of encoder {encoder_id!r} under {path}")
    return encoder_id, by_encoder[encoder_id]


def load_snapshot(store: EmbeddingStore, path: str | Path, *, encoder_id: str | None = None,
                  progress: Callable[[JobManifest], None] | None = None) -> JobManifest:
    """Build or refresh LMDB from snapshot files, as a ``load`` job; replays are no-ops."""
    encoder_id, files = snapshot_encoder(path, encoder_id)
    job = store.jobs.create("load", encoder_id, params={"source": str(Path(path).resolve()),
                                                        "files": len(files)},
                            outputs={"lmdb": str((store.root / "lmdb").resolve())})
    try:
        for file in files:
            for batch in _batches(read_snapshot(file), LOAD_BATCH):
                store.put_many(batch, job_id=job.job_id, counts={"read": len(batch)})
                if progress:
                    progress(store.jobs.get(job.job_id))
    except BaseException as exc:
        store.jobs.finish(job.job_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    return store.jobs.finish(job.job_id)


def export_snapshot(store: EmbeddingStore, out_dir: str | Path, encoder_id: str, *,
                    dtype: str | None = None) -> list[Path]:
    """Write one encoder's records, tombstones included, as a snapshot that ``load`` reads."""
    stats = store.encoder_stats(encoder_id)
    if not stats.live and not stats.deleted:
        raise EncoderNotFoundError(f"encoder {encoder_id!r} has no records in {store.root}")
    job_id = f"export-{utc_now():%Y%m%dT%H%M%SZ}"
    with SnapshotWriter(out_dir, encoder_id, job_id, dtype=dtype or stats.dtype or "float32") as writer:
        writer.write(store.iter_records(encoder_id, include_deleted=True))
    return writer.files
