"""Parquet snapshots: ``snapshots/encoder=<id>/job=<job_id>/part-*.parquet``.

Each part is written under a hidden temporary name and renamed into place, so a reader
never sees half a file. At scale the snapshot is the durable output of a distributed
backfill and LMDB is built from it with ``load_snapshot``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pyarrow.parquet as pq

from mixlm.schemas import DTYPES, EmbeddingRecord, ValidationError
from mixlm.schemas.arrow import records_to_table, table_metadata, table_to_records
from mixlm.schemas.lmdb_value import SCHEMA_VERSION

DEFAULT_ROWS_PER_FILE = 50_000


class SnapshotWriter:
    """Buffers records of one encoder and job, writing a part file every ``rows_per_file``."""

    def __init__(self, root: str | Path, encoder_id: str, job_id: str, *, dtype: str = "float32",
                 rows_per_file: int = DEFAULT_ROWS_PER_FILE):
        if dtype not in DTYPES:
            raise ValidationError("dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.directory = Path(root) / f"encoder={encoder_id}" / f"job={job_id}"
        self.encoder_id = encoder_id
        self.job_id = job_id
        self.dtype = dtype
        self.rows_per_file = rows_per_file
        self.files: list[Path] = []
        self._buffer: list[EmbeddingRecord] = []
        self._shape: tuple[int, int, int] | None = None  # T_S, dim, retrieval dim
        # Several workers may write parts of one job; the token keeps their names apart.
        self.writer_token = secrets.token_hex(4)

    def write(self, records: Iterable[EmbeddingRecord]) -> None:
        for record in records:
            if record.encoder_id != self.encoder_id:
                raise ValueError(f"record of encoder {record.encoder_id!r} in a snapshot of {self.encoder_id!r}")
            if not record.deleted and self._shape is None:
                retrieval_dim = 0 if record.retrieval_vector is None else record.retrieval_vector.size
                self._shape = (record.n_tokens, record.dim, retrieval_dim)
            self._buffer.append(record)
            if len(self._buffer) >= self.rows_per_file:
                self.flush()

    def flush(self) -> Path | None:
        if not self._buffer:
            return None
        n_tokens, dim, retrieval_dim = self._shape or (1, 1, 0)
        table = records_to_table(
            self._buffer, n_tokens=n_tokens, dim=dim, retrieval_dim=retrieval_dim, dtype=self.dtype,
            metadata={"encoder_id": self.encoder_id, "job_id": self.job_id, "dtype": self.dtype,
                      "n_tokens": n_tokens, "dim": dim, "retrieval_dim": retrieval_dim,
                      "schema_version": SCHEMA_VERSION},
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"part-{len(self.files):05d}-{self.writer_token}.parquet"
        final = self.directory / name
        temporary = self.directory / f".{name}.tmp"
        with open(temporary, "wb") as sink:
            pq.write_table(table, sink, compression="zstd")
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(temporary, final)
        self.files.append(final)
        self._buffer = []
        return final

    def close(self) -> list[Path]:
        self.flush()
        return self.files

    def __enter__(self) -> SnapshotWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def snapshot_files(path: str | Path) -> list[Path]:
    """Part files under ``path`` (a file, a job, an encoder or a whole snapshots folder)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"snapshot path {path} does not exist")
    return sorted(p for p in path.rglob("part-*.parquet") if not p.name.startswith("."))


def file_metadata(path: Path) -> dict[str, str]:
    return table_metadata(pq.read_schema(path))


def read_snapshot(path: str | Path, *, as_dtype: str | None = None,
                  on_file: Callable[[Path], None] | None = None) -> Iterator[EmbeddingRecord]:
    """Every record of every part file under ``path``, one row group in memory at a time."""
    for file in snapshot_files(path):
        if on_file:
            on_file(file)
        parquet = pq.ParquetFile(file)
        for group in range(parquet.num_row_groups):
            yield from table_to_records(parquet.read_row_group(group), as_dtype=as_dtype)
