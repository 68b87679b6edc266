"""The benchmarks run end to end at toy sizes and write their reports (figures live in docs/)."""

import json

import click
from click.testing import CliRunner

from mixlm.cli import main


def run(*args):
    result = CliRunner().invoke(main, ["bench", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def test_store_bench_writes_json(tmp_path):
    run("store", "--items", 1000, "--dim", 16, "--lookups", 10, "--out", tmp_path / "store.json")
    report = json.loads((tmp_path / "store.json").read_text())
    assert {r["dtype"] for r in report["results"]} == {"float16", "float32"}
    assert all(r["lookup_p50_ms"] > 0 and r["write_records_per_s"] > 0 for r in report["results"])


def test_backfill_and_rank_benches(tiny_bundle, tmp_path):
    corpus = "data/adi/corpus.jsonl.gz"
    run("backfill", "--bundle", tiny_bundle, "--corpus", corpus, "--items", 20, "--out", tmp_path / "bf.json")
    backfill = json.loads((tmp_path / "bf.json").read_text())["results"][0]
    assert backfill["items"] == 20 and backfill["backfill_over_raw"] > 0
    run("rank", "--bundle", tiny_bundle, "--corpus", corpus, "--sizes", "4,8", "--queries-per-forward", "1,2",
        "--requests", 1, "--out", tmp_path / "rank.json")
    report = json.loads((tmp_path / "rank.json").read_text())
    assert (tmp_path / "rank.png").stat().st_size > 0
    labels = {r["label"] for r in report["results"]}
    assert labels == {"full_text", "truncated_text", "mixlm_naive", "mixlm_amortized", "mixlm_amortized_copy",
                      "mixlm_amortized@float32", "mixlm_amortized_copy@float32", "mixlm_legacy"}
    assert {r["dtype"] for r in report["results"] if r["label"] == "mixlm_amortized"} == {"bfloat16"}
    legacy = [r for r in report["results"] if r["label"] == "mixlm_legacy"]
    assert {(r["dtype"], r["backend"]) for r in legacy} == {("float32", "amortized-copy")}
    amortized = [r for r in report["results"] if r["label"] == "mixlm_amortized"]
    assert legacy[0]["positions_per_candidate"] >= amortized[0]["positions_per_candidate"]  # the old end
    assert set(report["ratios"]) == {"mixlm_amortized_over_full_text", "mixlm_amortized_over_truncated_text",
                                     "mixlm_amortized_over_mixlm_naive", "mixlm_amortized_over_mixlm_legacy"}
    assert [(p["candidates"], p["queries_per_forward"]) for p in report["speedups"]] == [(4, 1), (4, 2), (8, 1), (8, 2)]
    assert set(report["speedups"][0]["over"]) == {"mixlm_naive", "mixlm_amortized_copy", "mixlm_amortized@float32",
                                                  "mixlm_amortized_copy@float32", "mixlm_legacy"}
    assert all(0 < a["fraction_of_matmul"] and a["mflop_per_item"] > 0 for a in report["analysis"])
    assert report["matmul_2048_gflops"]["bfloat16"] > 0 and report["flops"]["mflop_per_candidate"] > 0
    assert [(b["candidates"], b["queries_per_forward"]) for b in report["breakdown"]] == [(8, 1), (8, 2)]
    assert all(b["request_ms"] > 0 and 0 < b["candidate_matmuls_share"] for b in report["breakdown"])


def test_serve_bench_against_in_process(tiny_bundle, tmp_path):
    run("serve", "--bundle", tiny_bundle, "--corpus", "data/adi/corpus.jsonl.gz", "--sizes", "4,8",
        "--concurrency", "1,2", "--requests", 4, "--max-seconds", 30, "--out", tmp_path / "serve.json")
    report = json.loads((tmp_path / "serve.json").read_text())
    assert (tmp_path / "serve.png").stat().st_size > 0
    points = {(r["side"], r["candidates"], r["concurrency"]) for r in report["results"]}
    assert points == {(side, n, c) for side in ("service", "in_process") for n in (4, 8) for c in (1, 2)}
    for row in report["results"]:
        assert row["requests"] == 4 and row["errors"] == 0, row
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["items_per_s"] > 0 and row["mean_batch"] >= 1
    assert [c["candidates"] for c in report["comparisons"]] == [4, 8]
    for comparison in report["comparisons"]:
        assert comparison["low_concurrency"] == 1 and comparison["high_concurrency"] == 2
        assert all(comparison[key] > 0 for key in ("service_over_in_process_p50", "service_over_in_process_p99",
                                                   "service_items_per_s_high_over_low",
                                                   "in_process_items_per_s_high_over_low"))
    assert set(report["goals"]) == {"max_service_over_in_process_p50", "overhead_met", "throughput_grows_met"}
    assert report["max_score_diff_service_vs_in_process"] < 1e-3
    assert report["machine"]["cpus"] > 0


def test_chaos_bench_kills_the_consumer_and_finds_every_item_right(tiny_bundle, kafka_broker_binary, tmp_path):
    result = run("chaos", "--bundle", tiny_bundle, "--events", 400, "--items", 60, "--poison", 9, "--kills", 3,
                 "--workdir", tmp_path / "work", "--out", tmp_path / "chaos.json")
    report = json.loads((tmp_path / "chaos.json").read_text())["results"][0]
    assert report["mismatches"] == 0, result.output
    assert report["items_checked"] == 60 and report["events"] == 409 and report["kills"] == 3
    assert report["jobs"] >= 4  # three killed runs and at least one that caught up
    assert report["dead_lettered"] >= 9  # every poison pill, once or more when replayed


def test_the_plots_need_matplotlib_only_where_it_is_installed(tmp_path, monkeypatch, capsys):
    import sys

    from mixlm.bench.cli import _with_plot

    drawn = []
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as without the bench extra: import fails
    assert _with_plot(lambda report, png: drawn.append(png), {}, tmp_path / "rank.json") == \
        f"wrote {tmp_path / 'rank.json'}"
    assert not drawn and "pip install 'mixlm[bench]'" in capsys.readouterr().err


def test_every_benchmark_reads_its_default_input_from_the_repository():
    """A clone reproduces a benchmark with its defaults: no default input lies outside the repository."""
    from pathlib import Path

    from mixlm.bench.cli import bench

    repository = Path(__file__).resolve().parents[2]
    inputs = [(name, param) for name, command in bench.commands.items() for param in command.params
              if isinstance(param.type, click.Path) and param.name not in ("out", "workdir", "bundle_dir")]
    assert {name for name, _ in inputs} >= {"backfill", "dask-backfill", "freshness", "rank", "serve"}
    for name, param in inputs:
        if param.default is None:  # the benchmark makes up its own input (stream-group's synthetic text)
            assert name == "stream-group", (name, param.name)
            continue
        default = (repository / param.default).resolve()
        assert default.is_relative_to(repository) and default.is_file(), (name, param.name, param.default)
