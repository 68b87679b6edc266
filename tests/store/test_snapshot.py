import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mixlm.schemas import EmbeddingRecord, ValidationError
from mixlm.store import (
    EmbeddingStore,
    EncoderNotFoundError,
    SnapshotWriter,
    StoreError,
    export_snapshot,
    load_snapshot,
    read_snapshot,
    snapshot_files,
)
from mixlm.store.snapshot import file_metadata
from mixlm.store.transfer import snapshot_encoder
from tests.factories import make_record

N_LIVE = 23


def records(dtype: str, encoder_id: str = "enc-a") -> list[EmbeddingRecord]:
    """23 live records (versions 1-3, retrieval vectors), then tombstones for item-3 and a never-live item."""
    live = [make_record(f"item-{n:02d}", 1 + n % 3, encoder_id=encoder_id, n_tokens=2, dim=6, dtype=dtype,
                        retrieval_dim=4, title=f"Item {n}: ünïcode" if n % 4 else "") for n in range(N_LIVE)]
    return live + [EmbeddingRecord.tombstone("item-03", 9, encoder_id, job_id="bf-test", encoded_at=1.7e9 + 0.25),
                   EmbeddingRecord.tombstone("ghost", 2, encoder_id, job_id="st-x")]


def latest(rows: list[EmbeddingRecord]) -> dict[str, EmbeddingRecord]:
    """What the version rule keeps: the newest version of each item."""
    out: dict[str, EmbeddingRecord] = {}
    for record in rows:
        if record.item_id not in out or record.item_version > out[record.item_id].item_version:
            out[record.item_id] = record
    return out


def assert_same(a: EmbeddingRecord, b: EmbeddingRecord) -> None:
    assert (a.item_id, a.item_version, a.encoder_id, a.deleted, a.content_hash, a.source_tokens, a.truncated,
            a.job_id, a.title) == (b.item_id, b.item_version, b.encoder_id, b.deleted, b.content_hash,
                                   b.source_tokens, b.truncated, b.job_id, b.title)
    assert a.encoded_at == pytest.approx(b.encoded_at, abs=1e-6)
    if a.deleted:
        assert b.retrieval_vector is None and b.n_tokens == 0
        return
    assert a.vectors.dtype == b.vectors.dtype and a.vectors.shape == b.vectors.shape
    np.testing.assert_array_equal(a.vectors, b.vectors)
    if a.retrieval_vector is None:
        assert b.retrieval_vector is None
    else:
        assert a.retrieval_vector.dtype == b.retrieval_vector.dtype
        np.testing.assert_array_equal(a.retrieval_vector, b.retrieval_vector)


def no_temp_files(root) -> bool:
    return not [p for p in root.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_writer_reader_round_trip(tmp_path, dtype):
    original = records(dtype)
    with SnapshotWriter(tmp_path, "enc-a", "bf-test", dtype=dtype, rows_per_file=10) as writer:
        writer.write(original[:4])
        writer.write(original[4:])
    assert len(writer.files) == 3  # 25 rows, 10 per file
    assert [path.name[:10] for path in writer.files] == ["part-00000", "part-00001", "part-00002"]
    assert all(path.parent == tmp_path / "encoder=enc-a" / "job=bf-test" for path in writer.files)
    assert snapshot_files(tmp_path) == writer.files
    assert no_temp_files(tmp_path)
    assert [pq.read_metadata(path).num_rows for path in writer.files] == [10, 10, 5]
    for path in writer.files:
        meta = file_metadata(path)
        assert meta["encoder_id"] == "enc-a" and meta["job_id"] == "bf-test" and meta["dtype"] == dtype
        assert (meta["n_tokens"], meta["dim"], meta["retrieval_dim"]) == ("2", "6", "4")
        schema = pq.read_schema(path)
        vectors_type = schema.field("vectors").type
        assert vectors_type.list_size == 2 and vectors_type.value_type.list_size == 6
        assert vectors_type.value_type.value_type == (pa.float32() if dtype == "float32" else pa.float16())
        assert schema.field("retrieval_vector").type.list_size == 4
        assert schema.field("title").type == pa.string()
    back = list(read_snapshot(tmp_path))
    assert len(back) == len(original)
    for a, b in zip(original, back, strict=True):
        assert_same(a, b)
    # each directory level reads the same rows
    job_dir = tmp_path / "encoder=enc-a" / "job=bf-test"
    assert [r.item_id for r in read_snapshot(job_dir)] == [r.item_id for r in original]
    assert [r.item_id for r in read_snapshot(writer.files[1])] == [r.item_id for r in original[10:20]]


def test_snapshot_without_retrieval_vectors(tmp_path):
    original = [make_record(f"i{n}", 1, n_tokens=3, dim=5) for n in range(5)]
    with SnapshotWriter(tmp_path, "enc-a", "bf-1") as writer:
        writer.write(original)
    assert "retrieval_vector" not in pq.read_schema(writer.files[0]).names
    for a, b in zip(original, read_snapshot(tmp_path), strict=True):
        assert_same(a, b)


def test_tombstones_only_and_tombstones_first(tmp_path):
    tombs = [EmbeddingRecord.tombstone(f"t{n}", n + 1, "enc-a") for n in range(3)]
    with SnapshotWriter(tmp_path / "a", "enc-a", "bf-1") as writer:
        writer.write(tombs)
    assert [(r.item_id, r.deleted, r.item_version) for r in read_snapshot(tmp_path / "a")] == [
        ("t0", True, 1), ("t1", True, 2), ("t2", True, 3)]
    mixed = tombs + [make_record("live", 1, n_tokens=2, dim=4)]
    with SnapshotWriter(tmp_path / "b", "enc-a", "bf-1") as writer:
        writer.write(mixed)
    for a, b in zip(mixed, read_snapshot(tmp_path / "b"), strict=True):
        assert_same(a, b)


def test_writer_rejects_other_encoders_shapes_and_dtypes(tmp_path):
    with pytest.raises(ValidationError) as caught:
        SnapshotWriter(tmp_path, "enc-a", "bf-1", dtype="float64")
    assert caught.value.field == "dtype"
    writer = SnapshotWriter(tmp_path, "enc-a", "bf-1")
    with pytest.raises(ValueError, match="enc-b"):
        writer.write([make_record("x", 1, encoder_id="enc-b")])
    writer = SnapshotWriter(tmp_path, "enc-a", "bf-2")
    writer.write([make_record("x", 1, dim=8), make_record("y", 1, dim=4)])
    with pytest.raises(ValueError, match="'y'"):
        writer.close()
    assert no_temp_files(tmp_path) and not list(tmp_path.rglob("*.parquet"))


def test_failure_inside_the_writer_block_writes_nothing_more(tmp_path):
    with pytest.raises(RuntimeError):
        with SnapshotWriter(tmp_path, "enc-a", "bf-1", rows_per_file=10) as writer:
            writer.write(records("float32")[:15])
            raise RuntimeError("encoder crashed")
    assert len(writer.files) == 1 and snapshot_files(tmp_path) == writer.files
    assert len(list(read_snapshot(tmp_path))) == 10


def test_two_writers_of_one_job_do_not_collide(tmp_path):
    rows = records("float32")
    first = SnapshotWriter(tmp_path, "enc-a", "bf-1")
    second = SnapshotWriter(tmp_path, "enc-a", "bf-1")
    first.write(rows[:10])
    second.write(rows[10:])
    files = first.close() + second.close()
    assert len(set(files)) == 2 and sorted(files) == snapshot_files(tmp_path)
    assert sorted(r.item_id for r in read_snapshot(tmp_path)) == sorted(r.item_id for r in rows)


def test_read_snapshot_ignores_temporary_files_and_reports_files(tmp_path):
    with SnapshotWriter(tmp_path, "enc-a", "bf-1") as writer:
        writer.write([make_record("x", 1)])
    job_dir = writer.files[0].parent
    (job_dir / ".part-00001-dead.parquet.tmp").write_bytes(b"half a file from a crashed writer")
    seen = []
    assert [r.item_id for r in read_snapshot(tmp_path, on_file=seen.append)] == ["x"]
    assert seen == writer.files
    with pytest.raises(FileNotFoundError):
        snapshot_files(tmp_path / "missing")


def test_float16_snapshot_of_float32_records(tmp_path):
    original = [make_record(f"x{n}", 1, dim=8, retrieval_dim=3) for n in range(4)]
    with SnapshotWriter(tmp_path, "enc-a", "bf-1", dtype="float16") as writer:
        writer.write(original)
    assert file_metadata(writer.files[0])["dtype"] == "float16"
    for record, back in zip(original, read_snapshot(tmp_path), strict=True):
        assert back.vectors.dtype == np.float16 and back.retrieval_vector.dtype == np.float16
        np.testing.assert_array_equal(back.vectors, record.vectors.astype(np.float16))
    widened = next(read_snapshot(tmp_path, as_dtype="float32"))
    assert widened.vectors.dtype == np.float32
    np.testing.assert_array_equal(widened.vectors, original[0].vectors.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_load_parity_and_idempotent_replay(tmp_path, dtype):
    rows = records(dtype)
    with SnapshotWriter(tmp_path / "snap", "enc-a", "bf-test", dtype=dtype, rows_per_file=7) as writer:
        writer.write(rows)
    assert len(writer.files) == 4
    store = EmbeddingStore.open(tmp_path / "store", create=True)
    progress = []
    first = load_snapshot(store, tmp_path / "snap", progress=progress.append)
    assert first.kind == "load" and first.status == "succeeded" and first.encoder_id == "enc-a"
    assert first.job_id.startswith("ld-") and first.finished is not None
    assert first.params["files"] == 4 and progress and progress[-1].counts.read == len(rows)
    # item-03 comes live first, then as a tombstone (version 9) that replaces it.
    assert (first.counts.read, first.counts.written, first.counts.deleted, first.counts.stale) == (25, 23, 2, 0)
    assert store.jobs.get(first.job_id) == first

    expected = latest(rows)
    stored = {r.item_id: r for r in store.iter_records("enc-a", include_deleted=True)}
    assert stored.keys() == expected.keys()
    for item_id, record in expected.items():
        assert_same(record, stored[item_id])
    lookup = store.get_many("enc-a", sorted(expected))
    assert sorted(lookup.missing) == ["ghost", "item-03"]
    for row, item_id in enumerate(lookup.item_ids):
        np.testing.assert_array_equal(lookup.vectors[row], expected[item_id].vectors)

    replay = load_snapshot(store, tmp_path / "snap")
    assert replay.job_id != first.job_id
    assert (replay.counts.read, replay.counts.stale, replay.counts.written, replay.counts.deleted) == (25, 25, 0, 0)
    assert {r.item_id: r.item_version for r in store.iter_records("enc-a", include_deleted=True)} == {
        item_id: record.item_version for item_id, record in expected.items()}


def test_load_keeps_newer_store_records(tmp_path):
    with SnapshotWriter(tmp_path / "snap", "enc-a", "bf-1") as writer:
        writer.write([make_record("a", 2), make_record("b", 2)])
    store = EmbeddingStore.open(tmp_path / "store", create=True)
    store.put_many([make_record("a", 5)])
    manifest = load_snapshot(store, tmp_path / "snap")
    assert (manifest.counts.written, manifest.counts.stale) == (1, 1)
    assert store.get("enc-a", "a").item_version == 5 and store.get("enc-a", "b").item_version == 2


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_export_then_load_reproduces_the_store(tmp_path, dtype):
    source = EmbeddingStore.open(tmp_path / "a", create=True)
    source.put_many(records(dtype))
    source.put_many([make_record("other", 1, encoder_id="enc-b")])  # another encoder stays out
    files = export_snapshot(source, tmp_path / "export", "enc-a")
    assert files and no_temp_files(tmp_path / "export")
    meta = file_metadata(files[0])
    assert meta["dtype"] == dtype and meta["encoder_id"] == "enc-a" and meta["job_id"].startswith("export-")
    assert files[0].parent.parent == tmp_path / "export" / "encoder=enc-a"
    copy = EmbeddingStore.open(tmp_path / "b", create=True)
    manifest = load_snapshot(copy, tmp_path / "export")
    assert manifest.counts.read == N_LIVE + 1  # item-03 is one tombstone row now, plus the ghost
    original = list(source.iter_records("enc-a", include_deleted=True))
    copied = list(copy.iter_records("enc-a", include_deleted=True))
    assert len(original) == len(copied) == N_LIVE + 1
    for a, b in zip(original, copied, strict=True):
        assert_same(a, b)
    assert copy.encoders() == ["enc-a"]


def test_export_as_float16_and_unknown_encoder(tmp_path):
    source = EmbeddingStore.open(tmp_path / "a", create=True)
    source.put_many(records("float32"))
    files = export_snapshot(source, tmp_path / "export", "enc-a", dtype="float16")
    assert file_metadata(files[0])["dtype"] == "float16"
    copy = EmbeddingStore.open(tmp_path / "b", create=True)
    load_snapshot(copy, tmp_path / "export")
    back = copy.get("enc-a", "item-00")
    assert back.vectors.dtype == np.float16
    np.testing.assert_array_equal(back.vectors, source.get("enc-a", "item-00").vectors.astype(np.float16))
    with pytest.raises(EncoderNotFoundError, match="enc-zz"):
        export_snapshot(source, tmp_path / "export2", "enc-zz")


def test_snapshot_encoder_choice_and_errors(tmp_path):
    snap = tmp_path / "snap"
    snap.mkdir()
    with pytest.raises(StoreError, match="no snapshot part files"):
        snapshot_encoder(snap)
    for encoder_id in ("enc-a", "enc-b"):
        with SnapshotWriter(snap, encoder_id, "bf-1") as writer:
            writer.write([make_record("x", 1, encoder_id=encoder_id), make_record("y", 1, encoder_id=encoder_id)])
    with pytest.raises(StoreError, match="several encoders") as caught:
        snapshot_encoder(snap)
    assert "enc-a, enc-b" in str(caught.value)
    encoder_id, files = snapshot_encoder(snap, "enc-b")
    assert encoder_id == "enc-b" and files == snapshot_files(snap / "encoder=enc-b")
    assert snapshot_encoder(snap / "encoder=enc-a")[0] == "enc-a"
    with pytest.raises(EncoderNotFoundError, match="enc-c"):
        snapshot_encoder(snap, "enc-c")

    store = EmbeddingStore.open(tmp_path / "store", create=True)
    with pytest.raises(StoreError, match="several encoders"):
        load_snapshot(store, snap)
    assert store.jobs.list() == [] and store.encoders() == []  # nothing started, nothing written
    manifest = load_snapshot(store, snap, encoder_id="enc-b")
    assert manifest.encoder_id == "enc-b" and store.encoders() == ["enc-b"]
    assert manifest.counts.written == 2
