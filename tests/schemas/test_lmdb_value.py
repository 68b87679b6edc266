import json
import re
import struct
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import xxhash

from mixlm.schemas import (
    JOB_KINDS,
    CorruptRecordError,
    EmbeddingRecord,
    JobCounts,
    JobManifest,
    ValidationError,
    new_job_id,
)
from mixlm.schemas.item_event import MAX_TITLE_CHARS
from mixlm.schemas.job_manifest import MANIFEST_KEYS
from mixlm.schemas.lmdb_value import (
    HEADER,
    SCHEMA_VERSION,
    decode_header,
    decode_title,
    decode_value,
    encode_value,
    lookup_fields,
    lookup_title,
    record_key,
    value_checksum,
)
from tests.factories import make_record

KEY = record_key("enc-a", "item-1")
TITLE = "Vitamin D and fractures: a meta-analysis — 5 µg/día"


def assert_same_record(a: EmbeddingRecord, b: EmbeddingRecord) -> None:
    for name in ("item_id", "item_version", "encoder_id", "content_hash", "source_tokens", "truncated", "job_id",
                 "encoded_at", "deleted", "title"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.vectors.dtype == b.vectors.dtype
    np.testing.assert_array_equal(a.vectors, b.vectors)
    if a.retrieval_vector is None:
        assert b.retrieval_vector is None
    else:
        assert b.retrieval_vector.dtype == a.retrieval_vector.dtype
        np.testing.assert_array_equal(a.retrieval_vector, b.retrieval_vector)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("retrieval_dim", [0, 6])
@pytest.mark.parametrize("version", [1, 2])  # odd / even: truncated False / True
def test_value_round_trip(dtype, retrieval_dim, version):
    record = make_record("item-1", version, n_tokens=3, dim=16, dtype=dtype, retrieval_dim=retrieval_dim,
                         job_id="bf-20261122T103000Z-7f3a", title=TITLE)
    value = encode_value(record)
    itemsize = np.dtype(dtype).itemsize
    assert len(value) == (HEADER.size + (3 * 16 + retrieval_dim) * itemsize + len(record.job_id)
                          + 2 + len(TITLE.encode()))
    back = decode_value(value, "item-1", "enc-a")
    assert_same_record(record, back)
    assert decode_title(value, KEY) == (False, TITLE)
    assert back.n_tokens == 3 and back.dim == 16 and back.dtype == dtype
    assert lookup_fields(value, KEY) == (False, np.dtype(dtype), 3, 16, retrieval_dim)
    header = decode_header(value, KEY)
    assert (header.item_version, header.content_hash, header.truncated) == (version, record.content_hash,
                                                                             record.truncated)
    # the decoded arrays own their memory: they stay valid after the source buffer changes
    buffer = bytearray(value)
    back = decode_value(memoryview(buffer), "item-1", "enc-a")
    buffer[HEADER.size:] = bytes(len(buffer) - HEADER.size)
    np.testing.assert_array_equal(back.vectors, record.vectors)


def test_vectors_are_stored_little_endian_at_the_payload_offset():
    record = make_record("item-1", 1, n_tokens=2, dim=4)
    value = encode_value(record)
    payload = np.frombuffer(value, dtype="<f4", count=8, offset=HEADER.size).reshape(2, 4)
    np.testing.assert_array_equal(payload, record.vectors)
    big_endian = EmbeddingRecord("item-1", 1, "enc-a", "", record.vectors.astype(">f4"))
    assert encode_value(big_endian)[HEADER.size:HEADER.size + 32] == value[HEADER.size:HEADER.size + 32]


def test_empty_content_hash_and_job_id_round_trip():
    record = EmbeddingRecord("i", 0, "enc", "", np.ones((1, 2), np.float32))
    back = decode_value(encode_value(record), "i", "enc")
    assert back.content_hash == "" and back.job_id == "" and back.item_version == 0


def test_tombstone_round_trip():
    value = encode_value(EmbeddingRecord.tombstone("gone", 7, "enc-a", job_id="st-1", encoded_at=12.5))
    back = decode_value(value, "gone", "enc-a")
    assert back.deleted and back.item_version == 7 and back.n_tokens == 0 and back.job_id == "st-1"
    assert back.encoded_at == 12.5 and back.retrieval_vector is None
    assert decode_header(value, record_key("enc-a", "gone")).deleted
    deleted, _, n_tokens, dim, _ = lookup_fields(value, record_key("enc-a", "gone"))
    assert deleted and (n_tokens, dim) == (0, 0)


@pytest.mark.parametrize("record", [
    make_record("item-1", 2, dim=4, retrieval_dim=3),
    make_record("item-1", 3, n_tokens=2, dim=4, dtype="float16"),
    EmbeddingRecord.tombstone("item-1", 5, "enc-a", job_id="st-1"),
], ids=["float32-retrieval", "float16", "tombstone"])
def test_every_flipped_byte_is_detected(record):
    value = encode_value(record)
    for index in range(len(value)):
        for mask in (0x01, 0x80):
            damaged = bytearray(value)
            damaged[index] ^= mask
            with pytest.raises(CorruptRecordError):
                decode_value(bytes(damaged), "item-1", "enc-a")
            with pytest.raises(CorruptRecordError):
                lookup_fields(bytes(damaged), KEY)  # the lean path of batch lookups checks too
            with pytest.raises(CorruptRecordError):
                decode_header(memoryview(bytes(damaged)), KEY)


@pytest.mark.parametrize("record", [make_record("item-1", 2, dim=4, retrieval_dim=3),
                                    EmbeddingRecord.tombstone("item-1", 5, "enc-a", job_id="st-1")],
                         ids=["live", "tombstone"])
def test_a_value_is_bound_to_its_key(record):
    """A value under any other key (a flipped byte in the item or encoder id) fails its checksum."""
    value = encode_value(record)
    assert decode_value(value, "item-1", "enc-a").item_version == record.item_version
    for index in range(len(KEY)):
        for mask in (0x01, 0x80):
            key = bytearray(KEY)
            key[index] ^= mask
            with pytest.raises(CorruptRecordError, match="checksum"):
                lookup_fields(value, bytes(key))
            with pytest.raises(CorruptRecordError, match="checksum"):
                decode_header(value, bytes(key))
    for item_id, encoder_id in (("jtem-1", "enc-a"), ("item-1", "enc-b"), ("item-10", "enc-a")):
        with pytest.raises(CorruptRecordError, match="checksum"):
            decode_value(value, item_id, encoder_id)


def schema_1_value(record: EmbeddingRecord) -> bytes:
    """A value as the first release wrote it: schema version 1, checksum of the value alone, no title."""
    value = bytearray(encode_value(record, 2))
    struct.pack_into("<H", value, 12, 1)
    struct.pack_into("<Q", value, 0, xxhash.xxh3_64_intdigest(bytes(value[8:])))
    return bytes(value)


def test_schema_1_values_still_read_and_verify():
    assert SCHEMA_VERSION == 3 and struct.unpack_from("<H", encode_value(make_record("item-1")), 12) == (3,)
    record = make_record("item-1", 3, n_tokens=2, dim=4, retrieval_dim=3)
    old = schema_1_value(record)
    assert_same_record(record, decode_value(old, "item-1", "enc-a"))
    assert lookup_fields(old, KEY) == (False, np.dtype("float32"), 2, 4, 3)
    assert decode_header(old, KEY).item_version == 3
    # a schema-1 checksum covers the value alone: damage to the value is still detected
    for index in (0, 12, 30, len(old) - 1):
        damaged = bytearray(old)
        damaged[index] ^= 0x04
        with pytest.raises(CorruptRecordError):
            lookup_fields(bytes(damaged), KEY)
    # the value is not bound to its key (what schema 2 adds)
    assert decode_header(old, record_key("enc-a", "jtem-1")).item_version == 3
    # and no other schema version reads
    for version in (0, 4):
        other = bytearray(old)
        struct.pack_into("<H", other, 12, version)
        with pytest.raises(CorruptRecordError, match="schema version"):
            decode_header(bytes(other), KEY)


def test_schema_2_values_still_read_and_verify_with_an_empty_title():
    """Values written before display titles: bound to their key, no title bytes."""
    record = make_record("item-1", 3, n_tokens=2, dim=4, retrieval_dim=3)
    old = encode_value(record, 2)
    assert struct.unpack_from("<H", old, 12) == (2,) and len(old) == len(encode_value(record)) - 2
    back = decode_value(old, "item-1", "enc-a")
    assert_same_record(record, back)
    assert back.title == "" and decode_title(old, KEY) == (False, "") and lookup_title(old) == ""
    assert lookup_fields(old, KEY) == (False, np.dtype("float32"), 2, 4, 3)
    with pytest.raises(CorruptRecordError, match="checksum"):
        decode_header(old, record_key("enc-a", "jtem-1"))
    with pytest.raises(ValueError, match="no title"):
        encode_value(make_record("item-1", title="a title"), 2)


def test_the_title_is_covered_by_the_checksum():
    record = make_record("item-1", 2, dim=4, title=TITLE)
    value = encode_value(record)
    start = len(value) - len(TITLE.encode())
    for index in (start - 2, start - 1, start, len(value) - 1):  # its length, its first and last bytes
        damaged = bytearray(value)
        damaged[index] ^= 0x01
        for check in (decode_header, lookup_fields, decode_title):
            with pytest.raises(CorruptRecordError):
                check(bytes(damaged), KEY)
    assert lookup_title(value) == TITLE  # the lean path, after lookup_fields verified the value
    for cut in (value[:-1], value + b"x"):  # a title length that disagrees with the value's size
        with pytest.raises(CorruptRecordError, match="title length"):
            lookup_title(cut)
    # a title swapped for another of the same length, the checksum left as it was
    swapped = value[:start] + TITLE.upper().encode()[:len(TITLE.encode())]
    assert len(swapped) == len(value)
    with pytest.raises(CorruptRecordError, match="checksum"):
        decode_value(swapped, "item-1", "enc-a")


def test_a_title_is_one_bounded_line():
    longest = "é" * MAX_TITLE_CHARS  # 2 bytes each in UTF-8
    back = decode_value(encode_value(make_record("item-1", title=longest)), "item-1", "enc-a")
    assert back.title == longest
    with pytest.raises(ValidationError, match="title"):
        make_record("item-1", title=longest + "é")
    with pytest.raises(ValidationError, match="title"):
        make_record("item-1", title="\ud800")
    assert EmbeddingRecord.tombstone("gone", 2, "enc-a").title == ""


def test_value_checksum_is_the_stored_checksum():
    record = make_record("item-1", 2, dim=4, retrieval_dim=3)
    assert struct.unpack_from("<Q", encode_value(record)) == (value_checksum(record),)
    assert value_checksum(record) != value_checksum(make_record("item-1", 3, dim=4, retrieval_dim=3))


@pytest.mark.parametrize("record", [make_record("item-1", 2, retrieval_dim=4),
                                    EmbeddingRecord.tombstone("item-1", 5, "enc-a"),
                                    EmbeddingRecord.tombstone("item-1", 5, "enc-a", job_id="st-1")],
                         ids=["live", "tombstone", "tombstone-with-job"])
def test_truncated_or_extended_value(record):
    value = encode_value(record)
    for size in {0, 1, 10, 24, HEADER.size - 1, HEADER.size, len(value) - 1} - {len(value)}:
        for check in (decode_header, lookup_fields, lambda v, _key: decode_value(v, "item-1", "enc-a")):
            with pytest.raises(CorruptRecordError):
                check(value[:size], KEY)
    for check in (decode_header, lookup_fields):
        with pytest.raises(CorruptRecordError):
            check(value + b"\x00", KEY)


def test_garbage_is_not_a_value():
    for garbage in (b"garbage", b"\x00" * 200, b"MXLM" * 50):
        with pytest.raises(CorruptRecordError):
            decode_value(garbage, "i", "e")
        with pytest.raises(CorruptRecordError):
            lookup_fields(garbage, KEY)


GOOD = {"item_id": "i", "item_version": 1, "encoder_id": "enc", "content_hash": "",
        "vectors": np.zeros((1, 4), np.float32)}


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"vectors": np.zeros(4, np.float32)}, "vectors"),
    ({"vectors": np.zeros((1, 2, 4), np.float32)}, "vectors"),
    ({"vectors": np.zeros((0, 4), np.float32)}, "vectors"),
    ({"vectors": np.zeros((1, 0), np.float32)}, "vectors"),
    ({"vectors": np.zeros((1, 4), np.int32)}, "vectors"),
    ({"vectors": np.zeros((1, 4), np.float64)}, "vectors"),
    ({"vectors": np.zeros((1, 4), np.bfloat16 if hasattr(np, "bfloat16") else np.complex64)}, "vectors"),
    ({"retrieval_vector": np.zeros((2, 2), np.float32)}, "retrieval_vector"),
    ({"retrieval_vector": np.zeros(0, np.float32)}, "retrieval_vector"),
    ({"encoder_id": "has space"}, "encoder_id"),
    ({"encoder_id": ""}, "encoder_id"),
    ({"encoder_id": "a/b"}, "encoder_id"),
    ({"encoder_id": ".."}, "encoder_id"),
    ({"encoder_id": "enc\x00x"}, "encoder_id"),
    ({"encoder_id": "e" * 65}, "encoder_id"),
    ({"encoder_id": None}, "encoder_id"),
    ({"item_id": ""}, "item_id"),
    ({"item_id": "a\x00b"}, "item_id"),
    ({"item_id": "x" * 401}, "item_id"),
    ({"item_id": 5}, "item_id"),
    ({"item_version": -1}, "item_version"),
    ({"item_version": True}, "item_version"),
    ({"item_version": 1.0}, "item_version"),
    ({"item_version": "1"}, "item_version"),
    ({"item_version": 2**63}, "item_version"),
    ({"content_hash": "abc"}, "content_hash"),
    ({"source_tokens": 2**32}, "source_tokens"),
    ({"content_hash": "A" * 64}, "content_hash"),
])
def test_record_validation(kwargs, field):
    with pytest.raises(ValidationError) as caught:
        EmbeddingRecord(**{**GOOD, **kwargs})
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ") and "\n" not in str(caught.value)


def test_record_accepts_valid_edges():
    record = EmbeddingRecord(**{**GOOD, "encoder_id": "E" * 64, "item_version": np.int64(5),
                                "content_hash": "0" * 64, "retrieval_vector": [1.0, 0.0]})
    assert type(record.item_version) is int and record.item_version == 5
    assert record.retrieval_vector.dtype == np.float32  # cast to the vectors' dtype
    assert (record.n_tokens, record.dim, record.dtype) == (1, 4, "float32")


def test_tombstone_ignores_vectors():
    record = EmbeddingRecord(**{**GOOD, "vectors": np.zeros(3), "retrieval_vector": [1.0], "deleted": True})
    assert record.deleted and record.n_tokens == 0 and record.dim == 0 and record.retrieval_vector is None


def test_manifest_json_round_trip_and_key_order():
    manifest = JobManifest(job_id=new_job_id("stream"), kind="stream", encoder_id="enc-a",
                           offsets={"items": {"0": 12, "1": 7}}, params={"topic": "items", "batch": 64},
                           outputs={"lmdb": "/x/lmdb"}, errors=["boom"])
    manifest.counts.add({"read": 5, "dead_lettered": 1})
    manifest.counts.add(JobCounts(read=2, written=3))
    text = manifest.to_json()
    back = JobManifest.from_json(text)
    assert back == manifest
    assert JobManifest.from_json(text.encode()) == manifest
    assert (back.counts.read, back.counts.written, back.counts.dead_lettered) == (7, 3, 1)
    assert tuple(manifest.to_dict()) == MANIFEST_KEYS
    assert list(json.loads(text)) == list(MANIFEST_KEYS)
    assert MANIFEST_KEYS[:4] == ("job_id", "kind", "status", "encoder_id")
    assert list(manifest.to_dict()["counts"]) == ["read", "encoded", "skipped_unchanged", "written", "deleted",
                                                  "stale", "dead_lettered", "corrupt_replaced"]


def test_manifest_from_dict_ignores_unknown_keys_and_validates():
    data = JobManifest(job_id="bf-1", kind="backfill", encoder_id="e").to_dict()
    assert JobManifest.from_dict({**data, "future_key": 1}).job_id == "bf-1"
    with pytest.raises(ValidationError) as caught:
        JobManifest.from_dict({**data, "status": "paused"})
    assert caught.value.field == "status"
    with pytest.raises(ValidationError) as caught:
        JobManifest.from_dict({**data, "kind": "nightly"})
    assert caught.value.field == "kind"
    with pytest.raises(ValidationError) as caught:
        JobManifest.from_dict({**data, "counts": {"bogus": 1}})
    assert caught.value.field == "counts"


def test_counts_reject_unknown_names():
    counts = JobCounts()
    with pytest.raises(ValidationError):
        counts.add({"bogus": 1})


@pytest.mark.parametrize(("kind", "prefix"), [("backfill", "bf"), ("stream", "st"), ("load", "ld")])
def test_job_id_format(kind, prefix):
    assert re.match(rf"^{prefix}-\d{{8}}T\d{{6}}Z-[0-9a-f]{{4}}$", new_job_id(kind))


def test_job_ids_carry_utc_start_time_and_sort_by_it():
    moment = datetime(2026, 11, 22, 10, 30, 0, tzinfo=timezone.utc)
    assert new_job_id("backfill", moment).startswith("bf-20261122T103000Z-")
    # an aware time in another zone is written as the same UTC instant
    oslo = moment.astimezone(timezone(timedelta(hours=1)))
    assert new_job_id("backfill", oslo).startswith("bf-20261122T103000Z-")
    ids = [new_job_id("backfill", moment + timedelta(seconds=s)) for s in (0, 1, 59, 3600, 86400 * 40)]
    assert sorted(ids) == ids
    assert len({new_job_id("backfill", moment) for _ in range(20)}) > 1  # random suffix


@pytest.mark.parametrize("kind", ["nightly", "", "Backfill", None])
def test_unknown_job_kinds_are_rejected(kind):
    assert kind not in JOB_KINDS
    with pytest.raises(ValidationError) as caught:
        new_job_id(kind)
    assert caught.value.field == "kind"
    with pytest.raises(ValidationError):
        JobManifest(job_id="x", kind=kind, encoder_id="e")
