import numpy as np
import pyarrow.parquet as pq
import pytest

from mixlm.schemas import EmbeddingRecord
from mixlm.store import EmbeddingStore, SnapshotWriter, StoreError, export_snapshot, load_snapshot, read_snapshot
from mixlm.store.snapshot import file_metadata
from tests.factories import make_record


def records(dtype: str) -> list[EmbeddingRecord]:
    live = [make_record(f"item-{n}", 1 + n % 3, n_tokens=2, dim=6, dtype=dtype, retrieval_dim=4) for n in range(23)]
    return live + [EmbeddingRecord.tombstone("item-3", 9, "enc-a", job_id="bf-test")]


def assert_same(a: EmbeddingRecord, b: EmbeddingRecord) -> None:
    assert (a.item_id, a.item_version, a.deleted, a.content_hash, a.source_tokens, a.truncated, a.job_id) == (
        b.item_id, b.item_version, b.deleted, b.content_hash, b.source_tokens, b.truncated, b.job_id)
    assert a.encoded_at == pytest.approx(b.encoded_at, abs=1e-6)
    if not a.deleted:
        assert a.vectors.dtype == b.vectors.dtype
        np.testing.assert_array_equal(a.vectors, b.vectors)
        np.testing.assert_array_equal(a.retrieval_vector, b.retrieval_vector)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_writer_reader_round_trip(tmp_path, dtype):
    original = records(dtype)
    with SnapshotWriter(tmp_path, "enc-a", "bf-test", dtype=dtype, rows_per_file=10) as writer:
        writer.write(original)
    assert len(writer.files) == 3
    assert all(path.parent == tmp_path / "encoder=enc-a" / "job=bf-test" for path in writer.files)
    assert not list(tmp_path.rglob("*.tmp"))
    meta = file_metadata(writer.files[0])
    assert meta["encoder_id"] == "enc-a" and meta["job_id"] == "bf-test" and meta["dtype"] == dtype
    assert (meta["n_tokens"], meta["dim"]) == ("2", "6")
    vectors_type = pq.read_schema(writer.files[0]).field("vectors").type
    assert vectors_type.list_size == 2 and vectors_type.value_type.list_size == 6
    back = list(read_snapshot(tmp_path))
    assert len(back) == len(original)
    for a, b in zip(original, back, strict=True):
        assert_same(a, b)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_load_parity_and_idempotent_replay(tmp_path, dtype):
    with SnapshotWriter(tmp_path / "snap", "enc-a", "bf-test", dtype=dtype, rows_per_file=7) as writer:
        writer.write(records(dtype))
    store = EmbeddingStore.open(tmp_path / "store", create=True)
    first = load_snapshot(store, tmp_path / "snap")
    assert first.kind == "load" and first.status == "succeeded"
    # item-3 comes live (version 1), then as a tombstone (version 9) that replaces it.
    assert (first.counts.read, first.counts.written, first.counts.deleted) == (24, 23, 1)
    expected = {r.item_id: r for r in records(dtype) if r.item_id != "item-3"}
    expected["item-3"] = records(dtype)[-1]
    stored = {r.item_id: r for r in store.iter_records("enc-a", include_deleted=True)}
    assert stored.keys() == expected.keys()
    for item_id, record in expected.items():
        assert_same(record, stored[item_id])
    replay = load_snapshot(store, tmp_path / "snap")
    assert replay.counts.stale == 24 and replay.counts.written == 0


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_export_then_load_reproduces_the_store(tmp_path, dtype):
    source = EmbeddingStore.open(tmp_path / "a", create=True)
    source.put_many(records(dtype))
    files = export_snapshot(source, tmp_path / "export", "enc-a")
    assert files and file_metadata(files[0])["dtype"] == dtype
    copy = EmbeddingStore.open(tmp_path / "b", create=True)
    load_snapshot(copy, tmp_path / "export")
    original = list(source.iter_records("enc-a", include_deleted=True))
    copied = list(copy.iter_records("enc-a", include_deleted=True))
    assert len(original) == len(copied) == 23
    for a, b in zip(original, copied, strict=True):
        assert_same(a, b)


def test_load_needs_one_encoder_or_a_choice(tmp_path):
    for encoder_id in ("enc-a", "enc-b"):
        with SnapshotWriter(tmp_path / "snap", encoder_id, "bf-1") as writer:
            writer.write([make_record("x", 1, encoder_id=encoder_id)])
    store = EmbeddingStore.open(tmp_path / "store", create=True)
    with pytest.raises(StoreError, match="several encoders"):
        load_snapshot(store, tmp_path / "snap")
    manifest = load_snapshot(store, tmp_path / "snap", encoder_id="enc-b")
    assert manifest.encoder_id == "enc-b" and store.encoders() == ["enc-b"]


def test_float16_snapshot_of_float32_records(tmp_path):
    with SnapshotWriter(tmp_path, "enc-a", "bf-1", dtype="float16") as writer:
        writer.write([make_record("x", 1, dim=8)])
    back = next(read_snapshot(tmp_path))
    assert back.vectors.dtype == np.float16
    np.testing.assert_allclose(back.vectors, make_record("x", 1, dim=8).vectors, rtol=1e-3, atol=1e-3)
