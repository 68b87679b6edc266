"""Moving records between a snapshot folder and the online store (``load`` and ``export``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from mixlm.schemas import JobManifest
from mixlm.schemas.timefmt import utc_now
from mixlm.store.errors import EncoderNotFoundError, StoreError
from mixlm.store.online import EmbeddingStore
from mixlm.store.snapshot import SnapshotWriter, file_metadata, read_part, snapshot_files

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


@dataclass(frozen=True)
class VerifiedSnapshot:
    """Part files of one encoder whose every row passed its checksum in ``verify_snapshot`` (or,
    with ``allow_unverified``, was read without one)."""

    source: Path
    encoder_id: str
    files: list[Path]
    allow_unverified: bool = False


def verify_snapshot(path: str | Path, encoder_id: str | None = None, *,
                    allow_unverified: bool = False) -> VerifiedSnapshot:
    """Read and verify every row of the snapshot's parts, writing nothing: a damaged part is refused
    (StoreCorruptError naming the file and the row) before a load has written anything."""
    encoder_id, files = snapshot_encoder(path, encoder_id)
    for file in files:
        for _record in read_part(file, allow_unverified=allow_unverified):
            pass
    return VerifiedSnapshot(Path(path), encoder_id, files, allow_unverified)


def load_snapshot(store: EmbeddingStore, path: str | Path, *, encoder_id: str | None = None,
                  allow_unverified: bool = False,
                  progress: Callable[[JobManifest], None] | None = None) -> JobManifest:
    """Build or refresh LMDB from snapshot files, as a ``load`` job; replays are no-ops.

    Every part is verified before anything is written, so a damaged snapshot loads nothing.
    """
    snapshot = verify_snapshot(path, encoder_id, allow_unverified=allow_unverified)
    return load_verified(store, snapshot, progress=progress)


def load_verified(store: EmbeddingStore, snapshot: VerifiedSnapshot, *,
                  progress: Callable[[JobManifest], None] | None = None) -> JobManifest:
    """Load a snapshot that ``verify_snapshot`` passed; rows are verified again as they are read."""
    params = {"source": str(snapshot.source.resolve()), "files": len(snapshot.files),
              "allow_unverified": snapshot.allow_unverified}
    job = store.jobs.create("load", snapshot.encoder_id, params=params,
                            outputs={"lmdb": str((store.root / "lmdb").resolve())})
    try:
        for file in snapshot.files:
            for batch in _batches(read_part(file, allow_unverified=snapshot.allow_unverified), LOAD_BATCH):
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
