"""The streaming consumer against a real Kafka-protocol broker (Tansu), real Beam, real LMDB."""

import os
import signal
import subprocess
import sys
import time

from mixlm.pipelines.streaming import run_stream
from mixlm.store import EmbeddingStore
from tests.pipelines.streams import assert_counts_add_up, assert_store_matches, event_script, produce


def quiet(_line):
    pass


def test_stream_end_to_end(tiny_bundle, kafka_broker, tmp_path):
    messages, expected = event_script(n_items=120, n_valid=480, n_malformed=20)
    assert len(messages) == 500
    produce(kafka_broker.bootstrap_servers, "items", messages)
    manifest = run_stream(kafka_broker.bootstrap_servers, "items", "mixlm-test", str(tiny_bundle),
                          str(tmp_path / "store"), max_records=500, max_seconds=120,
                          dead_letter_topic="items-dead", log=quiet)
    assert manifest.status == "succeeded" and manifest.outputs["stopped_by"] == "max-records reached"
    counts = manifest.counts
    assert counts.read == 500 and counts.dead_lettered == 20
    assert_counts_add_up(counts)
    assert counts.stale > 0 and counts.deleted > 0  # duplicates and late versions; deletes
    assert sum(manifest.offsets["items"].values()) == 500

    store = EmbeddingStore.open(tmp_path / "store")
    assert_store_matches(store, manifest.encoder_id, expected)
    letters = list(store.dead_letters.list(manifest.job_id))
    assert len(letters) == 20 and all(letter.reason and letter.source.startswith("items/") for letter in letters)
    assert {letter.raw for letter in letters} >= {b"{not json", b"\xff\xfe binary"}

    from kafka import KafkaConsumer
    consumer = KafkaConsumer("items-dead", bootstrap_servers=kafka_broker.bootstrap_servers,
                             auto_offset_reset="earliest", consumer_timeout_ms=3000)
    assert len(list(consumer)) == 20
    consumer.close()

    # Offsets were committed: a second run of the group reads nothing new.
    again = run_stream(kafka_broker.bootstrap_servers, "items", "mixlm-test", str(tiny_bundle),
                       str(tmp_path / "store"), max_seconds=3, log=quiet)
    assert again.counts.read == 0 and again.outputs["stopped_by"] == "max-seconds reached"


def _start_stream(bootstrap_servers: str, bundle, store, *extra):
    command = [sys.executable, "-c", "from mixlm.cli import main; main()", "stream", "--bootstrap-servers",
               bootstrap_servers, "--topic", "items", "--group", "crash-test", "--bundle", str(bundle),
               "--store", str(store), *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})


def test_sigkill_mid_stream_then_restart_loses_nothing(tiny_bundle, kafka_broker, tmp_path):
    messages, expected = event_script(n_items=300, n_valid=3000, n_malformed=0, seed=11)
    produce(kafka_broker.bootstrap_servers, "items", messages)
    store_path = tmp_path / "store"
    first = _start_stream(kafka_broker.bootstrap_servers, tiny_bundle, store_path)
    deadline = time.monotonic() + 120
    written = 0
    while time.monotonic() < deadline and written < 300:
        time.sleep(0.05)
        if (store_path / "lmdb" / "data.mdb").exists():
            jobs = EmbeddingStore.open(store_path).jobs.list()
            written = jobs[0].counts.read if jobs else 0
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert 300 <= written < 3000, f"the kill did not land mid-stream (read {written})"
    store = EmbeddingStore.open(store_path)
    killed = store.jobs.list()[0]
    assert killed.status == "running"  # it never got to mark itself
    assert_counts_add_up(killed.counts)

    second = _start_stream(kafka_broker.bootstrap_servers, tiny_bundle, store_path, "--max-seconds", "25")
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err[-2000:]
    job_id = out.strip().splitlines()[-1]
    resumed = store.jobs.get(job_id)
    assert resumed.status == "succeeded"
    assert_counts_add_up(resumed.counts)
    # everything after the first job's last committed offset was read again, nothing before it was skipped
    assert killed.counts.read + resumed.counts.read >= len(messages)
    assert_store_matches(store, resumed.encoder_id, expected)


def test_sigterm_ends_the_job_cleanly(tiny_bundle, kafka_broker, tmp_path):
    produce(kafka_broker.bootstrap_servers, "items", event_script(10, 30, 0)[0])
    process = _start_stream(kafka_broker.bootstrap_servers, tiny_bundle, tmp_path / "store")
    store_path = tmp_path / "store"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if (store_path / "lmdb" / "data.mdb").exists():
            jobs = EmbeddingStore.open(store_path).jobs.list()
            if jobs and jobs[0].counts.read >= 30:
                break
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-2000:]
    manifest = EmbeddingStore.open(store_path).jobs.get(out.strip().splitlines()[-1])
    assert manifest.status == "succeeded" and manifest.outputs["stopped_by"] == "SIGTERM"
    assert manifest.counts.read == 30
