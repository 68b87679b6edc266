"""``mixlm produce`` and its library against a real broker: validation, keys, counts, --raw."""

import json

import pytest
from click.testing import CliRunner
from kafka import TopicPartition
from kafka.admin import KafkaAdminClient

from mixlm.pipelines.produce import MAX_WARNINGS, ensure_topic, produce, produce_file, produce_lines
from mixlm.schemas import ItemEvent
from tests.pipelines.streams import read_topic

VALID = [
    ItemEvent("a1", "upsert", 1, "Alpha", "first item"),
    ItemEvent("b2", "upsert", 3, "", "second item", {"lang": "en"}, "2026-11-22T10:30:00Z"),
    ItemEvent("a1", "upsert", 2, "Alpha", "first item, edited"),
    ItemEvent("c3", "delete", 5),
]
MALFORMED = [
    b"{not json",
    b'{"item_id": "bad-version", "op": "upsert", "version": "12a", "text": "t"}',
]


def write_jsonl(path, lines):
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def mixed_lines():
    """Line numbers: 1 a1, 2 bad JSON, 3 b2, 4 blank, 5 a1 v2, 6 bad version, 7 c3 delete."""
    valid = [event.to_json().encode() for event in VALID]
    return [valid[0], MALFORMED[0], valid[1], b"", valid[2], MALFORMED[1], valid[3]]


def test_produce_file_skips_malformed_lines_and_keys_by_item_id(kafka_broker, tmp_path):
    bs = kafka_broker.bootstrap_servers
    assert ensure_topic(bs, "items", 3) is True
    assert ensure_topic(bs, "items", 3) is False  # exists: tolerated
    warnings = []
    summary = produce_file(bs, "items", write_jsonl(tmp_path / "items.jsonl", mixed_lines()), warn=warnings.append)
    assert (summary.sent, summary.skipped, summary.invalid_sent, summary.blank) == (4, 2, 0, 1)
    assert summary.invalid_lines == [2, 6]
    assert [w.split(":")[0] for w in warnings] == ["line 2", "line 6"]
    assert "version" in warnings[1]
    assert sum(summary.partitions.values()) == 4

    records, ends = read_topic(bs, "items", 4)
    assert sorted((r.key, r.value) for r in records) == sorted(
        (e.item_id.encode(), e.to_json().encode()) for e in VALID)
    assert sum(ends.values()) == 4  # one record per batch: end offsets are exact on Tansu too
    a1 = [json.loads(r.value)["version"] for r in sorted(records, key=lambda r: r.offset) if r.key == b"a1"]
    assert a1 == [1, 2]  # same key, same partition, in file order


def test_raw_sends_malformed_lines_as_they_are(kafka_broker):
    bs = kafka_broker.bootstrap_servers
    warnings = []
    ensure_topic(bs, "raw", 1)
    summary = produce_lines(bs, "raw", mixed_lines(), raw=True, warn=warnings.append)
    assert (summary.sent, summary.skipped, summary.invalid_sent) == (6, 0, 2)
    assert summary.invalid_lines == [2, 6] and len(warnings) == 2

    records, ends = read_topic(bs, "raw", 6)
    assert [r.value for r in sorted(records, key=lambda r: r.offset)] == [line for line in mixed_lines() if line]
    keys = {r.value: r.key for r in records}
    assert keys[MALFORMED[0]] is None  # nothing to key by
    assert keys[MALFORMED[1]] == b"bad-version"  # a readable item_id still keys the record
    assert ends[TopicPartition("raw", 0)] == 6


def test_cli_counts_and_creates_the_topic(kafka_broker, tmp_path):
    bs = kafka_broker.bootstrap_servers
    path = write_jsonl(tmp_path / "items.jsonl", mixed_lines())
    result = CliRunner().invoke(produce, ["--bootstrap-servers", bs, "--topic", "cli", "--input", str(path),
                                          "--partitions", "3"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith("sent 4 events to cli")
    assert result.stdout.strip().endswith("skipped 2 invalid lines")
    assert "created topic cli (3 partitions)" in result.stderr
    assert "line 2: skipped" in result.stderr and "line 6: skipped" in result.stderr
    admin = KafkaAdminClient(bootstrap_servers=bs)
    assert len(admin.describe_topics(["cli"])[0]["partitions"]) == 3
    admin.close()

    raw = CliRunner().invoke(produce, ["--bootstrap-servers", bs, "--topic", "cli", "--input", str(path), "--raw",
                                       "--no-create-topic", "-o", "json"])
    assert raw.exit_code == 0, raw.output
    data = json.loads(raw.stdout)
    assert (data["sent"], data["skipped"], data["invalid_sent"], data["invalid_lines"]) == (6, 0, 2, [2, 6])
    assert "created topic" not in raw.stderr
    records, _ = read_topic(bs, "cli", 10)
    assert len(records) == 10


def test_many_invalid_lines_are_summarised(kafka_broker):
    warnings = []
    lines = [b"nope %d" % i for i in range(MAX_WARNINGS + 5)]
    summary = produce_lines(kafka_broker.bootstrap_servers, "many", lines, warn=warnings.append)
    assert summary.skipped == MAX_WARNINGS + 5 and summary.sent == 0
    assert len(warnings) == MAX_WARNINGS + 1 and warnings[-1] == "... and 5 more invalid lines"


def test_cli_errors_are_one_line(tmp_path):
    path = write_jsonl(tmp_path / "items.jsonl", mixed_lines())
    runner = CliRunner()
    missing = runner.invoke(produce, ["--bootstrap-servers", "127.0.0.1:1", "--topic", "t", "--input",
                                      str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2 and missing.stderr.count("\n") == 1 and "does not exist" in missing.stderr
    from mixlm.devbroker.broker import free_port

    unreachable = runner.invoke(produce, ["--bootstrap-servers", f"127.0.0.1:{free_port()}", "--topic", "t",
                                          "--input", str(path), "--timeout", "1"])
    assert unreachable.exit_code == 5  # the environment failed, as for `mixlm stream`
    assert unreachable.stderr.count("\n") == 1 and "no Kafka broker answered" in unreachable.stderr
    assert runner.invoke(produce, ["--help"]).exit_code == 0


@pytest.mark.parametrize(("command", "option", "topic"), [("produce", "--topic", "bad topic"),
                                                          ("produce", "--topic", "x" * 250),
                                                          ("stream", "--topic", "items/2026"),
                                                          ("stream", "--dead-letter-topic", "..")])
def test_a_topic_name_kafka_refuses_is_a_usage_error_before_any_broker_is_asked(tmp_path, command, option, topic):
    from mixlm.cli import main
    from mixlm.schemas.errors import EXIT_USAGE

    path = write_jsonl(tmp_path / "items.jsonl", mixed_lines())
    common = ["--bootstrap-servers", "127.0.0.1:1"]  # nothing listens: a broker asked would time out
    args = {"produce": ["--input", str(path)],
            "stream": ["--group", "g", "--bundle", str(tmp_path), "--store", str(tmp_path / "s")]}[command]
    if option != "--topic":
        args += ["--topic", "items"]
    result = CliRunner().invoke(main, [command, *common, *args, option, topic])
    assert result.exit_code == EXIT_USAGE, result.output
    assert f"{topic!r} is not a Kafka topic name" in result.stderr
