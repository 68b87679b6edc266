"""The backfill on a real Dask cluster (worker processes on this machine) against the local runner.

Real Beam runs: Beam's Dask runner (with mixlm's fixes) on dask.distributed ``LocalCluster``s of
2 worker processes, the FnApiRunner, real snapshots loaded into real stores, the tiny bundle.
"""

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from mixlm.cli import main
from mixlm.pipelines.backfill import run_backfill
from mixlm.pipelines.sources import SPLIT_BLOCK, FileSplit, _ReadLines, _ReadParquetRows, plan_splits
from mixlm.schemas import ItemEvent
from mixlm.store import EmbeddingStore, load_snapshot
from mixlm.store.cli import main as store_main

SCIFACT = "data/scifact/corpus.jsonl.gz"
N_ITEMS = 300
DEAD = [  # (line, the reason's start), spread over the catalog so that every split meets some
    (b"{broken json", "value"),
    (b"", "blank line"),
    (json.dumps({"item_id": "v", "op": "upsert", "version": "12a", "text": "t"}).encode(), "version"),
    (b'{"item_id": "u", "op": "upsert", "version": 1, "text": "\xff"}', "value"),
    (b"[" * 1000 + b"]" * 1000, "value"),
    (json.dumps({"item_id": "", "op": "upsert", "version": 1, "text": "t"}).encode(), "item_id"),
]


def quiet(_line):
    pass


def write_catalog(path: Path) -> dict:
    """300 SciFact upserts (explicit versions), deletes of absent and of upserted items, dead letters."""
    with gzip.open(SCIFACT, "rt") as lines:
        docs = [json.loads(next(lines)) for _ in range(N_ITEMS)]
    lines = [ItemEvent(d["_id"], "upsert", 10 + i, d["title"], d["text"]).to_json().encode()
             for i, d in enumerate(docs)]
    deletes = [ItemEvent(f"gone-{i}", "delete", 7) for i in range(6)]
    deletes += [ItemEvent(docs[i]["_id"], "delete", 10 + i + 1) for i in (3, 70, 140, 210, 280)]  # win at load
    for index, event in enumerate(deletes):
        lines.insert(25 + index * 27, event.to_json().encode())
    for index, (line, _reason) in enumerate(DEAD):
        lines.insert(10 + index * 55, line)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return {"lines": len(lines), "upserts": N_ITEMS, "deletes": len(deletes), "dead": len(DEAD),
            "deleted_ids": {e.item_id for e in deletes}}


def dead_letters(snapshot: Path) -> set[tuple]:
    letters = set()
    for file in snapshot.glob("dead_letters/job=*/*.jsonl"):
        for line in file.read_text().splitlines():
            letter = json.loads(line)
            letters.add((letter["source"], letter["reason"], letter["raw"], letter.get("raw_base64")))
    return letters


def records(store_path: Path, encoder_id: str) -> dict:
    return {r.item_id: r for r in EmbeddingStore.open(store_path).iter_records(encoder_id, include_deleted=True)}


def test_two_dask_workers_build_the_same_store_as_the_local_runner(tiny_bundle, tmp_path):
    catalog = tmp_path / "catalog.jsonl"
    expected = write_catalog(catalog)

    local = run_backfill(str(catalog), str(tiny_bundle), str(tmp_path / "driver-local"),
                         snapshot_only=str(tmp_path / "snap-local"), log=quiet)
    load_snapshot(EmbeddingStore.open(tmp_path / "online-local", create=True), tmp_path / "snap-local")

    ran = CliRunner().invoke(main, ["backfill", "--input", str(catalog), "--bundle", str(tiny_bundle),
                                    "--store", str(tmp_path / "driver-dask"), "--snapshot-only",
                                    str(tmp_path / "snap-dask"), "--runner", "dask", "--dask-workers", "2"])
    assert ran.exit_code == 0, ran.output
    assert "2 task slots" in ran.stderr and "succeeded" in ran.stderr
    job_id = ran.stdout.strip().splitlines()[-1]
    loaded = CliRunner().invoke(store_main, ["--store", str(tmp_path / "online-dask"), "load",
                                             str(tmp_path / "snap-dask")])
    assert loaded.exit_code == 0, loaded.output

    dask = EmbeddingStore.open(tmp_path / "driver-dask").jobs.get(job_id)
    assert dask.status == "succeeded" and dask.params["dask_workers"] == 2
    # Dask reports no Beam metrics: the counts come from the files beside the parts, written by 2 processes
    assert dask.outputs["counts_from"] == "snapshot" and len(dask.outputs["workers"].split(",")) == 2
    assert "counts_from" not in local.outputs  # the local runner's came as Beam metrics
    assert dask.counts == local.counts
    c = dask.counts
    assert (c.read, c.encoded, c.written, c.deleted, c.dead_lettered, c.stale, c.skipped_unchanged) == (
        expected["lines"], expected["upserts"], expected["upserts"], expected["deletes"], expected["dead"], 0, 0)
    # the splits of one file went to both workers: more than one part file
    assert len(list((tmp_path / "snap-dask").rglob("part-*.parquet"))) > 1

    assert dead_letters(tmp_path / "snap-dask") == dead_letters(tmp_path / "snap-local")
    reasons = sorted(letter[1].split(":")[0] for letter in dead_letters(tmp_path / "snap-dask"))
    assert reasons == sorted(reason for _line, reason in DEAD)

    on_dask, on_local = records(tmp_path / "online-dask", dask.encoder_id), records(tmp_path / "online-local",
                                                                                  local.encoder_id)
    assert set(on_dask) == set(on_local) and len(on_dask) == N_ITEMS + 6
    assert {i for i, r in on_dask.items() if r.deleted} == expected["deleted_ids"]
    for item_id, record in on_dask.items():
        other = on_local[item_id]
        assert (record.item_version, record.deleted, record.content_hash, record.source_tokens) == (
            other.item_version, other.deleted, other.content_hash, other.source_tokens), item_id
        if not record.deleted:
            np.testing.assert_allclose(record.vectors, other.vectors, atol=1e-5, err_msg=item_id)


def test_joining_a_running_cluster_loads_the_model_once_per_worker(tiny_bundle, tmp_path):
    distributed = pytest.importorskip("distributed")
    from mixlm.pipelines.dask_runner import dask_cluster

    catalog = tmp_path / "events.jsonl"
    catalog.write_text("".join(ItemEvent(f"i{n}", "upsert", 1, f"T{n}", f"text {n}").to_json() + "\n"
                               for n in range(4 * SPLIT_BLOCK)))
    with dask_cluster(workers=2, torch_threads=2) as (address, slots, threads):
        assert (slots, threads) == (2, 2)
        for run in range(2):
            manifest = run_backfill(str(catalog), str(tiny_bundle), str(tmp_path / "driver"),
                                    snapshot_only=str(tmp_path / f"snap-{run}"), beam_args=["--runner=dask"],
                                    dask_address=address, torch_threads=1, log=quiet)
            assert manifest.counts.written == 4 * SPLIT_BLOCK
            assert len(manifest.outputs["workers"].split(",")) == 2
        with distributed.Client(address) as client:
            loaded = client.run(lambda: __import__("mixlm.pipelines.encode", fromlist=["_LOADED"])._LOADED.copy())
            threads = client.run(lambda: __import__("torch").get_num_threads())
    assert len(loaded) == 2 and all(list(models) == [(str(tiny_bundle), None)] for models in loaded.values())
    assert set(threads.values()) == {1}  # the job's --torch-threads, over the cluster's 2


def test_dask_arguments_are_checked_before_anything_runs(tiny_bundle, tmp_path):
    base = ["backfill", "--input", "data/adi/corpus.jsonl.gz", "--bundle", str(tiny_bundle),
            "--store", str(tmp_path / "store")]
    no_snapshot = CliRunner().invoke(main, [*base, "--runner", "dask", "--dask-workers", "2"])
    assert no_snapshot.exit_code == 1 and "--snapshot-only" in no_snapshot.stderr
    no_runner = CliRunner().invoke(main, [*base, "--snapshot-only", str(tmp_path / "s"), "--dask-workers", "2"])
    assert no_runner.exit_code == 1 and "go with --runner dask" in no_runner.stderr
    both = CliRunner().invoke(main, [*base, "--snapshot-only", str(tmp_path / "s"), "--runner=dask",
                                     "--dask-workers", "2", "--dask-address", "tcp://127.0.0.1:1"])
    assert both.exit_code == 1 and "not both" in both.stderr
    assert not (tmp_path / "store").exists()


def test_splits_of_a_file_share_its_lines_and_rows_exactly_once(tmp_path):
    n = 5 * SPLIT_BLOCK + 7
    jsonl = tmp_path / "items.jsonl.gz"
    with gzip.open(jsonl, "wt") as out:
        out.write("".join(f'{{"n": {number}}}\n' for number in range(1, n + 1)))
    parquet = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_id": [f"r{number}" for number in range(1, n + 1)]}), parquet,
                   row_group_size=SPLIT_BLOCK // 2 + 5)  # row groups that straddle the blocks
    assert pq.ParquetFile(parquet).metadata.num_row_groups > 5
    for of in (1, 2, 3):
        lines = [raw for index in range(of) for raw in _ReadLines(False, 0).process(FileSplit(str(jsonl), index, of))]
        assert sorted(int(raw.source.rsplit(":", 1)[1]) for raw in lines) == list(range(1, n + 1))
        assert all(json.loads(raw.value)["n"] == int(raw.source.rsplit(":", 1)[1]) for raw in lines)
        rows = [raw for index in range(of) for raw in _ReadParquetRows(0).process(FileSplit(str(parquet), index, of))]
        assert sorted(int(raw.source.rsplit(" ", 1)[1]) for raw in rows) == list(range(1, n + 1))
        assert all(json.loads(raw.value)["item_id"] == "r" + raw.source.rsplit(" ", 1)[1] for raw in rows)
    assert plan_splits(str(jsonl), 4) == [FileSplit(str(jsonl), index, 4) for index in range(4)]
    assert plan_splits(str(tmp_path / "*.parquet"), 1) == [FileSplit(str(parquet), 0, 1)]


def test_a_cluster_of_threads_in_this_process_neither_loses_nor_repeats_items(tiny_bundle, tmp_path):
    """Tasks that share their DoFn objects (no unpickling), several bundles per ParDo, 3 items per last batch."""
    distributed = pytest.importorskip("distributed")

    n = 3 * SPLIT_BLOCK + 3
    catalog = tmp_path / "events.jsonl"
    catalog.write_text("".join(ItemEvent(f"i{k}", "upsert", 1, f"T{k}", f"text {k}").to_json() + "\n"
                               for k in range(n)))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        manifest = run_backfill(str(catalog), str(tiny_bundle), str(tmp_path / "driver"),
                                snapshot_only=str(tmp_path / "snap"), beam_args=["--runner", "dask"],
                                dask_address=cluster.scheduler_address, log=quiet)
    assert (manifest.counts.read, manifest.counts.written) == (n, n)
    ids = [item_id for part in (tmp_path / "snap").rglob("part-*.parquet")
           for item_id in pq.read_table(part, columns=["item_id"]).column("item_id").to_pylist()]
    assert sorted(ids) == sorted(f"i{k}" for k in range(n))
