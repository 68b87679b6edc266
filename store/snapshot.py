"""Parquet snapshots: ``snapshots/encoder=<id>/job=<job_id>/part-*.parquet``.

Each part is written under a hidden temporary name and renamed into place, so a reader
never sees half a file. At scale the snapshot is the durable output of a distributed
backfill and LMDB is built from it with ``load_snapshot``. Every row carries the checksum of
the LMDB value it loads as, and every row read is verified against it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mixlm.schemas import (
    DTYPES,
    EmbeddingRecord,
    InputError,
    PathNotFoundError,
    UnavailableError,
    ValidationError,
    check_encoder_id,
)
from mixlm.schemas.arrow import (
    CHECKSUM,
    TITLE,
    embedding_schema,
    records_to_table,
    table_metadata,
    table_to_records,
)
from mixlm.schemas.lmdb_value import SCHEMA_VERSION, UNTITLED_SCHEMA_VERSION, value_checksum
from mixlm.store.errors import DISK_FULL, StoreCorruptError

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
        name = f"part-{len(self.files):05d}-{self.writer_token}.parquet"
        final = self.directory / name
        temporary = self.directory / f".{name}.tmp"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(temporary, "wb") as sink:
                pq.write_table(table, sink, compression="zstd")
                sink.flush()
                os.fsync(sink.fileno())
            os.replace(temporary, final)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            if exc.errno in DISK_FULL:
                raise UnavailableError(f"disk full writing a snapshot to {self.directory} ({exc.strerror})") from exc
            raise
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
        raise PathNotFoundError(f"snapshot path {path} does not exist")
    return sorted(p for p in path.rglob("part-*.parquet") if not p.name.startswith("."))


# What pyarrow raises on a damaged file, and record validation on a damaged row (ValidationError).
_READ_ERRORS = (pa.ArrowException, OSError, ValueError)


def file_metadata(path: Path) -> dict[str, str]:
    """A part's ``mixlm.*`` metadata (encoder_id, job_id, dtype, T_S, dim, ...), checked against its columns."""
    return _check_part(path)[0]


def _check_part(path: Path) -> tuple[dict[str, str], int | None]:
    """The part's metadata, and the value schema version its row checksums were computed in: the
    current one, 2 for parts written before display titles (no title column), None for parts
    written before row checksums.

    A Parquet file without mixlm metadata is not a part (InputError); an unreadable footer, or
    columns that differ from the layout its metadata describes, is a damaged part.
    """
    try:
        schema = pq.read_schema(path)
        meta = table_metadata(schema)
    except _READ_ERRORS as exc:
        raise _damaged(path, exc) from None
    if not meta:
        raise InputError(f"{path} is not a mixlm snapshot part: its Parquet metadata has no mixlm.* keys")
    try:
        check_encoder_id(meta["encoder_id"])
        expected = embedding_schema(int(meta["n_tokens"]), int(meta["dim"]), int(meta["retrieval_dim"]),
                                    meta["dtype"])
    except (KeyError, ValueError, OverflowError):
        raise StoreCorruptError(f"{path} is damaged: its mixlm metadata is incomplete or invalid") from None
    columns = schema.remove_metadata()
    untitled = expected.remove(expected.get_field_index(TITLE))
    layouts = ((expected, SCHEMA_VERSION), (untitled, UNTITLED_SCHEMA_VERSION),
               (untitled.remove(untitled.get_field_index(CHECKSUM)), None))
    for layout, summed_as in layouts:
        if columns.equals(layout):
            return meta, summed_as
    raise StoreCorruptError(f"{path} is damaged: its columns differ from the layout its metadata describes")


def _damaged(path: Path, exc: Exception, where: str = "") -> StoreCorruptError:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return StoreCorruptError(f"{path} is damaged{where}: {reason}")


def read_part(path: Path, *, as_dtype: str | None = None,
              allow_unverified: bool = False) -> Iterator[EmbeddingRecord]:
    """Every record of one part file, one row group in memory at a time, each row verified.

    A row that fails its checksum, or a part that fails to read, raises StoreCorruptError naming
    the file (and the row). A part without checksums is refused unless ``allow_unverified``.
    """
    meta, summed_as = _check_part(path)
    if summed_as is None and not allow_unverified:
        raise InputError(
            f"{path} has no row checksums (written by mixlm before they existed), so it cannot be verified: "
            "re-export it from the store that loaded it with 'mixlm-store export', or load it unverified "
            "with --allow-unverified"
        )
    # The checked footer metadata: a row group's own copy of it may differ in a damaged file.
    layout = {"n_tokens": int(meta["n_tokens"]), "dim": int(meta["dim"]), "dtype": meta["dtype"]}
    row = 0
    try:
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group)
            checksums = table.column(CHECKSUM).to_numpy() if summed_as else None
            for index, record in enumerate(table_to_records(table, **layout)):
                if checksums is not None and value_checksum(record, summed_as) != checksums[index]:
                    raise StoreCorruptError(f"{path} is damaged: row {row} (item {record.item_id!r}) "
                                            "fails its checksum")
                if record.encoder_id != meta["encoder_id"]:
                    raise StoreCorruptError(f"{path} is damaged: row {row} is of encoder {record.encoder_id!r}, "
                                            f"the part of {meta['encoder_id']!r}")
                yield record if as_dtype is None else _as_dtype(record, as_dtype)
                row += 1
    except _READ_ERRORS as exc:
        raise _damaged(path, exc, f" at row {row}") from None


def _as_dtype(record: EmbeddingRecord, dtype: str) -> EmbeddingRecord:
    if record.deleted:
        return record
    retrieval = None if record.retrieval_vector is None else record.retrieval_vector.astype(dtype)
    return replace(record, vectors=record.vectors.astype(dtype), retrieval_vector=retrieval)


def read_snapshot(path: str | Path, *, as_dtype: str | None = None, allow_unverified: bool = False,
                  on_file: Callable[[Path], None] | None = None) -> Iterator[EmbeddingRecord]:
    """Every record of every part file under ``path``, verified as ``read_part`` does."""
    for file in snapshot_files(path):
        if on_file:
            on_file(file)
        yield from read_part(file, as_dtype=as_dtype, allow_unverified=allow_unverified)
