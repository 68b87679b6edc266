"""No silent corruption: damaged records, keys and snapshot parts are detected, never served or loaded.

Everything is real: values are damaged in LMDB itself, parts are real Parquet files with flipped
bytes, backfills are real Beam runs and the commands run through click.
"""

import json
import logging
import random
import struct
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash
from click.testing import CliRunner

from mixlm.schemas import EmbeddingRecord
from mixlm.schemas.lmdb_value import HEADER, SCHEMA_VERSION, record_key, value_checksum
from mixlm.store import CorruptItemError, EmbeddingStore, StoreCorruptError, export_snapshot, load_snapshot
from mixlm.store.cli import main
from mixlm.store.environment import open_environment
from tests.factories import make_record

VERSION_OFFSET = struct.calcsize("<Q4sHBBIII")  # the item_version field of a value's header
SCHEMA_OFFSET = struct.calcsize("<Q4s")


def raw_records(store: EmbeddingStore, apply):
    """Run ``apply(txn)`` on the records database behind the store's back (the process's one environment)."""
    environment = open_environment(store.root / "lmdb")
    with environment.env.begin(write=True, db=environment.dbs["records"]) as txn:
        return apply(txn)


def flip_version_bit(store: EmbeddingStore, encoder_id: str, item_id: str, bit: int = 40) -> int:
    """Flip one bit of a stored record's item_version; return the version the header now claims."""
    key = record_key(encoder_id, item_id)

    def apply(txn):
        value = bytearray(txn.get(key))
        value[VERSION_OFFSET + bit // 8] ^= 1 << bit % 8
        txn.put(key, bytes(value))
        return struct.unpack_from("<q", value, VERSION_OFFSET)[0]

    return raw_records(store, apply)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mixlm-store: error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# -- 1. the write path treats a record that fails its checksum as absent -------------------------------


def test_a_flipped_version_bit_does_not_win_forever(tmp_path, caplog):
    store = EmbeddingStore.open(tmp_path / "store", create=True)
    store.put_many([make_record("it-0042", 6), make_record("it-0043", 6)])
    assert flip_version_bit(store, "enc-a", "it-0042") == 1_099_511_627_782
    assert store.get_headers("enc-a", ["it-0042", "it-0043"]).keys() == {"it-0043"}  # absent to a writer

    job = store.jobs.create("stream", "enc-a")
    with caplog.at_level(logging.WARNING, logger="mixlm.store.online"):
        result = store.put_many([make_record("it-0042", 7), make_record("it-0043", 5)], job_id=job.job_id,
                                counts={"read": 2})
    assert result.as_counts() == {"written": 1, "deleted": 0, "stale": 1, "corrupt_replaced": 1}
    counts = store.jobs.get(job.job_id).counts
    assert (counts.read, counts.written, counts.stale, counts.corrupt_replaced) == (2, 1, 1, 1)
    assert counts.read == counts.dead_lettered + counts.written + counts.deleted + counts.stale + \
        counts.skipped_unchanged
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "'it-0042'" in warning.getMessage() and "enc-a" in warning.getMessage()
    assert "checksum" in warning.getMessage()
    back = store.get("enc-a", "it-0042")
    assert back.item_version == 7
    np.testing.assert_array_equal(back.vectors, make_record("it-0042", 7).vectors)
    # the replacement is an ordinary record again: an older version is stale
    assert store.put_many([make_record("it-0042", 6)]).as_counts()["stale"] == 1


def test_a_delete_replaces_a_corrupt_record(tmp_path):
    store = EmbeddingStore.open(tmp_path / "store", create=True)
    store.put_many([make_record("it-0042", 6)])
    flip_version_bit(store, "enc-a", "it-0042", bit=62)
    result = store.put_many([EmbeddingRecord.tombstone("it-0042", 7, "enc-a")])
    assert (result.deleted, result.corrupt_replaced) == (1, 1)
    assert store.get("enc-a", "it-0042").deleted


def test_a_backfill_replaces_a_record_whose_version_bit_flipped(tiny_bundle, tmp_path):
    from mixlm.pipelines.backfill import run_backfill
    from mixlm.pipelines.runner import describe_counts

    def catalog(name, version, text):
        path = tmp_path / name
        path.write_text(json.dumps({"item_id": "it-0042", "op": "upsert", "version": version, "text": text}) + "\n"
                        + json.dumps({"item_id": "it-0007", "op": "upsert", "version": version, "text": "keep"}) + "\n")
        return str(path)

    store_path = str(tmp_path / "store")
    first = run_backfill(catalog("v6.jsonl", 6, "first text"), str(tiny_bundle), store_path, log=lambda _: None)
    assert first.counts.written == 2
    store = EmbeddingStore.open(store_path)
    assert flip_version_bit(store, first.encoder_id, "it-0042") == 1_099_511_627_782

    second = run_backfill(catalog("v7.jsonl", 7, "second text"), str(tiny_bundle), store_path, log=lambda _: None)
    c = second.counts
    assert (c.read, c.written, c.corrupt_replaced, c.stale, c.skipped_unchanged) == (2, 2, 1, 0, 0)
    assert c.read == c.dead_lettered + c.written + c.deleted + c.stale + c.skipped_unchanged
    record = store.get(first.encoder_id, "it-0042")
    assert record.item_version == 7 and record.job_id == second.job_id
    assert describe_counts(second).endswith("corrupt-replaced 1")
    assert "corrupt" not in describe_counts(first)
    shown = json.loads(invoke("--store", store_path, "get", second.job_id, "-o", "json").stdout)
    assert shown["counts"]["corrupt_replaced"] == 1
    header, newest, _ = invoke("--store", store_path, "jobs").stdout.splitlines()
    assert header.split()[-1] == "CORRUPT_REPLACED" and newest.split()[0] == second.job_id
    assert newest.split()[-1] == "1"


# -- 2. a value is bound to its key ------------------------------------------------------------------


def move_to_key(store: EmbeddingStore, old: bytes, new: bytes) -> None:
    def apply(txn):
        value = txn.get(old)
        txn.delete(old)
        txn.put(new, value)

    raw_records(store, apply)


def test_a_value_under_a_flipped_key_is_a_corrupt_phantom(tmp_path):
    root = tmp_path / "store"
    store = EmbeddingStore.open(root, create=True)
    store.put_many([make_record(f"it-00{n}", 6) for n in (41, 42, 43)])
    store.promote("enc-a")
    move_to_key(store, record_key("enc-a", "it-0042"), record_key("enc-a", "jt-0042"))

    reads = (lambda: store.get("enc-a", "jt-0042"), lambda: store.get_many("enc-a", ["it-0041", "jt-0042"]),
             lambda: list(store.iter_records("enc-a")), lambda: store.encoder_stats("enc-a"),
             lambda: export_snapshot(store, tmp_path / "export", "enc-a"))
    for read in reads:
        with pytest.raises(CorruptItemError, match="'jt-0042'") as caught:
            read()
        assert "checksum" in str(caught.value) and "\n" not in str(caught.value)
    assert store.get_many("enc-a", ["it-0041", "it-0043"]).item_ids == ["it-0041", "it-0043"]
    assert_one_line_error(invoke("--store", root, "item", "jt-0042"), 4, "'jt-0042'", "checksum")
    assert_one_line_error(invoke("--store", root, "export", tmp_path / "export-cli"), 4, "'jt-0042'")
    assert not list((tmp_path / "export-cli").rglob("*.parquet"))  # no phantom written out
    # To a writer the phantom is absent: a write under that id replaces it.
    assert store.put_many([make_record("jt-0042", 1)]).as_counts()["corrupt_replaced"] == 1


def test_a_key_that_is_not_utf8_is_a_corrupt_record(tmp_path):
    store = EmbeddingStore.open(tmp_path / "store", create=True)
    store.put_many([make_record("it-0042", 6)])
    move_to_key(store, record_key("enc-a", "it-0042"), b"enc-a\x00it-\xff042")
    with pytest.raises(CorruptItemError, match="not UTF-8"):
        list(store.iter_records("enc-a"))
    with pytest.raises(CorruptItemError, match="not UTF-8"):
        store.encoder_stats("enc-a")


def schema_1_value(record: EmbeddingRecord) -> bytes:
    """The value the previous release wrote: schema version 1, its checksum over the value alone."""
    from mixlm.schemas.lmdb_value import encode_value

    value = bytearray(encode_value(record, 2))  # the layout of schema 2 without the key seed
    struct.pack_into("<H", value, SCHEMA_OFFSET, 1)
    struct.pack_into("<Q", value, 0, xxhash.xxh3_64_intdigest(bytes(value[8:])))
    return bytes(value)


def stored_schema(store: EmbeddingStore, encoder_id: str, item_id: str) -> int:
    return raw_records(store, lambda txn: struct.unpack_from("<H", txn.get(record_key(encoder_id, item_id)),
                                                             SCHEMA_OFFSET)[0])


def test_values_of_the_first_release_still_read_and_are_rewritten_in_the_current_schema(tmp_path):
    store = EmbeddingStore.open(tmp_path / "store", create=True)
    old = [make_record(f"old-{n}", 3, n_tokens=2, dim=4, retrieval_dim=3) for n in range(3)]
    raw_records(store, lambda txn: [txn.put(record_key("enc-a", r.item_id), schema_1_value(r)) for r in old])
    assert stored_schema(store, "enc-a", "old-0") == 1

    assert store.get("enc-a", "old-1").item_version == 3
    lookup = store.get_many("enc-a", ["old-0", "old-1", "old-2"], retrieval=True)
    np.testing.assert_array_equal(lookup.vectors[1], old[1].vectors)
    np.testing.assert_array_equal(lookup.retrieval_vectors[2], old[2].retrieval_vector)
    assert [r.item_id for r in store.iter_records("enc-a")] == ["old-0", "old-1", "old-2"]
    assert store.get_headers("enc-a", ["old-0"])["old-0"].item_version == 3
    assert store.encoder_stats("enc-a").live == 3
    assert export_snapshot(store, tmp_path / "export", "enc-a")

    # verified, so its version still decides; a newer write is stored in the current schema, titled
    assert store.put_many([make_record("old-0", 2)]).as_counts() == {"written": 0, "deleted": 0, "stale": 1,
                                                                      "corrupt_replaced": 0}
    assert stored_schema(store, "enc-a", "old-0") == 1
    assert store.titles("enc-a", ["old-0", "old-1"]) == {"old-0": "", "old-1": ""}
    assert store.put_many([make_record("old-0", 4, title="Old, now titled")]).as_counts()["written"] == 1
    assert stored_schema(store, "enc-a", "old-0") == SCHEMA_VERSION
    assert store.titles("enc-a", ["old-0", "old-1"]) == {"old-0": "Old, now titled", "old-1": ""}
    # a batch lookup reads each value once: titles of both schemas beside their vectors, in request order
    assert store.get_many("enc-a", ["absent", "old-0"], titles=True).titles == ["Old, now titled"]
    assert store.get_many("enc-a", ["old-2", "old-1"], titles=True).titles == ["", ""]  # schema 1: untitled

    damaged = bytearray(schema_1_value(old[1]))
    damaged[HEADER.size + 5] ^= 0x10  # in the vectors
    raw_records(store, lambda txn: txn.put(record_key("enc-a", "old-1"), bytes(damaged)))
    with pytest.raises(CorruptItemError, match="'old-1'"):
        store.get_many("enc-a", ["old-1"])


# -- 3.-5. snapshot parts carry row checksums; load verifies every row before writing anything ---------


def export_part(tmp_path, n_items: int = 40):
    """A real part exported from a real store: the store's records and the part's path."""
    source = EmbeddingStore.open(tmp_path / "source", create=True)
    source.put_many([make_record(f"it-{n:04d}", 1 + n % 5, n_tokens=2, dim=16, retrieval_dim=4,
                                 title=f"Item {n} — über" if n % 3 else "")
                     for n in range(n_items)] + [EmbeddingRecord.tombstone("gone", 3, "enc-a", job_id="st-1")])
    [part] = export_snapshot(source, tmp_path / "export", "enc-a")
    return {r.item_id: r for r in source.iter_records("enc-a", include_deleted=True)}, part


def assert_loaded(store_dir, expected: dict) -> None:
    loaded = {r.item_id: r for r in EmbeddingStore.open(store_dir).iter_records("enc-a", include_deleted=True)}
    assert loaded.keys() == expected.keys()
    for item_id, want in expected.items():
        got = loaded[item_id]
        assert (got.item_version, got.deleted, got.content_hash, got.job_id, got.source_tokens, got.truncated,
                got.encoded_at, got.title) == (want.item_version, want.deleted, want.content_hash, want.job_id,
                                               want.source_tokens, want.truncated, want.encoded_at, want.title), item_id
        np.testing.assert_array_equal(got.vectors, want.vectors)
        if want.retrieval_vector is not None:
            np.testing.assert_array_equal(got.retrieval_vector, want.retrieval_vector)


def test_random_byte_flips_in_a_part_never_load_wrong_vectors(tmp_path):
    expected, part = export_part(tmp_path)
    data = part.read_bytes()
    refused = 0
    for trial in range(20):
        rng = random.Random(trial)
        damaged = bytearray(data)
        for _ in range(4):
            damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
        snapshot = tmp_path / f"trial-{trial}" / "snap"
        snapshot.mkdir(parents=True)
        (snapshot / part.name).write_bytes(bytes(damaged))
        store_dir = tmp_path / f"trial-{trial}" / "store"
        result = invoke("--store", store_dir, "load", snapshot)
        if result.exit_code == 0:  # the flips hit nothing that is loaded (statistics, padding, ...)
            assert_loaded(store_dir, expected)
        else:
            assert_one_line_error(result, 4, str(snapshot / part.name), "is damaged")
            assert not store_dir.exists()  # refused before a store was created
            refused += 1
    assert refused >= 15


def rewrite_part(part, path, change) -> None:
    """Write ``change(table)`` to ``path`` with the part's metadata: a damaged row whose checksum is intact."""
    table = pq.read_table(part)
    pq.write_table(change(table).replace_schema_metadata(table.schema.metadata), path)


def with_row_vectors(table: pa.Table, row: int, factor: float) -> pa.Table:
    vectors = table.column("vectors").combine_chunks()
    flat = vectors.flatten().flatten().to_numpy().copy().reshape(len(table), -1)
    flat[row] *= factor
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), vectors.type.value_type.list_size)
    changed = pa.FixedSizeListArray.from_arrays(inner, vectors.type.list_size)
    return table.set_column(table.schema.get_field_index("vectors"), table.schema.field("vectors"), changed)


def test_a_damaged_row_is_refused_naming_the_file_and_the_row(tmp_path):
    expected, part = export_part(tmp_path)
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    (snapshot / "part-00000-good.parquet").write_bytes(part.read_bytes())
    bad = snapshot / "part-00001-bad.parquet"
    rewrite_part(part, bad, lambda table: with_row_vectors(table, 17, 1.001))

    assert_one_line_error(invoke("--store", tmp_path / "new", "load", snapshot), 4, str(bad), "row 17",
                          "'it-0016'", "checksum")
    assert not (tmp_path / "new").exists()
    # into an existing store: the good part before the bad one is not loaded either, and no job is made
    store = EmbeddingStore.open(tmp_path / "existing", create=True)
    with pytest.raises(StoreCorruptError, match="row 17"):
        load_snapshot(store, snapshot)
    assert store.encoders() == [] and store.jobs.list() == []
    bad.unlink()
    assert load_snapshot(store, snapshot).counts.written == len(expected) - 1
    assert_loaded(tmp_path / "existing", expected)


def test_parts_of_the_previous_release_are_refused_unless_allowed(tmp_path):
    expected, part = export_part(tmp_path)
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    rewrite_part(part, snapshot / part.name, lambda table: table.drop_columns(["checksum", "title"]))

    result = invoke("--store", tmp_path / "store", "load", snapshot)
    assert_one_line_error(result, 1, str(snapshot / part.name), "no row checksums", "mixlm-store export",
                          "--allow-unverified")
    assert not (tmp_path / "store").exists()
    loaded = invoke("--store", tmp_path / "store", "load", snapshot, "--allow-unverified", "-o", "json")
    assert loaded.exit_code == 0, loaded.output
    assert json.loads(loaded.stdout)["params"]["allow_unverified"] is True
    assert_loaded(tmp_path / "store", {item_id: replace(r, title="") for item_id, r in expected.items()})


def with_row_title(table: pa.Table, row: int, title: str) -> pa.Table:
    titles = table.column("title").to_pylist()
    titles[row] = title
    return table.set_column(table.schema.get_field_index("title"), table.schema.field("title"),
                            pa.array(titles, pa.string()))


def test_a_row_whose_title_was_changed_fails_its_checksum(tmp_path):
    expected, part = export_part(tmp_path)
    assert expected["it-0016"].title == "Item 16 — über"
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    rewrite_part(part, snapshot / part.name, lambda table: with_row_title(table, 17, "Item 16 — uber"))
    assert_one_line_error(invoke("--store", tmp_path / "new", "load", snapshot), 4, "row 17", "'it-0016'",
                          "checksum")
    assert not (tmp_path / "new").exists()


def test_parts_written_before_titles_load_verified_with_empty_titles(tmp_path):
    """A part of the release before titles: no title column, each row summed as a value of schema 2."""
    expected, part = export_part(tmp_path)
    untitled = {item_id: replace(r, title="") for item_id, r in expected.items()}
    snapshot = tmp_path / "snap"
    snapshot.mkdir()

    def previous_release(table: pa.Table) -> pa.Table:
        sums = pa.array([value_checksum(untitled[item_id], 2) for item_id in table.column("item_id").to_pylist()],
                        pa.uint64())
        table = table.drop_columns(["title"])
        return table.set_column(table.schema.get_field_index("checksum"), table.schema.field("checksum"), sums)

    rewrite_part(part, snapshot / part.name, previous_release)
    loaded = invoke("--store", tmp_path / "store", "load", snapshot, "-o", "json")
    assert loaded.exit_code == 0, loaded.output
    assert json.loads(loaded.stdout)["params"]["allow_unverified"] is False
    assert_loaded(tmp_path / "store", untitled)
    # and such a part with a damaged row is still refused
    rewrite_part(part, snapshot / part.name, lambda table: with_row_vectors(previous_release(table), 17, 1.001))
    assert_one_line_error(invoke("--store", tmp_path / "again", "load", snapshot), 4, "row 17", "checksum")


def test_a_parquet_file_that_is_not_a_snapshot_part(tmp_path):
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    pq.write_table(pa.table({"item_id": ["a"], "vectors": [[1.0, 2.0]]}), snapshot / "part-00000.parquet")
    assert_one_line_error(invoke("--store", tmp_path / "store", "load", snapshot), 1,
                          f"{snapshot / 'part-00000.parquet'} is not a mixlm snapshot part")
    assert not (tmp_path / "store").exists()
    (snapshot / "part-00000.parquet").write_bytes(b"not parquet at all")
    assert_one_line_error(invoke("--store", tmp_path / "store", "load", snapshot), 4, "is damaged")
    assert not (tmp_path / "store").exists()


def test_damaged_metadata_is_a_damaged_part(tmp_path):
    _, part = export_part(tmp_path)
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    table = pq.read_table(part)
    for key, value in ((b"mixlm.dim", b"8"), (b"mixlm.dtype", b"float64"), (b"mixlm.encoder_id", b"bad id")):
        pq.write_table(table.replace_schema_metadata({**table.schema.metadata, key: value}),
                       snapshot / part.name)
        assert_one_line_error(invoke("--store", tmp_path / "store", "load", snapshot), 4, "is damaged")
    assert not (tmp_path / "store").exists()
