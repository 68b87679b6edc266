"""The benchmarks run end to end at toy sizes and write their reports (figures live in docs/)."""

import json

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
    methods = {r["method"] for r in report["results"]}
    assert methods == {"full_text", "truncated_text", "mixlm_naive", "mixlm_amortized"}
    assert set(report["ratios"]) == {"mixlm_amortized_over_full_text", "mixlm_amortized_over_truncated_text",
                                     "mixlm_amortized_over_mixlm_naive"}


def test_chaos_bench_kills_the_consumer_and_finds_every_item_right(tiny_bundle, kafka_broker_binary, tmp_path):
    result = run("chaos", "--bundle", tiny_bundle, "--events", 400, "--items", 60, "--poison", 9, "--kills", 3,
                 "--workdir", tmp_path / "work", "--out", tmp_path / "chaos.json")
    report = json.loads((tmp_path / "chaos.json").read_text())["results"][0]
    assert report["mismatches"] == 0, result.output
    assert report["items_checked"] == 60 and report["events"] == 409 and report["kills"] == 3
    assert report["jobs"] >= 4  # three killed runs and at least one that caught up
    assert report["dead_lettered"] >= 9  # every poison pill, once or more when replayed
