import re

import numpy as np
import pytest

from mixlm.schemas import CorruptRecordError, EmbeddingRecord, JobManifest, ValidationError, new_job_id
from mixlm.schemas.job_manifest import MANIFEST_KEYS
from mixlm.schemas.lmdb_value import decode_header, decode_value, encode_value, lookup_fields
from tests.factories import make_record


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("retrieval_dim", [0, 6])
def test_value_round_trip(dtype, retrieval_dim):
    record = make_record("item-1", 4, n_tokens=3, dim=16, dtype=dtype, retrieval_dim=retrieval_dim)
    back = decode_value(encode_value(record), "item-1", "enc-a")
    assert back.vectors.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back.vectors, record.vectors)
    if retrieval_dim:
        np.testing.assert_array_equal(back.retrieval_vector, record.retrieval_vector)
    else:
        assert back.retrieval_vector is None
    for name in ("item_version", "content_hash", "source_tokens", "truncated", "job_id", "encoded_at", "deleted"):
        assert getattr(back, name) == getattr(record, name), name
    assert lookup_fields(encode_value(record)) == (False, np.dtype(dtype), 3, 16)


def test_tombstone_round_trip():
    value = encode_value(EmbeddingRecord.tombstone("gone", 7, "enc-a", job_id="st-1"))
    back = decode_value(value, "gone", "enc-a")
    assert back.deleted and back.item_version == 7 and back.n_tokens == 0 and back.job_id == "st-1"
    assert decode_header(value).deleted


def test_every_flipped_byte_is_detected():
    value = encode_value(make_record("item-1", 2, dim=4, retrieval_dim=3))
    for index in range(len(value)):
        damaged = bytearray(value)
        damaged[index] ^= 0x40
        with pytest.raises(CorruptRecordError):
            decode_value(bytes(damaged), "item-1", "enc-a")


def test_truncated_value():
    value = encode_value(make_record("item-1", 2))
    for size in (0, 10, len(value) - 1):
        with pytest.raises(CorruptRecordError):
            decode_header(value[:size])
        with pytest.raises(CorruptRecordError):
            lookup_fields(value[:size])


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"vectors": np.zeros(4, np.float32)}, "vectors"),
    ({"vectors": np.zeros((1, 4), np.int32)}, "vectors"),
    ({"encoder_id": "has space"}, "encoder_id"),
    ({"item_version": -1}, "item_version"),
    ({"content_hash": "abc"}, "content_hash"),
])
def test_record_validation(kwargs, field):
    base = {"item_id": "i", "item_version": 1, "encoder_id": "enc", "content_hash": "", "vectors": np.zeros((1, 4))}
    base["vectors"] = base["vectors"].astype(np.float32)
    with pytest.raises(ValidationError) as caught:
        EmbeddingRecord(**{**base, **kwargs})
    assert caught.value.field == field


def test_manifest_json_round_trip_and_key_order():
    manifest = JobManifest(job_id=new_job_id("stream"), kind="stream", encoder_id="enc-a",
                           offsets={"items": {"0": 12}}, params={"topic": "items"})
    manifest.counts.add({"read": 5, "dead_lettered": 1})
    back = JobManifest.from_json(manifest.to_json())
    assert back == manifest
    assert tuple(manifest.to_dict()) == MANIFEST_KEYS
    with pytest.raises(ValidationError):
        manifest.counts.add({"bogus": 1})


def test_job_ids_sort_by_time_and_reject_unknown_kinds():
    assert re.match(r"^bf-\d{8}T\d{6}Z-[0-9a-f]{4}$", new_job_id("backfill"))
    assert new_job_id("stream").startswith("st-")
    with pytest.raises(ValidationError):
        new_job_id("nightly")
    with pytest.raises(ValidationError):
        JobManifest(job_id="x", kind="backfill", encoder_id="e", status="paused")
