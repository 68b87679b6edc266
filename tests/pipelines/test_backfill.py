"""Backfill over a real BEIR corpus slice, with real Beam runs and a real store."""

import gzip
import json
from dataclasses import replace

import numpy as np
from click.testing import CliRunner

from mixlm.cli import main
from mixlm.encoders import ItemEncoder
from mixlm.pipelines.backfill import run_backfill
from mixlm.schemas import ItemEvent
from mixlm.schemas.item_event import display_title
from mixlm.store import EmbeddingStore, load_snapshot
from mixlm.store.cli import main as store_main

CORPUS = "data/adi/corpus.jsonl.gz"


def corpus_docs():
    with gzip.open(CORPUS, "rt") as lines:
        return [json.loads(line) for line in lines]


def quiet(_line):
    pass


def test_beir_backfill_skip_unchanged_and_reencode(tiny_bundle, tmp_path):
    store_path = str(tmp_path / "store")
    docs = corpus_docs()
    first = run_backfill(CORPUS, str(tiny_bundle), store_path, log=quiet)
    assert first.status == "succeeded"
    assert (first.counts.read, first.counts.encoded, first.counts.written) == (len(docs), len(docs), len(docs))
    store = EmbeddingStore.open(store_path)
    encoder_id = first.encoder_id
    lookup = store.get_many(encoder_id, [d["_id"] for d in docs])
    assert not lookup.missing and lookup.vectors.shape == (len(docs), 1, 64)
    # the pipeline's vectors are the encoder's vectors
    encoder = ItemEncoder.from_bundle(tiny_bundle)
    direct = encoder.encode([(docs[3]["title"], docs[3]["text"])])[0]
    np.testing.assert_allclose(lookup.vectors[3], direct.vectors, atol=1e-5)
    record = store.get(encoder_id, docs[3]["_id"])
    as_event = ItemEvent(docs[3]["_id"], "upsert", 0, docs[3]["title"], docs[3]["text"])
    assert record.content_hash == as_event.content_hash()
    assert record.title == display_title(docs[3]["title"], docs[3]["text"]) and record.title

    second = run_backfill(CORPUS, str(tiny_bundle), store_path, log=quiet)
    assert (second.counts.encoded, second.counts.skipped_unchanged, second.counts.written) == (0, len(docs), 0)

    changed = tmp_path / "corpus.jsonl"
    docs[5]["title"] = "A revised title"  # the start of the text: it survives truncation
    changed.write_text("".join(json.dumps(d) + "\n" for d in docs))
    third = run_backfill(str(changed), str(tiny_bundle), store_path, log=quiet)
    assert (third.counts.encoded, third.counts.written, third.counts.skipped_unchanged) == (1, 1, len(docs) - 1)
    updated = store.get(encoder_id, docs[5]["_id"])
    assert updated.job_id == third.job_id and updated.item_version > record.item_version
    assert not np.allclose(updated.vectors, lookup.vectors[5])
    assert updated.title == "A revised title"

    shown = CliRunner().invoke(store_main, ["--store", store_path, "get", third.job_id, "-o", "json"])
    assert json.loads(shown.stdout)["counts"]["encoded"] == 1


def test_event_jsonl_with_deletes_and_dead_letters(tiny_bundle, tmp_path):
    lines = [
        json.dumps({"item_id": "a", "op": "upsert", "version": 2, "title": "A", "text": "alpha"}),
        json.dumps({"item_id": "b", "op": "upsert", "version": 1, "title": "B", "text": "beta"}),
        json.dumps({"item_id": "b", "op": "delete", "version": 3}),
        json.dumps({"item_id": "c", "op": "upsert", "version": "12a", "text": "gamma"}),
        "{broken json",
        "",
    ]
    catalog = tmp_path / "events.jsonl"
    catalog.write_bytes(("\n".join(lines) + "\n").encode() + b'{"item_id": "d", "text": "\xff"}\n')
    manifest = run_backfill(str(catalog), str(tiny_bundle), str(tmp_path / "store"), log=quiet)
    c = manifest.counts
    # b's upsert (v1) is written then deleted, or found stale behind its tombstone (v3): order within a bundle
    assert (c.read, c.dead_lettered, c.deleted, c.written + c.stale) == (7, 4, 1, 2)
    assert c.read == c.dead_lettered + c.written + c.deleted + c.stale + c.skipped_unchanged
    store = EmbeddingStore.open(tmp_path / "store")
    assert store.get_many(manifest.encoder_id, ["a", "b"]).missing == ["b"]
    letters = {letter.source: letter.reason.split(":")[0] for letter in store.dead_letters.list(manifest.job_id)}
    assert letters == {f"{catalog}:4": "version", f"{catalog}:5": "value", f"{catalog}:6": "blank line",
                       f"{catalog}:7": "value"}
    assert any(letter.raw == b'{"item_id": "d", "text": "\xff"}' for letter in store.dead_letters.list(manifest.job_id))


def test_snapshot_only_then_load(tiny_bundle, tmp_path):
    snapshot_dir = tmp_path / "snapshot"
    manifest = run_backfill(CORPUS, str(tiny_bundle), str(tmp_path / "driver"), snapshot_only=str(snapshot_dir),
                            log=quiet)
    n_docs = len(corpus_docs())
    assert manifest.counts.read == n_docs and manifest.counts.written == n_docs
    assert not EmbeddingStore.open(tmp_path / "driver").encoders()  # the driver's LMDB holds only the manifest
    store = EmbeddingStore.open(tmp_path / "online", create=True)
    loaded = load_snapshot(store, snapshot_dir)
    assert loaded.counts.written == n_docs
    assert store.get_many(manifest.encoder_id, [d["_id"] for d in corpus_docs()]).missing == []
    titles = store.titles(manifest.encoder_id, [d["_id"] for d in corpus_docs()])
    assert titles == {d["_id"]: display_title(d["title"], d["text"]) for d in corpus_docs()}


def test_a_backfill_gives_records_stored_without_titles_their_titles_without_encoding(tiny_bundle, tmp_path):
    store_path = str(tmp_path / "store")
    docs = corpus_docs()
    first = run_backfill(CORPUS, str(tiny_bundle), store_path, log=quiet)
    store = EmbeddingStore.open(store_path)
    before = list(store.iter_records(first.encoder_id))
    store.put_many([replace(r, item_version=r.item_version + 1, title="") for r in before])  # as an older release
    assert set(store.titles(first.encoder_id, [d["_id"] for d in docs]).values()) == {""}

    second = run_backfill(CORPUS, str(tiny_bundle), store_path, log=quiet)
    assert (second.counts.encoded, second.counts.written, second.counts.skipped_unchanged) == (0, len(docs), 0)
    after = store.get(first.encoder_id, docs[7]["_id"])
    assert after.title == display_title(docs[7]["title"], docs[7]["text"])
    np.testing.assert_array_equal(after.vectors, before[[r.item_id for r in before].index(docs[7]["_id"])].vectors)
    third = run_backfill(CORPUS, str(tiny_bundle), store_path, log=quiet)
    assert (third.counts.encoded, third.counts.skipped_unchanged) == (0, len(docs))


def test_cli_prints_the_job_id_last(tiny_bundle, tmp_path):
    result = CliRunner().invoke(main, ["backfill", "--input", CORPUS, "--bundle", str(tiny_bundle),
                                       "--store", str(tmp_path / "store")])
    assert result.exit_code == 0, result.output
    job_id = result.stdout.strip().splitlines()[-1]
    assert job_id.startswith("bf-") and "succeeded" in result.stderr
    missing = CliRunner().invoke(main, ["backfill", "--input", str(tmp_path / "nope.jsonl"), "--bundle",
                                        str(tiny_bundle), "--store", str(tmp_path / "store")])
    assert missing.exit_code == 2 and "does not exist" in missing.stderr


def test_parquet_catalog_with_the_item_event_schema(tiny_bundle, tmp_path):
    """A Parquet catalog written with the contract's Arrow schema: map fields, a null version, a delete."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mixlm.schemas.arrow import ITEM_EVENT_SCHEMA

    table = pa.Table.from_pylist([
        {"item_id": "p1", "op": "upsert", "version": 1, "title": "T1", "text": "one", "fields": [("city", "Oslo")]},
        {"item_id": "p2", "op": "upsert", "version": None, "title": "T2", "text": "two", "fields": None},
        {"item_id": "p3", "op": "delete", "version": 4, "title": None, "text": None, "fields": None},
    ], schema=ITEM_EVENT_SCHEMA)
    pq.write_table(table, tmp_path / "items.parquet")
    manifest = run_backfill(str(tmp_path / "items.parquet"), str(tiny_bundle), str(tmp_path / "store"), log=quiet)
    c = manifest.counts
    assert (c.written, c.deleted, c.dead_lettered) == (2, 1, 0)
    record = EmbeddingStore.open(tmp_path / "store").get(manifest.encoder_id, "p1")
    assert record.content_hash == ItemEvent("p1", "upsert", 1, "T1", "one", {"city": "Oslo"}).content_hash()
