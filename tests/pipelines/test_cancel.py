"""SIGTERM and SIGINT cancel a running backfill cleanly: one line, 128 + the signal, a cancelled manifest."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mixlm.store import EmbeddingStore
from tests.pipelines.streams import assert_counts_add_up


def _catalog(path, n_items: int) -> None:
    with open(path, "w") as lines:
        for n in range(n_items):
            lines.write(json.dumps({"item_id": f"it-{n:05d}", "op": "upsert", "version": 1, "title": f"Item {n}",
                                    "text": "a body long enough to keep the encoder busy " * 8}) + "\n")


def _backfill(catalog, bundle, store) -> subprocess.Popen:
    command = [sys.executable, "-c", "from mixlm.cli import main; main()", "backfill", "--input", str(catalog),
               "--bundle", str(bundle), "--store", str(store)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})


def _wait_until_written(store_path, at_least: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if (store_path / "lmdb" / "data.mdb").exists():
            jobs = EmbeddingStore.open(store_path).jobs.list()
            if jobs and jobs[0].counts.written >= at_least:
                return
    raise AssertionError(f"the backfill wrote fewer than {at_least} items in {timeout:g} s")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_cancels_a_backfill_and_keeps_what_it_committed(tiny_bundle, tmp_path, signum):
    catalog, store_path = tmp_path / "items.jsonl", tmp_path / "store"
    _catalog(catalog, 20_000)
    process = _backfill(catalog, tiny_bundle, store_path)
    _wait_until_written(store_path, 500)
    process.send_signal(signum)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    name = signal.Signals(signum).name
    assert err.strip().splitlines()[-1] == f"mixlm: error: cancelled by {name}"

    store = EmbeddingStore.open(store_path)
    manifest = store.jobs.list()[0]
    assert manifest.status == "cancelled" and manifest.errors == [f"cancelled by {name}"]
    assert manifest.finished is not None
    assert_counts_add_up(manifest.counts)
    assert 500 <= manifest.counts.written < 20_000, "the signal did not land mid-job"
    stats = store.encoder_stats(manifest.encoder_id)
    assert stats.live == manifest.counts.written  # what the manifest counts is exactly what was committed

    rerun = _backfill(catalog, tiny_bundle, store_path)
    _out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err[-2000:]
    assert store.encoder_stats(manifest.encoder_id).live == 20_000
