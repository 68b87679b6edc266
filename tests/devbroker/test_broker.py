"""The embedded broker against a real Tansu: start/stop, Kafka semantics the pipelines rely on, the CLI."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.structs import OffsetAndMetadata

from mixlm.devbroker.broker import (
    PID_FILE,
    STATE_FILE,
    BrokerError,
    EmbeddedBroker,
    daemon_status,
    free_port,
    port_open,
    stop_daemon,
    tansu_binary,
)
from mixlm.devbroker.cli import kafka
from tests.pipelines.streams import read_topic


def create_topic(bootstrap_servers: str, topic: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()


def test_produce_consume_round_trip_with_keys(kafka_broker):
    bs = kafka_broker.bootstrap_servers
    create_topic(bs, "rt", 3)
    producer = KafkaProducer(bootstrap_servers=bs, linger_ms=0, batch_size=1, acks="all")
    sent = [(f"item-{i % 7}".encode(), f"value-{i}".encode()) for i in range(40)]
    for key, value in sent:
        producer.send("rt", key=key, value=value)
    producer.flush()
    producer.close()

    records, _ = read_topic(bs, "rt", len(sent))
    assert sorted((r.key, r.value) for r in records) == sorted(sent)
    partition_of = {}
    for record in records:  # one key, one partition, in send order
        assert partition_of.setdefault(record.key, record.partition) == record.partition
    for key in partition_of:
        values = [r.value for r in sorted(records, key=lambda r: r.offset) if r.key == key]
        assert values == [v for k, v in sent if k == key]
    assert len(set(partition_of.values())) > 1
    # one record per batch: Tansu's end offsets are exact
    consumer = KafkaConsumer(bootstrap_servers=bs)
    ends = consumer.end_offsets([TopicPartition("rt", p) for p in range(3)])
    consumer.close()
    assert sum(ends.values()) == len(sent)


def test_end_offsets_under_count_batched_produce(kafka_broker):
    """Tansu's quirk: the reported end offset is the last batch's base offset + 1. Records are all there."""
    bs = kafka_broker.bootstrap_servers
    create_topic(bs, "batched", 1)
    producer = KafkaProducer(bootstrap_servers=bs, linger_ms=50, acks="all")
    futures = [producer.send("batched", key=b"k", value=b"%d" % i) for i in range(20)]
    producer.flush()
    producer.close()
    assert [f.get().offset for f in futures] == list(range(20))
    tp = TopicPartition("batched", 0)
    consumer = KafkaConsumer(bootstrap_servers=bs)
    end = consumer.end_offsets([tp])[tp]
    consumer.close()
    assert 1 <= end <= 20  # 20 on Apache Kafka; smaller on Tansu when the last batch held several records
    assert [r.offset for r in read_topic(bs, "batched", 20)[0]] == list(range(20))


def test_manual_assignment_commits_survive_consumer_restart(kafka_broker):
    """The streaming source's pattern: assign + seek + position + commit(OffsetAndMetadata) under a group."""
    bs = kafka_broker.bootstrap_servers
    create_topic(bs, "manual", 2)
    producer = KafkaProducer(bootstrap_servers=bs, linger_ms=0, batch_size=1)
    for i in range(20):
        producer.send("manual", value=b"%d" % i, partition=i % 2)
    producer.flush()
    producer.close()
    tps = [TopicPartition("manual", 0), TopicPartition("manual", 1)]

    def consumer_for(tp):
        consumer = KafkaConsumer(bootstrap_servers=bs, group_id="g-manual", enable_auto_commit=False,
                                 auto_offset_reset="earliest")
        consumer.assign([tp])
        return consumer

    started = time.monotonic()
    first = [consumer_for(tp) for tp in tps]  # one consumer per partition, no group join
    assert [c.committed(tp) for c, tp in zip(first, tps, strict=True)] == [None, None]
    assert [c.position(tp) for c, tp in zip(first, tps, strict=True)] == [0, 0]
    first[0].seek(tps[0], 4)
    assert first[0].position(tps[0]) == 4
    records = first[0].poll(3000)[tps[0]]
    assert records[0].offset == 4
    first[0].commit({tps[0]: OffsetAndMetadata(7, "", -1)})
    first[1].commit({tps[1]: OffsetAndMetadata(3, "", -1)})
    first[1].commit({tps[1]: OffsetAndMetadata(2, "", -1)})  # commits may move backwards
    assert first[0].committed(tps[0]) == 7
    for consumer in first:
        consumer.close()
    assert time.monotonic() - started < 5  # manual assignment never waits for a group join

    again = KafkaConsumer(bootstrap_servers=bs, group_id="g-manual", enable_auto_commit=False)
    again.assign(tps)
    assert [again.committed(tp) for tp in tps] == [7, 2]
    assert [again.position(tp) for tp in tps] == [7, 2]
    assert [r.offset for r in again.poll(3000).get(tps[0], [])][:1] == [7]
    again.close()
    other = KafkaConsumer(bootstrap_servers=bs, group_id="g-other", enable_auto_commit=False)
    assert other.committed(tps[0]) is None
    other.close()


def test_group_commits_survive_a_restarted_subscriber(kafka_broker):
    bs = kafka_broker.bootstrap_servers
    create_topic(bs, "subscribed", 2)
    producer = KafkaProducer(bootstrap_servers=bs, linger_ms=0, batch_size=1)
    for i in range(10):
        producer.send("subscribed", key=b"k%d" % i, value=b"%d" % i)
    producer.flush()
    producer.close()
    options = dict(bootstrap_servers=bs, group_id="g-sub", enable_auto_commit=False, auto_offset_reset="earliest",
                   session_timeout_ms=6000, max_poll_interval_ms=6000, heartbeat_interval_ms=2000)

    consumer = KafkaConsumer("subscribed", **options)
    started = time.monotonic()
    seen = 0
    while seen < 10 and time.monotonic() - started < 20:
        seen += sum(len(batch) for batch in consumer.poll(200).values())
    assert seen == 10
    assert time.monotonic() - started < 15  # ~3 s on Tansu with these timeouts
    consumer.commit()
    committed = {tp.partition: consumer.committed(tp) for tp in consumer.assignment()}
    consumer.close()
    assert sum(committed.values()) == 10

    restarted = KafkaConsumer("subscribed", **options)
    deadline = time.monotonic() + 20
    while not restarted.assignment() and time.monotonic() < deadline:
        assert not restarted.poll(200)  # nothing re-read: it resumes from the commits
    assert {tp.partition: restarted.committed(tp) for tp in restarted.assignment()} == committed
    restarted.close()


def test_context_manager_stops_the_process(tmp_path):
    with EmbeddedBroker(log_path=tmp_path / "b.log") as broker:
        process = broker.process
        assert broker.running and port_open("127.0.0.1", broker.port)
        assert broker.bootstrap_servers == f"127.0.0.1:{broker.port}"
    assert process.poll() is not None and not broker.running
    assert not port_open("127.0.0.1", broker.port)
    assert "listening on: tcp://127.0.0.1" in (tmp_path / "b.log").read_text()
    broker.stop()  # idempotent


def test_memory_storage_starts_empty_after_a_restart(tmp_path):
    port = free_port()
    with EmbeddedBroker(port) as broker:
        create_topic(broker.bootstrap_servers, "gone", 1)
    with EmbeddedBroker(port) as broker:
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
        assert "gone" not in admin.list_topics()
        admin.close()


def test_busy_port_is_a_one_line_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(BrokerError, match="already in use") as raised:
            EmbeddedBroker(port, ready_timeout=10).start()
    assert "\n" not in str(raised.value)


def test_missing_binary_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CALF_TANSU_BIN", str(tmp_path / "no-tansu"))
    with pytest.raises(BrokerError, match="not an executable file"):
        tansu_binary()
    result = CliRunner().invoke(kafka, ["up", "--state-dir", str(tmp_path / "state")])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "error: CALF_TANSU_BIN=" in result.stderr


def test_cli_up_status_down(kafka_state_dir):
    runner = CliRunner()
    state = ["--state-dir", str(kafka_state_dir)]

    down = runner.invoke(kafka, ["status", "-o", "json", *state])
    assert down.exit_code == 0 and json.loads(down.stdout)["running"] is False

    up = runner.invoke(kafka, ["up", *state])
    assert up.exit_code == 0, up.output
    address = up.stdout.strip()
    host, port = address.split(":")
    assert host == "127.0.0.1" and port_open(host, int(port))
    assert (kafka_state_dir / PID_FILE).read_text().strip().isdigit()
    assert json.loads((kafka_state_dir / STATE_FILE).read_text())["port"] == int(port)

    again = runner.invoke(kafka, ["up", *state])
    assert again.exit_code == 0 and again.stdout.strip() == address
    assert "already running" in again.stderr

    status = runner.invoke(kafka, ["status", "-o", "json", *state])
    data = json.loads(status.stdout)
    assert data["running"] is True and data["listening"] is True and data["bootstrap_servers"] == address
    assert data["state_dir"] == str(kafka_state_dir)
    table = runner.invoke(kafka, ["status", *state])
    assert "running" in table.stdout and address in table.stdout

    admin = KafkaAdminClient(bootstrap_servers=address)
    admin.create_topics([NewTopic("cli", 1, 1)])
    assert "cli" in admin.list_topics()
    admin.close()

    pid = data["pid"]
    stopped = runner.invoke(kafka, ["down", *state])
    assert stopped.exit_code == 0 and "stopped" in stopped.stdout
    assert daemon_status(kafka_state_dir) is None and not port_open(host, int(port))
    assert not (kafka_state_dir / PID_FILE).exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    twice = runner.invoke(kafka, ["down", *state])
    assert twice.exit_code == 0 and "not running" in twice.stdout


def test_stale_pid_file_reads_as_not_running(tmp_path):
    folder = tmp_path / "stale"
    folder.mkdir()
    # a pid that exited: our own short-lived child
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (folder / STATE_FILE).write_text(json.dumps({"pid": dead.pid, "port": 1, "log": "x"}))
    (folder / PID_FILE).write_text(f"{dead.pid}\n")
    result = CliRunner().invoke(kafka, ["status", "-o", "json", "--state-dir", str(folder)])
    assert result.exit_code == 0 and json.loads(result.stdout)["running"] is False
    assert not (folder / STATE_FILE).exists() and not (folder / PID_FILE).exists()
    # a pid that lives but is not a broker (this test process) is stale too
    (folder / STATE_FILE).write_text(json.dumps({"pid": os.getpid(), "port": 1, "log": "x"}))
    assert daemon_status(folder) is None


def test_down_kills_a_broker_that_ignores_sigterm(tmp_path):
    folder = tmp_path / "stubborn"
    folder.mkdir()
    port = free_port()
    ignores_term = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    process = subprocess.Popen([sys.executable, "-c", ignores_term, f"tcp://127.0.0.1:{port}"])
    try:
        (folder / STATE_FILE).write_text(json.dumps({"pid": process.pid, "port": port, "log": "x"}))
        time.sleep(0.3)  # let it install the handler
        assert daemon_status(folder).pid == process.pid
        started = time.monotonic()
        assert stop_daemon(folder, timeout=0.5).pid == process.pid
        assert 0.5 <= time.monotonic() - started < 3  # SIGTERM ignored for 0.5 s, then SIGKILL
        with pytest.raises(ProcessLookupError):  # (stop_daemon reaped our child, so no returncode to read)
            os.kill(process.pid, 0)
        assert daemon_status(folder) is None
    finally:
        process.kill()
        process.wait()


def test_help_on_every_command():
    runner = CliRunner()
    for args in (["--help"], ["up", "--help"], ["down", "--help"], ["status", "--help"]):
        result = runner.invoke(kafka, args)
        assert result.exit_code == 0 and "Usage:" in result.stdout
