"""A stream without its broker: one line and exit 5 at the start; an outage mid-stream is recorded."""

import os
import subprocess
import sys
import time

from mixlm.devbroker.broker import EmbeddedBroker, free_port
from mixlm.store import EmbeddingStore
from tests.pipelines.streams import assert_counts_add_up, event_script, produce


def _stream(bootstrap_servers: str, bundle, store, *extra) -> subprocess.Popen:
    command = [sys.executable, "-c", "from mixlm.cli import main; main()", "stream", "--bootstrap-servers",
               bootstrap_servers, "--topic", "items", "--group", "outage", "--bundle", str(bundle),
               "--store", str(store), *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})


def test_no_broker_is_one_line_and_exit_5(tiny_bundle, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    process = _stream(address, tiny_bundle, tmp_path / "store", "--broker-timeout", "2")
    _out, err = process.communicate(timeout=120)
    assert process.returncode == 5, err[-2000:]
    assert err.strip().splitlines() == [f"mixlm: error: no Kafka broker answered on {address} within 2 s "
                                        "(KafkaTimeoutError)"]
    assert not (tmp_path / "store").exists()  # nothing to record: no job was started


def test_broker_gone_mid_stream_fails_the_job_and_says_why(tiny_bundle, tmp_path, kafka_broker_binary):
    store_path = tmp_path / "store"
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        messages, _expected = event_script(n_items=10, n_valid=30, n_malformed=0)
        produce(broker.bootstrap_servers, "items", messages)
        process = _stream(broker.bootstrap_servers, tiny_bundle, store_path, "--broker-timeout", "4")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.2)
            if (store_path / "lmdb" / "data.mdb").exists():
                jobs = EmbeddingStore.open(store_path).jobs.list()
                if jobs and jobs[0].counts.read >= 30:
                    break
        broker.stop()
        _out, err = process.communicate(timeout=120)
    assert process.returncode == 5, err[-3000:]
    assert "Traceback" not in err and "ECONNREFUSED" not in err.replace("(KafkaConnectionError: 111 ECONNREFUSED)", "")
    assert err.count("lost the Kafka broker") == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"mixlm: error: Kafka broker {broker.bootstrap_servers} unreachable for "), last
    manifest = EmbeddingStore.open(store_path).jobs.list()[0]
    assert manifest.status == "failed"
    assert any("unreachable" in error for error in manifest.errors), manifest.errors
    assert manifest.counts.read == 30 and manifest.counts.written + manifest.counts.deleted > 0
    assert_counts_add_up(manifest.counts)


def test_an_outage_the_broker_comes_back_from_is_recorded_once(caplog):
    from kafka.errors import KafkaTimeoutError

    from mixlm.pipelines.kafka_source import BrokerHealth
    from mixlm.pipelines.stop import STOP

    STOP.configure(max_seconds=None, max_records=None)
    health = BrokerHealth()
    health.configure("127.0.0.1:9", timeout_s=60)
    for _ in range(5):
        health.failed(KafkaTimeoutError("Failed to get offsets by timestamps in 3000 ms"))
    health.answered()
    health.answered()
    assert len(health.outages) == 1 and health.outages[0].endswith("then back"), health.outages
    assert health.fatal is None and not STOP.is_set()
    assert [r.getMessage() for r in caplog.records].count(
        "lost the Kafka broker at 127.0.0.1:9 (KafkaTimeoutError: Failed to get offsets by timestamps in 3000 ms); "
        "retrying for 60 s") == 1


def test_an_outage_past_the_timeout_stops_the_job():
    from kafka.errors import KafkaTimeoutError

    from mixlm.pipelines.kafka_source import BrokerHealth
    from mixlm.pipelines.stop import STOP

    STOP.configure(max_seconds=None, max_records=None)
    health = BrokerHealth()
    health.configure("127.0.0.1:9", timeout_s=0)
    health.failed(KafkaTimeoutError("down"))
    health.failed(KafkaTimeoutError("still down"))
    assert STOP.is_set() and health.fatal.startswith("Kafka broker 127.0.0.1:9 unreachable for ")
    assert health.fatal.endswith("the job stopped") and not health.outages
    STOP.configure(max_seconds=None, max_records=None)
