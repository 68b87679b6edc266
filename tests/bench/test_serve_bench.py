"""``mixlm bench serve`` end to end at a toy size (the figures live in docs/benchmarks.md)."""

import json

from click.testing import CliRunner

from mixlm.cli import main


def test_serve_bench_measures_both_sides_at_every_point(tiny_bundle, tmp_path):
    out = tmp_path / "serve.json"
    result = CliRunner().invoke(main, ["bench", "serve", "--bundle", str(tiny_bundle), "--corpus",
                                       "data/scifact/corpus.jsonl.gz", "--sizes", "5,12", "--concurrency", "1,3",
                                       "--requests", "6", "--max-seconds", "60", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    points = {(r["side"], r["candidates"], r["concurrency"]) for r in report["results"]}
    assert points == {(side, n, c) for side in ("service", "in_process") for n in (5, 12) for c in (1, 3)}
    for row in report["results"]:
        assert row["errors"] == 0 and row["requests"] == 6
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["items_per_s"] > 0
    # the service scores exactly what the in-process client scores
    assert report["max_score_diff_service_vs_in_process"] < 1e-4
    assert [c["candidates"] for c in report["comparisons"]] == [5, 12]
    assert set(report["goals"]) == {"max_service_over_in_process_p50", "overhead_met", "throughput_grows_met"}
    assert out.with_suffix(".png").stat().st_size > 0
