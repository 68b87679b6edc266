"""``mixlm bench stream-group`` end to end at a toy size (figures live in docs/benchmarks.md)."""

import json

from click.testing import CliRunner

from mixlm.cli import main


def test_stream_group_bench_splits_the_work_and_writes_its_report(tiny_bundle, kafka_broker_binary, tmp_path):
    out = tmp_path / "stream_group.json"
    result = CliRunner().invoke(main, ["bench", "stream-group", "--bundle", str(tiny_bundle), "--consumers", "1,2",
                                       "--rate", "10", "--seconds", "2", "--burst", "40", "--partitions", "2",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    one, two = report["results"]
    assert (one["consumers"], two["consumers"]) == (1, 2)
    for row in (one, two):
        assert row["live_readable"] == row["live_events"] == 20 and row["burst_readable"] == 40
        assert row["reads_per_event"] == 1.0 and row["encoded"] == 62  # each event read and encoded once
        assert row["freshness_p99_ms"] > 0 and row["events_per_s"] > 0
    assert len(two["per_consumer_reads"]) == 2 and all(two["per_consumer_reads"])  # both consumers did work
