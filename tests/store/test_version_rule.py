import numpy as np
import pytest

from mixlm.schemas import EmbeddingRecord
from mixlm.store import CorruptItemError, EmbeddingStore, EncoderNotFoundError
from mixlm.store.environment import open_environment
from mixlm.store.online import record_key
from tests.factories import make_record, vectors_for


@pytest.fixture()
def store(tmp_path):
    return EmbeddingStore.open(tmp_path / "store", create=True)


def version_of(store, item_id, encoder_id="enc-a"):
    record = store.get(encoder_id, item_id)
    return None if record is None else record.item_version


def test_newer_overwrites_older_and_equal_are_stale(store):
    assert store.put_many([make_record("a", 5)]).written == 1
    result = store.put_many([make_record("a", 4), make_record("a", 5), make_record("a", 6)])
    assert (result.written, result.stale) == (1, 2)
    assert version_of(store, "a") == 6
    np.testing.assert_array_equal(store.get_many("enc-a", ["a"]).vectors[0], vectors_for("a", 6))


def test_tombstone_hides_and_newer_upsert_revives(store):
    store.put_many([make_record("a", 1), make_record("b", 1)])
    assert store.put_many([EmbeddingRecord.tombstone("a", 2, "enc-a")]).deleted == 1
    lookup = store.get_many("enc-a", ["a", "b"])
    assert lookup.item_ids == ["b"] and lookup.missing == ["a"]
    assert store.get("enc-a", "a").deleted
    assert store.put_many([make_record("a", 2)]).stale == 1  # equal to the tombstone's version
    assert store.put_many([make_record("a", 3)]).written == 1
    assert store.get_many("enc-a", ["a"]).item_ids == ["a"]


def test_tombstone_for_unknown_item_blocks_older_upserts(store):
    store.put_many([EmbeddingRecord.tombstone("late", 10, "enc-a")])
    assert store.put_many([make_record("late", 9)]).stale == 1
    assert store.get_many("enc-a", ["late"]).missing == ["late"]


def test_get_many_order_duplicates_missing_and_empty(store):
    store.put_many([make_record(i, 1, n_tokens=2, dim=4) for i in "abc"])
    lookup = store.get_many("enc-a", ["c", "zz", "a", "c"])
    assert lookup.item_ids == ["c", "a", "c"] and lookup.missing == ["zz"]
    assert lookup.vectors.shape == (3, 2, 4)
    np.testing.assert_array_equal(lookup.vectors[1], vectors_for("a", 1, n_tokens=2, dim=4))
    np.testing.assert_array_equal(lookup.vectors[0], lookup.vectors[2])
    empty = store.get_many("enc-a", [])
    assert empty.item_ids == [] and empty.vectors.shape[0] == 0
    assert store.get_many("enc-a", ["a"], dtype="float16").vectors.dtype == np.float16


def test_put_many_updates_job_counts_in_the_same_transaction(store):
    job = store.jobs.create("backfill", "enc-a")
    store.put_many([make_record("a", 2), make_record("b", 1)], job_id=job.job_id, counts={"read": 3, "encoded": 2})
    store.put_many([make_record("a", 1), EmbeddingRecord.tombstone("b", 2, "enc-a")], job_id=job.job_id,
                   offsets={"items": {"0": 41}})
    counts = store.jobs.get(job.job_id).counts
    assert (counts.read, counts.encoded, counts.written, counts.stale, counts.deleted) == (3, 2, 2, 1, 1)
    assert store.jobs.get(job.job_id).offsets == {"items": {"0": 41}}


def test_a_failed_job_update_rolls_back_the_records(store):
    with pytest.raises(Exception, match="not found"):
        store.put_many([make_record("a", 1)], job_id="bf-missing")
    assert store.get("enc-a", "a") is None


def test_promote_is_atomic_and_requires_records(store):
    store.put_many([make_record("a", 1, encoder_id="enc-a"), make_record("a", 1, encoder_id="enc-b")])
    assert store.promote("enc-a") is None
    assert store.promote("enc-b") == "enc-a"
    assert store.active_encoder() == "enc-b" and store.resolve_encoder(None) == "enc-b"
    with pytest.raises(EncoderNotFoundError):
        store.promote("enc-c")


def test_encoders_and_iteration_stay_within_one_prefix(store):
    store.put_many([make_record("x", 1, encoder_id="enc"), make_record("y", 1, encoder_id="enc"),
                    make_record("x", 1, encoder_id="enc2"), EmbeddingRecord.tombstone("z", 1, "enc")])
    assert store.encoders() == ["enc", "enc2"]
    assert [r.item_id for r in store.iter_records("enc")] == ["x", "y"]
    assert [r.item_id for r in store.iter_records("enc", include_deleted=True)] == ["x", "y", "z"]
    assert [r.item_id for r in store.iter_records("enc2")] == ["x"]
    stats = store.encoder_stats("enc")
    assert (stats.live, stats.deleted) == (2, 1)


def test_corrupt_value_is_an_error_naming_the_item(store):
    store.put_many([make_record("good", 1), make_record("bad", 1)])
    environment = open_environment(store.root / "lmdb")
    with environment.env.begin(write=True, db=environment.dbs["records"]) as txn:
        value = bytearray(txn.get(record_key("enc-a", "bad")))
        value[len(value) // 2] ^= 0x01
        txn.put(record_key("enc-a", "bad"), bytes(value))
    for read in (lambda: store.get_many("enc-a", ["good", "bad"]), lambda: store.get("enc-a", "bad")):
        with pytest.raises(CorruptItemError, match="'bad'"):
            read()
    assert store.get_many("enc-a", ["good"]).item_ids == ["good"]
    # A newer write replaces the corrupt value.
    assert store.put_many([make_record("bad", 2)]).written == 1
    assert store.get_many("enc-a", ["bad"]).item_ids == ["bad"]


def test_map_grows_when_full(tmp_path):
    store = EmbeddingStore.open(tmp_path / "small", create=True, map_size=1 << 20)
    for batch in range(8):
        store.put_many([make_record(f"i{batch}-{n}", 1, dim=256) for n in range(500)])
    assert open_environment(tmp_path / "small" / "lmdb").map_size() > 1 << 20
    lookup = store.get_many("enc-a", [f"i{b}-{n}" for b in range(8) for n in range(0, 500, 50)])
    assert not lookup.missing and lookup.vectors.shape == (80, 1, 256)
