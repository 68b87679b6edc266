"""Binary format of the LMDB online store: record keys and values.

A key is ``encoder_id \\x00 item_id``. A value (little-endian) is a fixed header, the vectors
``[T_S, dim]``, the optional retrieval vector, the job id in UTF-8, then (from schema version 3)
the item's display title: its length in bytes (uint16) and its UTF-8 bytes (at most
``MAX_TITLE_CHARS`` characters). The header's xxh3-64 checksum covers every other byte of the
value, title included, seeded with the hash of the key: a torn or bit-flipped value is detected
on read, and so is a value under a damaged key, which would otherwise read as a phantom item
(xxh3 rather than crc32: it is about seven times faster, and a 250-item lookup verifies every
value it returns). Values of schema version 1 (written before the key seed) and 2 (before
titles) still read and verify, with an empty title; every write is version 3. Vectors start at
a fixed offset in every version, which lets batch lookups copy them without parsing anything else.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np
import xxhash

from mixlm.schemas.embedding_record import EmbeddingRecord
from mixlm.schemas.errors import CorruptRecordError

MAGIC = b"MXLM"
SCHEMA_VERSION = 3
_UNSEEDED_VERSION = 1  # a checksum of the value alone
UNTITLED_SCHEMA_VERSION = 2  # seeded by the key, no title
_READABLE_VERSIONS = (_UNSEEDED_VERSION, UNTITLED_SCHEMA_VERSION, SCHEMA_VERSION)
KEY_SEP = b"\x00"
FLAG_DELETED = 1
FLAG_TRUNCATED = 2
_DTYPE_CODES = {"float32": 1, "float16": 2}
_CODE_DTYPES = {code: np.dtype(name) for name, code in _DTYPE_CODES.items()}
# checksum of all later bytes, magic, schema version, flags, dtype, T_S, dim, retrieval dim,
# item version, source tokens, job id length, encoded_at, content hash (raw sha256)
HEADER = struct.Struct("<Q4sHBBIIIqIHd32s")
PAYLOAD_OFFSET = HEADER.size
_SUMMED_FROM = 8
# The leading fields a batch lookup needs: checksum, magic, schema version, flags, dtype, T_S, dim, retrieval dim.
_LOOKUP_FIELDS = struct.Struct("<Q4sHBBIII")
_CHECKSUM = struct.Struct("<Q")
_TITLE_LEN = struct.Struct("<H")  # after the job id, from schema version 3


def record_key(encoder_id: str, item_id: str) -> bytes:
    return encoder_id.encode() + KEY_SEP + item_id.encode("utf-8")


def _checksum(value: bytes | memoryview, key: bytes, schema_version: int) -> int:
    summed = memoryview(value)[_SUMMED_FROM:]  # a view: hashing copies nothing
    if schema_version == _UNSEEDED_VERSION:
        return xxhash.xxh3_64_intdigest(summed)
    return xxhash.xxh3_64_intdigest(summed, xxhash.xxh3_64_intdigest(key))  # seed by position: ~100 ns faster


class ValueHeader(NamedTuple):
    deleted: bool
    truncated: bool
    dtype: np.dtype
    n_tokens: int
    dim: int
    retrieval_dim: int
    item_version: int
    source_tokens: int
    job_id_len: int
    encoded_at: float
    content_hash: str
    schema_version: int = SCHEMA_VERSION
    title_len: int = 0  # bytes of UTF-8

    @property
    def vectors_nbytes(self) -> int:
        return self.n_tokens * self.dim * self.dtype.itemsize


def encode_value(record: EmbeddingRecord, schema_version: int = SCHEMA_VERSION) -> bytes:
    """The value stored under ``record_key(record.encoder_id, record.item_id)``.

    ``schema_version`` 2 (no title) exists to verify rows that were summed before titles.
    """
    if schema_version not in (UNTITLED_SCHEMA_VERSION, SCHEMA_VERSION):
        raise ValueError(f"cannot write value schema version {schema_version}")
    if schema_version == UNTITLED_SCHEMA_VERSION and record.title:
        raise ValueError(f"value schema version {schema_version} has no title")
    job_id = record.job_id.encode("utf-8")
    dtype_code = _DTYPE_CODES[record.dtype]
    little_endian = record.vectors.dtype.newbyteorder("<")
    retrieval = b"" if record.retrieval_vector is None else record.retrieval_vector.astype(little_endian).tobytes()
    retrieval_dim = 0 if record.retrieval_vector is None else record.retrieval_vector.size
    flags = (FLAG_DELETED if record.deleted else 0) | (FLAG_TRUNCATED if record.truncated else 0)
    body = (
        np.ascontiguousarray(record.vectors, dtype=little_endian).tobytes()
        + retrieval
        + job_id
    )
    if schema_version > UNTITLED_SCHEMA_VERSION:
        title = record.title.encode("utf-8")
        body += _TITLE_LEN.pack(len(title)) + title
    content_hash = bytes.fromhex(record.content_hash) if record.content_hash else bytes(32)
    value = bytearray(HEADER.pack(
        0, MAGIC, schema_version, flags, dtype_code, record.n_tokens, record.dim, retrieval_dim,
        record.item_version, record.source_tokens, len(job_id), record.encoded_at, content_hash,
    ) + body)
    key = record_key(record.encoder_id, record.item_id)
    _CHECKSUM.pack_into(value, 0, _checksum(value, key, schema_version))
    return bytes(value)


def value_checksum(record: EmbeddingRecord, schema_version: int = SCHEMA_VERSION) -> int:
    """The checksum of the record's value: it covers every field the store keeps, and the key."""
    return _CHECKSUM.unpack_from(encode_value(record, schema_version))[0]


def decode_header(value: bytes | memoryview, key: bytes) -> ValueHeader:
    """Parse and verify the header of the value stored under ``key``, without copying its payload."""
    if len(value) < HEADER.size:
        raise CorruptRecordError(f"value is {len(value)} bytes, shorter than the {HEADER.size}-byte header")
    (stored_sum, magic, schema_version, flags, dtype_code, n_tokens, dim, retrieval_dim, item_version,
     source_tokens, job_id_len, encoded_at, content_hash) = HEADER.unpack_from(value)
    if magic != MAGIC:
        raise CorruptRecordError(f"bad magic {bytes(magic)!r}")
    if schema_version not in _READABLE_VERSIONS:
        raise CorruptRecordError(f"unsupported value schema version {schema_version}")
    if dtype_code not in _CODE_DTYPES:
        raise CorruptRecordError(f"unknown dtype code {dtype_code}")
    header = ValueHeader(
        bool(flags & FLAG_DELETED), bool(flags & FLAG_TRUNCATED), _CODE_DTYPES[dtype_code],
        n_tokens, dim, retrieval_dim, item_version, source_tokens, job_id_len, encoded_at,
        "" if content_hash == bytes(32) else content_hash.hex(), schema_version,
    )
    expected = HEADER.size + header.vectors_nbytes + retrieval_dim * header.dtype.itemsize + job_id_len
    if schema_version > UNTITLED_SCHEMA_VERSION:
        if len(value) < expected + _TITLE_LEN.size:
            raise CorruptRecordError(f"value is {len(value)} bytes, too short for its header's layout")
        header = header._replace(title_len=_TITLE_LEN.unpack_from(value, expected)[0])
        expected += _TITLE_LEN.size + header.title_len
    if len(value) != expected:
        raise CorruptRecordError(f"value is {len(value)} bytes, its header says {expected}")
    _verify(value, key, schema_version, stored_sum)
    return header


def _verify(value: bytes | memoryview, key: bytes, schema_version: int, stored_sum: int) -> None:
    actual = _checksum(value, key, schema_version)
    if actual != stored_sum:
        raise CorruptRecordError(f"checksum mismatch (stored {stored_sum:016x}, computed {actual:016x}): "
                                 "the value or its key is damaged")


def lookup_fields(value: bytes | memoryview, key: bytes) -> tuple[bool, np.dtype, int, int, int]:
    """(deleted, dtype, T_S, dim, retrieval dim) of the verified value under ``key``: the lean path
    of batch lookups."""
    try:
        (stored_sum, magic, schema_version, flags, dtype_code, n_tokens, dim,
         retrieval_dim) = _LOOKUP_FIELDS.unpack_from(value)
        dtype = _CODE_DTYPES[dtype_code]
    except (struct.error, KeyError):
        decode_header(value, key)  # raises the precise error
        raise
    if (magic != MAGIC or schema_version not in _READABLE_VERSIONS
            or len(value) < PAYLOAD_OFFSET + (n_tokens * dim + retrieval_dim) * dtype.itemsize):
        decode_header(value, key)
    if _checksum(value, key, schema_version) != stored_sum:
        _verify(value, key, schema_version, stored_sum)
    return bool(flags & FLAG_DELETED), dtype, n_tokens, dim, retrieval_dim


def decode_title(value: bytes | memoryview, key: bytes) -> tuple[bool, str]:
    """(deleted, display title) of the verified value under ``key``; the title is empty before schema 3."""
    header = decode_header(value, key)
    return header.deleted, _title(value, header)


def lookup_title(value: bytes | memoryview) -> str:
    """The display title of a value ``lookup_fields`` has verified, without verifying it again."""
    (_sum, _magic, schema_version, _flags, dtype_code, n_tokens, dim, retrieval_dim, _version, _source,
     job_id_len, _encoded_at, _hash) = HEADER.unpack_from(value)
    if schema_version <= UNTITLED_SCHEMA_VERSION:
        return ""
    start = PAYLOAD_OFFSET + (n_tokens * dim + retrieval_dim) * _CODE_DTYPES[dtype_code].itemsize + job_id_len
    length = _TITLE_LEN.unpack_from(value, start)[0] if len(value) >= start + _TITLE_LEN.size else -1
    if len(value) != start + _TITLE_LEN.size + length:
        raise CorruptRecordError(f"value is {len(value)} bytes, its header's layout and title length say otherwise")
    return _title_text(value, start + _TITLE_LEN.size, length)


def _title(value: bytes | memoryview, header: ValueHeader) -> str:
    start = (PAYLOAD_OFFSET + header.vectors_nbytes + header.retrieval_dim * header.dtype.itemsize
             + header.job_id_len + _TITLE_LEN.size)
    return _title_text(value, start, header.title_len)


def _title_text(value: bytes | memoryview, start: int, length: int) -> str:
    if not length:
        return ""
    try:
        return bytes(value[start:start + length]).decode("utf-8")
    except UnicodeDecodeError as exc:  # it passed the checksum: written so, a writer's bug
        raise CorruptRecordError(f"its title is not UTF-8 ({exc.reason})") from None


def decode_value(value: bytes | memoryview, item_id: str, encoder_id: str) -> EmbeddingRecord:
    """The record stored under ``record_key(encoder_id, item_id)``, verified."""
    header = decode_header(value, record_key(encoder_id, item_id))
    start = PAYLOAD_OFFSET
    end = start + header.vectors_nbytes
    dtype = header.dtype.newbyteorder("<")
    vectors = np.frombuffer(value, dtype=dtype, count=header.n_tokens * header.dim, offset=start)
    vectors = vectors.reshape(header.n_tokens, header.dim).astype(header.dtype)
    retrieval = None
    if header.retrieval_dim:
        retrieval = np.frombuffer(value, dtype=dtype, count=header.retrieval_dim, offset=end).astype(header.dtype)
        end += header.retrieval_dim * header.dtype.itemsize
    job_id = bytes(value[end:end + header.job_id_len]).decode("utf-8")
    title = _title(value, header)
    if header.deleted:
        return EmbeddingRecord.tombstone(item_id, header.item_version, encoder_id, job_id=job_id,
                                         encoded_at=header.encoded_at)
    return EmbeddingRecord(
        item_id=item_id, item_version=header.item_version, encoder_id=encoder_id,
        content_hash=header.content_hash, vectors=vectors, retrieval_vector=retrieval,
        source_tokens=header.source_tokens, truncated=header.truncated, job_id=job_id,
        encoded_at=header.encoded_at, title=title,
    )
