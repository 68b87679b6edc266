import numpy as np
import pytest

from mixlm.schemas import EmbeddingRecord
from mixlm.store import CorruptItemError, EmbeddingStore, EncoderNotFoundError, JobNotFoundError, StoreNotFoundError
from mixlm.store.environment import open_environment
from mixlm.store.online import record_key
from tests.factories import make_record, vectors_for


@pytest.fixture()
def store(tmp_path):
    return EmbeddingStore.open(tmp_path / "store", create=True)


def version_of(store, item_id, encoder_id="enc-a"):
    record = store.get(encoder_id, item_id)
    return None if record is None else record.item_version


def raw_put(store, key: bytes, value: bytes) -> None:
    """Write bytes under a record key behind the store's back (the process's one LMDB environment)."""
    environment = open_environment(store.root / "lmdb")
    with environment.env.begin(write=True, db=environment.dbs["records"]) as txn:
        txn.put(key, value)


def raw_get(store, key: bytes) -> bytes:
    environment = open_environment(store.root / "lmdb")
    with environment.env.begin(db=environment.dbs["records"]) as txn:
        return txn.get(key)


def test_open_requires_an_existing_store(tmp_path):
    with pytest.raises(StoreNotFoundError):
        EmbeddingStore.open(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreNotFoundError):
        EmbeddingStore.open(tmp_path / "empty")
    EmbeddingStore.open(tmp_path / "made", create=True).put_many([make_record("a", 1)])
    assert version_of(EmbeddingStore.open(tmp_path / "made"), "a") == 1


def test_newer_overwrites_older_and_equal_are_stale(store):
    assert store.put_many([make_record("a", 5)]).written == 1
    result = store.put_many([make_record("a", 4)])
    assert (result.written, result.deleted, result.stale) == (0, 0, 1)
    assert store.put_many([make_record("a", 5, dim=8, n_tokens=1)]).stale == 1
    assert version_of(store, "a") == 5
    np.testing.assert_array_equal(store.get("enc-a", "a").vectors, vectors_for("a", 5))
    result = store.put_many([make_record("a", 4), make_record("a", 5), make_record("a", 6)])
    assert (result.written, result.stale) == (1, 2)
    assert version_of(store, "a") == 6
    np.testing.assert_array_equal(store.get_many("enc-a", ["a"]).vectors[0], vectors_for("a", 6))


def test_stale_write_leaves_stored_bytes_untouched(store):
    store.put_many([make_record("a", 5, job_id="bf-first")])
    before = raw_get(store, record_key("enc-a", "a"))
    replay = make_record("a", 5, job_id="bf-replay")
    replay.vectors = replay.vectors + 1  # same version, different content: still a no-op
    assert store.put_many([replay]).stale == 1
    assert raw_get(store, record_key("enc-a", "a")) == before
    assert store.get("enc-a", "a").job_id == "bf-first"


def test_versions_within_one_batch(store):
    result = store.put_many([make_record("a", 1), make_record("a", 3), make_record("a", 2), make_record("a", 3)])
    assert (result.written, result.stale) == (2, 2)
    assert version_of(store, "a") == 3


def test_replaying_a_batch_is_all_stale(store):
    batch = [make_record(f"i{n}", n + 1) for n in range(20)] + [EmbeddingRecord.tombstone("t", 4, "enc-a")]
    assert store.put_many(batch).as_counts() == {"written": 20, "deleted": 1, "stale": 0, "corrupt_replaced": 0}
    assert store.put_many(batch).as_counts() == {"written": 0, "deleted": 0, "stale": 21, "corrupt_replaced": 0}


def test_version_zero_and_the_largest_version(store):
    def record(version):
        return EmbeddingRecord("a", version, "enc-a", "", vectors_for("a", 1))

    assert store.put_many([record(0)]).written == 1
    assert store.put_many([record(0)]).stale == 1
    assert store.put_many([record(2**62)]).written == 1
    assert store.put_many([record(2**63 - 1)]).written == 1  # compared as integers, not as bytes
    assert version_of(store, "a") == 2**63 - 1
    assert store.put_many([record(2**62 + 1)]).stale == 1


def test_tombstone_hides_and_newer_upsert_revives(store):
    store.put_many([make_record("a", 1), make_record("b", 1)])
    assert store.put_many([EmbeddingRecord.tombstone("a", 2, "enc-a")]).deleted == 1
    lookup = store.get_many("enc-a", ["a", "b"])
    assert lookup.item_ids == ["b"] and lookup.missing == ["a"]
    assert lookup.vectors.shape == (1, 1, 8)
    np.testing.assert_array_equal(lookup.vectors[0], vectors_for("b", 1))
    tomb = store.get("enc-a", "a")
    assert tomb.deleted and tomb.item_version == 2
    assert [r.item_id for r in store.iter_records("enc-a")] == ["b"]
    assert store.put_many([make_record("a", 2)]).stale == 1  # equal to the tombstone's version
    assert store.put_many([make_record("a", 1)]).stale == 1
    assert store.get_many("enc-a", ["a"]).missing == ["a"]
    assert store.put_many([make_record("a", 3)]).written == 1
    revived = store.get_many("enc-a", ["a"])
    assert revived.item_ids == ["a"] and not revived.missing
    np.testing.assert_array_equal(revived.vectors[0], vectors_for("a", 3))


def test_older_tombstone_does_not_delete(store):
    store.put_many([make_record("a", 5)])
    result = store.put_many([EmbeddingRecord.tombstone("a", 4, "enc-a"), EmbeddingRecord.tombstone("a", 5, "enc-a")])
    assert (result.deleted, result.stale) == (0, 2)
    assert store.get_many("enc-a", ["a"]).item_ids == ["a"]


def test_tombstone_for_unknown_item_blocks_older_upserts(store):
    assert store.put_many([EmbeddingRecord.tombstone("late", 10, "enc-a")]).deleted == 1
    assert store.put_many([make_record("late", 9)]).stale == 1
    assert store.get_many("enc-a", ["late"]).missing == ["late"]


def test_versions_are_per_encoder(store):
    store.put_many([make_record("a", 5, encoder_id="enc-a")])
    assert store.put_many([make_record("a", 1, encoder_id="enc-b")]).written == 1
    assert (version_of(store, "a", "enc-a"), version_of(store, "a", "enc-b")) == (5, 1)


def test_get_many_order_duplicates_missing_and_empty(store):
    ids = [f"item-{n}" for n in range(12)]
    store.put_many([make_record(i, 1, n_tokens=3, dim=4) for i in ids])
    request = ["item-7", "zz", "item-0", "item-7", "item-11", "also-missing", "item-3"]
    lookup = store.get_many("enc-a", request)
    assert lookup.item_ids == ["item-7", "item-0", "item-7", "item-11", "item-3"]
    assert lookup.missing == ["zz", "also-missing"]
    assert lookup.vectors.shape == (5, 3, 4) and lookup.vectors.dtype == np.float32
    for row, item_id in enumerate(lookup.item_ids):
        np.testing.assert_array_equal(lookup.vectors[row], vectors_for(item_id, 1, n_tokens=3, dim=4))
    empty = store.get_many("enc-a", [])
    assert empty.item_ids == [] and empty.missing == [] and empty.vectors.shape[0] == 0
    none_found = store.get_many("enc-a", ["x", "y"])
    assert none_found.item_ids == [] and none_found.missing == ["x", "y"] and none_found.vectors.shape[0] == 0
    assert store.get_many("enc-other", ["item-0"]).missing == ["item-0"]


def test_get_many_dtype(store):
    store.put_many([make_record("a", 1), make_record("b", 1, encoder_id="half", dtype="float16")])
    as16 = store.get_many("enc-a", ["a"], dtype="float16")
    assert as16.vectors.dtype == np.float16
    np.testing.assert_array_equal(as16.vectors[0], vectors_for("a", 1).astype(np.float16))
    stored16 = store.get_many("half", ["b"])
    assert stored16.vectors.dtype == np.float16
    np.testing.assert_array_equal(stored16.vectors[0], vectors_for("b", 1, dtype="float16"))
    np.testing.assert_array_equal(store.get_many("half", ["b"], dtype="float32").vectors[0],
                                  vectors_for("b", 1, dtype="float16").astype(np.float32))


def test_get_returns_the_whole_record(store):
    original = make_record("a", 4, n_tokens=2, dim=8, retrieval_dim=5, job_id="bf-x")
    store.put_many([original])
    back = store.get("enc-a", "a")
    for name in ("item_id", "item_version", "encoder_id", "content_hash", "source_tokens", "truncated", "job_id",
                 "encoded_at", "deleted"):
        assert getattr(back, name) == getattr(original, name), name
    np.testing.assert_array_equal(back.vectors, original.vectors)
    np.testing.assert_array_equal(back.retrieval_vector, original.retrieval_vector)
    assert store.get("enc-a", "never") is None
    headers = store.get_headers("enc-a", ["a", "never"])
    assert list(headers) == ["a"] and headers["a"].item_version == 4
    assert headers["a"].content_hash == original.content_hash


def test_put_many_updates_job_counts_in_the_same_transaction(store):
    job = store.jobs.create("backfill", "enc-a")
    store.put_many([make_record("a", 2), make_record("b", 1)], job_id=job.job_id, counts={"read": 3, "encoded": 2})
    first = store.jobs.get(job.job_id).counts
    assert (first.read, first.encoded, first.written, first.stale, first.deleted) == (3, 2, 2, 0, 0)
    store.put_many([make_record("a", 1), EmbeddingRecord.tombstone("b", 2, "enc-a")], job_id=job.job_id,
                   offsets={"items": {"0": 41}})
    manifest = store.jobs.get(job.job_id)
    counts = manifest.counts
    assert (counts.read, counts.encoded, counts.written, counts.stale, counts.deleted) == (3, 2, 2, 1, 1)
    assert manifest.offsets == {"items": {"0": 41}}
    store.put_many([], job_id=job.job_id, offsets={"items": {"0": 50, "1": 3}})
    assert store.jobs.get(job.job_id).offsets == {"items": {"0": 50, "1": 3}}
    # without job_id nothing is counted
    store.put_many([make_record("c", 1)])
    assert store.jobs.get(job.job_id).counts == counts


def test_a_failed_job_update_rolls_back_the_records(store):
    store.put_many([make_record("a", 1)])
    with pytest.raises(JobNotFoundError, match="bf-missing"):
        store.put_many([make_record("a", 2), make_record("b", 1)], job_id="bf-missing")
    assert version_of(store, "a") == 1 and store.get("enc-a", "b") is None
    job = store.jobs.create("stream", "enc-a")
    with pytest.raises(Exception, match="bogus"):
        store.put_many([make_record("b", 1)], job_id=job.job_id, counts={"bogus": 1})
    assert store.get("enc-a", "b") is None
    assert store.jobs.get(job.job_id).counts.written == 0


def test_promote_is_atomic_and_requires_records(store):
    assert store.active_encoder() is None
    with pytest.raises(EncoderNotFoundError, match="no active encoder"):
        store.resolve_encoder(None)
    store.put_many([make_record("a", 1, encoder_id="enc-a"), make_record("a", 1, encoder_id="enc-b")])
    assert store.promote("enc-a") is None
    assert store.active_encoder() == "enc-a"
    assert store.promote("enc-b") == "enc-a"
    assert store.active_encoder() == "enc-b" and store.resolve_encoder(None) == "enc-b"
    assert store.resolve_encoder("enc-a") == "enc-a"
    with pytest.raises(EncoderNotFoundError, match="enc-c"):
        store.promote("enc-c")
    with pytest.raises(EncoderNotFoundError):
        store.promote("enc")  # a prefix of enc-a's keys is not an encoder with records
    assert store.active_encoder() == "enc-b"
    assert store.promote("enc-new", require_records=False) == "enc-b"
    assert store.active_encoder() == "enc-new"


def test_active_encoder_survives_reopen(tmp_path):
    store = EmbeddingStore.open(tmp_path / "s", create=True)
    store.put_many([make_record("a", 1, encoder_id="enc-b")])
    store.promote("enc-b")
    assert EmbeddingStore.open(tmp_path / "s").active_encoder() == "enc-b"


def test_encoders_and_iteration_stay_within_one_prefix(store):
    store.put_many([make_record("x", 1, encoder_id="enc"), make_record("y", 2, encoder_id="enc"),
                    make_record("x", 3, encoder_id="enc2"), make_record("a", 1, encoder_id="en"),
                    make_record("z", 1, encoder_id="enc.v2"), make_record("w", 1, encoder_id="enc-"),
                    EmbeddingRecord.tombstone("z", 1, "enc")])
    assert store.encoders() == sorted(["enc", "enc2", "en", "enc.v2", "enc-"])
    assert [(r.item_id, r.item_version) for r in store.iter_records("enc")] == [("x", 1), ("y", 2)]
    assert all(r.encoder_id == "enc" for r in store.iter_records("enc", include_deleted=True))
    assert [r.item_id for r in store.iter_records("enc", include_deleted=True)] == ["x", "y", "z"]
    assert [(r.item_id, r.item_version) for r in store.iter_records("enc2")] == [("x", 3)]
    assert [r.item_id for r in store.iter_records("en")] == ["a"]
    assert list(store.iter_records("e")) == [] and list(store.iter_records("zzz")) == []
    stats = store.encoder_stats("enc")
    assert (stats.live, stats.deleted, stats.n_tokens, stats.dim, stats.dtype) == (2, 1, 1, 8, "float32")
    assert store.get_many("enc", ["x"]).vectors[0].tolist() == vectors_for("x", 1).tolist()


def test_item_ids_sharing_prefixes_and_unicode(store):
    ids = ["a", "a\x01", "ab", "a b", "å", "日本", "x" * 400]
    store.put_many([make_record(i, 1) for i in ids])
    assert sorted(r.item_id for r in store.iter_records("enc-a")) == sorted(ids)
    lookup = store.get_many("enc-a", ids)
    assert lookup.item_ids == ids and not lookup.missing
    for row, item_id in enumerate(ids):
        np.testing.assert_array_equal(lookup.vectors[row], vectors_for(item_id, 1))


def test_encoders_empty_store(store):
    assert store.encoders() == []
    assert store.stats()["encoders"] == []


@pytest.mark.parametrize("damage", ["flip", "garbage", "truncate", "empty"])
def test_corrupt_value_is_an_error_naming_the_item(store, damage):
    store.put_many([make_record("good", 1), make_record("bad-item", 1, retrieval_dim=4)])
    key = record_key("enc-a", "bad-item")
    value = bytearray(raw_get(store, key))
    if damage == "flip":
        value[len(value) // 2] ^= 0x01
    elif damage == "garbage":
        value = bytearray(b"not an embedding value at all")
    elif damage == "truncate":
        value = value[:-3]
    else:
        value = bytearray()
    raw_put(store, key, bytes(value))
    reads = (lambda: store.get_many("enc-a", ["good", "bad-item"]), lambda: store.get_many("enc-a", ["bad-item"]),
             lambda: store.get("enc-a", "bad-item"), lambda: list(store.iter_records("enc-a")))
    for read in reads:
        with pytest.raises(CorruptItemError, match="'bad-item'") as caught:
            read()
        assert caught.value.item_id == "bad-item" and "enc-a" in str(caught.value)
        assert "\n" not in str(caught.value)
    lookup = store.get_many("enc-a", ["good"])
    assert lookup.item_ids == ["good"]
    np.testing.assert_array_equal(lookup.vectors[0], vectors_for("good", 1))
    # A newer write replaces the corrupt value.
    assert store.put_many([make_record("bad-item", 2)]).written == 1
    assert store.get_many("enc-a", ["bad-item"]).item_ids == ["bad-item"]
    assert len(list(store.iter_records("enc-a"))) == 2


def test_map_grows_when_full(tmp_path):
    root = tmp_path / "small"
    store = EmbeddingStore.open(root, create=True, map_size=1 << 20)
    environment = open_environment(root / "lmdb")
    assert environment.map_size() == 1 << 20
    ids = []
    sizes = []
    for batch in range(8):
        batch_ids = [f"i{batch}-{n}" for n in range(500)]
        ids += batch_ids
        assert store.put_many([make_record(i, 1, dim=256) for i in batch_ids]).written == 500
        sizes.append(environment.map_size())
    # 4000 x 1 KiB of vectors: the 1 MiB map doubled at least twice, never shrank
    assert sizes == sorted(sizes) and sizes[-1] >= 4 << 20
    lookup = store.get_many("enc-a", ids)
    assert not lookup.missing and lookup.vectors.shape == (4000, 1, 256)
    for row in range(0, 4000, 7):
        np.testing.assert_array_equal(lookup.vectors[row], vectors_for(ids[row], 1, dim=256))
    assert sum(1 for _ in store.iter_records("enc-a")) == 4000
    # A single write larger than the whole map also succeeds (it grows until it fits).
    big = [make_record(f"big-{n}", 1, n_tokens=4, dim=1024) for n in range(2000)]  # 32 MiB of vectors
    assert store.put_many(big).written == 2000
    assert environment.map_size() >= 32 << 20
    assert store.get_many("enc-a", ["big-1999"]).vectors.shape == (1, 4, 1024)


def test_store_reuses_one_environment_per_path(tmp_path):
    first = EmbeddingStore.open(tmp_path / "s", create=True)
    second = EmbeddingStore.open(tmp_path / "s" / ".." / "s")
    assert open_environment(tmp_path / "s" / "lmdb") is open_environment(tmp_path / "s" / ".." / "s" / "lmdb")
    first.put_many([make_record("a", 1)])
    assert version_of(second, "a") == 1
