"""Arrow schemas of the contracts, and EmbeddingRecord <-> Arrow table conversion."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa

from mixlm.schemas.embedding_record import EmbeddingRecord
from mixlm.schemas.lmdb_value import value_checksum

ITEM_EVENT_SCHEMA = pa.schema([
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("op", pa.string(), nullable=False),
    # null in a catalog: the backfill gives such rows its start time and compares them by content
    pa.field("version", pa.int64()),
    pa.field("title", pa.string()),
    pa.field("text", pa.string()),
    pa.field("fields", pa.map_(pa.string(), pa.string())),
    pa.field("event_time", pa.string()),
])

_ARROW_FLOATS = {"float32": pa.float32(), "float16": pa.float16()}
META_PREFIX = "mixlm."
CHECKSUM = "checksum"
TITLE = "title"  # parts written before display titles lack it


def embedding_schema(n_tokens: int, dim: int, retrieval_dim: int, dtype: str) -> pa.Schema:
    """Vectors as ``fixed_size_list<fixed_size_list<dtype, dim>, T_S>``.

    Tombstones hold zero vectors (``deleted`` tells them apart): Parquet does not round-trip
    null entries of nested fixed-size lists. ``retrieval_vector`` exists when retrieval_dim > 0.
    ``title`` is the item's display title. ``checksum`` is the checksum of the LMDB value the row
    loads as (``value_checksum``): it covers everything ``load`` writes, item id, encoder id and
    title included.
    """
    value_type = _ARROW_FLOATS[dtype]
    fields = [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("item_version", pa.int64(), nullable=False),
        pa.field("encoder_id", pa.string(), nullable=False),
        pa.field("content_hash", pa.string(), nullable=False),
        pa.field("deleted", pa.bool_(), nullable=False),
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("dim", pa.int32(), nullable=False),
        pa.field("dtype", pa.string(), nullable=False),
        pa.field("vectors", pa.list_(pa.list_(value_type, dim), n_tokens), nullable=False),
        pa.field("source_tokens", pa.int32(), nullable=False),
        pa.field("truncated", pa.bool_(), nullable=False),
        pa.field("job_id", pa.string(), nullable=False),
        pa.field("encoded_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field(TITLE, pa.string(), nullable=False),
        pa.field(CHECKSUM, pa.uint64(), nullable=False),
    ]
    if retrieval_dim:
        fields.insert(9, pa.field("retrieval_vector", pa.list_(value_type, retrieval_dim), nullable=False))
    return pa.schema(fields)


def records_to_table(records: Sequence[EmbeddingRecord], *, n_tokens: int, dim: int,
                     retrieval_dim: int, dtype: str, metadata: dict[str, str]) -> pa.Table:
    """Build one table; every live record must have the given shape (it is the encoder's)."""
    np_dtype = np.dtype(dtype)
    rows = len(records)
    flat = np.zeros((rows, n_tokens * dim), dtype=np_dtype)
    retrieval = np.zeros((rows, retrieval_dim), dtype=np_dtype)
    for row, record in enumerate(records):
        if record.deleted:
            continue
        if record.vectors.shape != (n_tokens, dim):
            raise ValueError(
                f"item {record.item_id!r}: vectors shape {record.vectors.shape} differs from the "
                f"snapshot's ({n_tokens}, {dim})"
            )
        flat[row] = record.vectors.reshape(-1)
        if retrieval_dim:
            if record.retrieval_vector is None or record.retrieval_vector.size != retrieval_dim:
                raise ValueError(f"item {record.item_id!r}: needs a retrieval vector of size {retrieval_dim}")
            retrieval[row] = record.retrieval_vector
    value_type = _ARROW_FLOATS[dtype]
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), type=value_type), dim)
    vectors = pa.FixedSizeListArray.from_arrays(inner, n_tokens)
    schema = embedding_schema(n_tokens, dim, retrieval_dim, dtype).with_metadata(
        {f"{META_PREFIX}{key}": str(value) for key, value in metadata.items()}
    )
    columns = {
        "item_id": pa.array([r.item_id for r in records], pa.string()),
        "item_version": pa.array([r.item_version for r in records], pa.int64()),
        "encoder_id": pa.array([r.encoder_id for r in records], pa.string()),
        "content_hash": pa.array([r.content_hash for r in records], pa.string()),
        "deleted": pa.array([r.deleted for r in records], pa.bool_()),
        "n_tokens": pa.array([r.n_tokens for r in records], pa.int32()),
        "dim": pa.array([r.dim for r in records], pa.int32()),
        "dtype": pa.array([dtype] * rows, pa.string()),
        "vectors": vectors,
        "source_tokens": pa.array([r.source_tokens for r in records], pa.int32()),
        "truncated": pa.array([r.truncated for r in records], pa.bool_()),
        "job_id": pa.array([r.job_id for r in records], pa.string()),
        "encoded_at": pa.array(
            (np.array([r.encoded_at for r in records], dtype=np.float64) * 1e6).astype("int64"),
            pa.int64(),
        ).cast(pa.timestamp("us", tz="UTC")),
        TITLE: pa.array([r.title for r in records], pa.string()),
    }
    if retrieval_dim:
        columns["retrieval_vector"] = pa.FixedSizeListArray.from_arrays(
            pa.array(retrieval.reshape(-1), type=value_type), retrieval_dim)
    unsummed = schema.remove(schema.get_field_index(CHECKSUM))
    table = pa.Table.from_arrays([columns[f.name] for f in unsummed], schema=unsummed)
    # Summed over the records as a reader rebuilds them: vectors in the table's dtype, encoded_at in µs.
    rebuilt = table_to_records(table, n_tokens=n_tokens, dim=dim, dtype=dtype)
    checksums = pa.array([value_checksum(record) for record in rebuilt], pa.uint64())
    return table.append_column(schema.field(CHECKSUM), checksums)


def table_metadata(schema: pa.Schema) -> dict[str, str]:
    raw = schema.metadata or {}
    return {
        key.decode()[len(META_PREFIX):]: value.decode()
        for key, value in raw.items()
        if key.decode().startswith(META_PREFIX)
    }


def table_to_records(table: pa.Table, *, n_tokens: int, dim: int, dtype: str) -> Iterator[EmbeddingRecord]:
    """The records of a table of the given layout (the ``checksum`` column is left to the caller); rows
    of a part written before display titles have an empty title."""
    dtype = np.dtype(dtype)
    vectors_col = table.column("vectors").combine_chunks()
    flat = vectors_col.flatten().flatten().to_numpy(zero_copy_only=False).reshape(len(table), n_tokens, dim)
    retrieval = None
    if "retrieval_vector" in table.column_names:
        retrieval_col = table.column("retrieval_vector").combine_chunks()
        retrieval = retrieval_col.flatten().to_numpy(zero_copy_only=False).reshape(len(table), -1)
    encoded_at = table.column("encoded_at").cast(pa.int64()).to_numpy() / 1e6
    columns = {name: table.column(name).to_pylist() for name in (
        "item_id", "item_version", "encoder_id", "content_hash", "deleted", "source_tokens",
        "truncated", "job_id")}
    titles = table.column(TITLE).to_pylist() if TITLE in table.column_names else [""] * len(table)
    for row in range(len(table)):
        if columns["deleted"][row]:
            yield EmbeddingRecord.tombstone(columns["item_id"][row], columns["item_version"][row],
                                            columns["encoder_id"][row], job_id=columns["job_id"][row],
                                            encoded_at=float(encoded_at[row]))
            continue
        yield EmbeddingRecord(
            item_id=columns["item_id"][row],
            item_version=columns["item_version"][row],
            encoder_id=columns["encoder_id"][row],
            content_hash=columns["content_hash"][row],
            vectors=flat[row].astype(dtype),
            retrieval_vector=None if retrieval is None else retrieval[row].astype(dtype),
            source_tokens=columns["source_tokens"][row],
            truncated=columns["truncated"][row],
            job_id=columns["job_id"][row],
            encoded_at=float(encoded_at[row]),
            title=titles[row],
        )
