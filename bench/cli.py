"""``mixlm bench ...``: benchmarks that print a table and write JSON."""

from __future__ import annotations

from pathlib import Path

import click

from mixlm.options import bundle_option
from mixlm.output import columns_table, echo_err
from mixlm.ranker.defaults import DEFAULT_BATCH_SIZE, DEFAULT_BATCH_WAIT_MS, DEFAULT_TRUNCATE_TOKENS

RESULTS_DIR = Path("bench/results")
# Every default input is in the repository, so a clone reproduces a run; docs/benchmarks.md says
# which figures were measured on other corpora (passed with --corpus).
DEFAULT_CORPUS = Path("data/scifact/corpus.jsonl.gz")
MAIN_LABEL = "mixlm_amortized"


@click.group()
def bench() -> None:
    """Measure speed; figures go to bench/results/*.json."""


@bench.command("store")
@click.option("--items", type=click.IntRange(min=1_000), default=100_000, show_default=True,
              help="records written before the lookups")
@click.option("--dim", type=click.IntRange(min=1), default=1024, show_default=True)
@click.option("--lookup-size", type=click.IntRange(min=1), default=250, show_default=True)
@click.option("--lookups", type=click.IntRange(min=10), default=2_000, show_default=True)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              default=RESULTS_DIR / "store.json", show_default=True)
def store_command(items: int, dim: int, lookup_size: int, lookups: int, out: Path) -> None:
    """Batch-lookup latency (p50/p99) and write throughput on a real LMDB store."""
    from mixlm.bench.store_bench import run_store_bench, write_report

    report = run_store_bench(n_items=items, dim=dim, lookup_size=lookup_size, lookups=lookups,
                             log=echo_err)
    write_report(report, out)
    click.echo(columns_table(report["results"], ("dtype", "items", "dim", "write_records_per_s",
                                                  "lookup_size", "lookup_p50_ms", "lookup_p99_ms")))
    click.echo(f"wrote {out}")


@bench.command("backfill")
@bundle_option()
@click.option("--corpus", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=DEFAULT_CORPUS,
              show_default=True, help="BEIR corpus.jsonl[.gz]")
@click.option("--items", type=click.IntRange(min=10), default=2_000, show_default=True)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              default=RESULTS_DIR / "backfill.json", show_default=True)
def backfill_command(bundle_dir: str, corpus: Path, items: int, out: Path) -> None:
    """Backfill throughput against the raw encoder loop, same model and items, one run."""
    from mixlm.bench.pipeline_bench import run_backfill_bench

    result = run_backfill_bench(bundle_dir, corpus, n_items=items, log=echo_err)
    _report_one("backfill", result, bundle_dir, corpus, out)


@bench.command("dask-backfill")
@bundle_option()
@click.option("--corpus", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=DEFAULT_CORPUS, show_default=True, help="BEIR corpus.jsonl[.gz]")
@click.option("--items", type=click.IntRange(min=100), default=5_000, show_default=True)
@click.option("--workers", default="1,2", show_default=True, help="Dask cluster sizes (worker processes)")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              default=RESULTS_DIR / "dask_backfill.json", show_default=True)
def dask_backfill_command(bundle_dir: str, corpus: Path, items: int, workers: str, out: Path) -> None:
    """Snapshot-only backfill items/s: the local runner, then local Dask clusters of each size, one run."""
    from mixlm.bench.dask_bench import run_dask_backfill_bench
    from mixlm.bench.store_bench import machine, write_report

    report = run_dask_backfill_bench(bundle_dir, corpus, n_items=items, workers=[int(w) for w in workers.split(",")],
                                     log=echo_err)
    report.update({"benchmark": "dask-backfill", "machine": machine(), "bundle": bundle_dir, "corpus": str(corpus)})
    write_report(report, out)
    click.echo(columns_table(report["results"], list(report["results"][0])))
    click.echo("items/s over the local runner with the same torch threads: "
               + ", ".join(f"{k} {v}x" for k, v in report["over_local_same_threads"].items()))
    click.echo("items/s over the best local runner: "
               + ", ".join(f"{k} {v}x" for k, v in report["over_best_local"].items()))
    click.echo(f"wrote {out}")


def _with_plot(plot, report: dict, out: Path) -> str:
    """Draw ``report`` beside its JSON as a PNG where matplotlib is installed (the ``bench`` extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        echo_err("no plot: matplotlib is not installed (pip install 'mixlm[bench]')")
        return f"wrote {out}"
    plot(report, out.with_suffix(".png"))
    return f"wrote {out} and {out.with_suffix('.png')}"


def _report_one(name: str, result: dict, bundle_dir: str, corpus: Path, out: Path) -> None:
    """Write a single-result benchmark's JSON (with the machine) and print it as a table."""
    from mixlm.bench.store_bench import machine, write_report

    write_report({"benchmark": name, "machine": machine(), "bundle": bundle_dir, "corpus": str(corpus),
                  "results": [result]}, out)
    click.echo(columns_table([result], list(result)))
    click.echo(f"wrote {out}")


@bench.command("freshness")
@bundle_option()
@click.option("--corpus", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=DEFAULT_CORPUS,
              show_default=True, help="BEIR corpus.jsonl[.gz]")
@click.option("--rate", type=click.FloatRange(min=0.1), default=20.0, show_default=True, help="events per second")
@click.option("--seconds", type=click.FloatRange(min=1), default=20.0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              default=RESULTS_DIR / "freshness.json", show_default=True)
def freshness_command(bundle_dir: str, corpus: Path, rate: float, seconds: float, out: Path) -> None:
    """Streaming freshness: produce at a fixed rate, time until each item is readable in LMDB."""
    from mixlm.bench.pipeline_bench import run_freshness_bench

    result = run_freshness_bench(bundle_dir, corpus, rate_per_s=rate, seconds=seconds,
                                 log=echo_err)
    _report_one("freshness", result, bundle_dir, corpus, out)


@bench.command("chaos")
@bundle_option(required=False,
               help="model bundle (default: a fresh tiny random one: this checks bookkeeping, not relevance)")
@click.option("--events", type=click.IntRange(min=10), default=3_000, show_default=True)
@click.option("--items", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--poison", type=click.IntRange(min=0), default=30, show_default=True, help="poison pills among them")
@click.option("--kills", type=click.IntRange(min=1), default=10, show_default=True, help="SIGKILLs of the consumer")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="keep the store and logs here (default: a temporary folder, removed)")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              default=RESULTS_DIR / "chaos.json", show_default=True)
def chaos_command(bundle_dir, events, items, poison, kills, seed, workdir, out) -> None:
    """SIGKILL the streaming consumer at random moments, then compare every item with the expected state.

    Exits 1 when any item differs.
    """
    import tempfile

    from mixlm.bench.chaos import run_chaos
    from mixlm.bench.store_bench import machine, write_report
    from mixlm.encoders import init_tiny_bundle

    with tempfile.TemporaryDirectory(prefix="mixlm-chaos-bundle-") as scratch:
        if bundle_dir is None:
            bundle_dir = str(Path(scratch) / "tiny")
            init_tiny_bundle(bundle_dir, seed=seed)
        result = run_chaos(bundle_dir, n_events=events, n_items=items, n_poison=poison, kills=kills, seed=seed,
                           workdir=workdir, log=echo_err)
    write_report({"benchmark": "chaos", "machine": machine(), "results": [result]}, out)
    click.echo(columns_table([result], ("events", "items_checked", "mismatches", "kills", "killed_mid_stream",
                                        "events_replayed", "dead_lettered")))
    for line in result["first_mismatches"]:
        click.echo(f"mismatch: {line}")
    click.echo(f"wrote {out}")
    if result["mismatches"]:
        raise SystemExit(1)


@bench.command("stream-group")
@bundle_option(required=False, help="model bundle (default: a fresh tiny random one)")
@click.option("--corpus", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="BEIR corpus for the items' text (default: synthetic text)")
@click.option("--consumers", default="1,2", show_default=True, help="consumer counts, one run each")
@click.option("--rate", type=click.FloatRange(min=0.1), default=40.0, show_default=True, help="live events per second")
@click.option("--seconds", type=click.FloatRange(min=1), default=20.0, show_default=True, help="live phase length")
@click.option("--burst", type=click.IntRange(min=10), default=2_000, show_default=True, help="events sent at once")
@click.option("--partitions", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="keep the stores and logs here (default: a temporary folder, removed)")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              default=RESULTS_DIR / "stream_group.json", show_default=True)
def stream_group_command(bundle_dir, corpus, consumers, rate, seconds, burst, partitions, workdir, out) -> None:
    """Events/s and freshness p50/p99 of 1 and 2 'mixlm stream' consumers of one group, one run."""
    import tempfile

    from mixlm.bench.store_bench import machine, write_report
    from mixlm.bench.stream_group_bench import run_stream_group_bench
    from mixlm.encoders import init_tiny_bundle

    with tempfile.TemporaryDirectory(prefix="mixlm-stream-group-bundle-") as scratch:
        if bundle_dir is None:
            bundle_dir = str(Path(scratch) / "tiny")
            init_tiny_bundle(bundle_dir, seed=0)
        report = run_stream_group_bench(bundle_dir, corpus, consumers=[int(c) for c in consumers.split(",")],
                                        rate_per_s=rate, seconds=seconds, burst=burst, partitions=partitions,
                                        workdir=workdir, log=echo_err)
    report.update({"machine": machine(), "bundle": bundle_dir, "corpus": str(corpus) if corpus else None})
    write_report(report, out)
    click.echo(columns_table(report["results"], ("consumers", "partitions", "join_s", "live_rate_per_s",
                                                  "freshness_p50_ms", "freshness_p99_ms", "events_per_s",
                                                  "reads_per_event", "per_consumer_reads")))
    click.echo(f"wrote {out}")


@bench.command("rank")
@bundle_option()
@click.option("--corpus", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=DEFAULT_CORPUS,
              show_default=True, help="BEIR corpus of long items")
@click.option("--sizes", default="50,250", show_default=True, help="candidates per request")
@click.option("--queries-per-forward", "queries", default="1,4", show_default=True,
              help="requests served together per forward pass (the batching sweep)")
@click.option("--requests", type=click.IntRange(min=1), default=3, show_default=True, help="timed batches per point")
@click.option("--p99-budget-ms", type=click.FloatRange(min=1), default=5_000.0, show_default=True,
              help="best items/s is taken over points within this p99 (the paper: 500 ms on an H100)")
@click.option("--truncate-tokens", type=click.IntRange(min=1), default=DEFAULT_TRUNCATE_TOKENS, show_default=True)
@click.option("--full-text-max-n", type=click.IntRange(min=1), default=50, show_default=True,
              help="skip the full-text baseline above this N (it is slow on a CPU)")
@click.option("--baseline-max-q", type=click.IntRange(min=1), default=4, show_default=True,
              help="skip the truncated-text baseline above this many queries per forward")
@click.option("--dtypes", default="bfloat16,float32", show_default=True,
              help="compute dtypes of MixLM amortized; the first one also runs the baselines")
@click.option("--copy-backend/--no-copy-backend", default=True, show_default=True,
              help="also time the earlier amortized backend, which copies the query cache per batch")
@click.option("--legacy/--no-legacy", default=True, show_default=True,
              help="also time the code before bfloat16 and the one-token end (float32, cache copies, 5 positions)")
@click.option("--breakdown/--no-breakdown", default=True, show_default=True,
              help="time MixLM amortized's matmuls and attention alone at the largest N (where the time goes)")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads (default: torch's)")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              default=RESULTS_DIR / "rank.json", show_default=True)
def rank_command(bundle_dir, corpus, sizes, queries, requests, p99_budget_ms, truncate_tokens, full_text_max_n,
                 baseline_max_q, dtypes, copy_backend, legacy, breakdown, threads, out):
    """Full text vs truncated text vs MixLM naive vs amortized on one ranker; JSON + PNG plot."""
    import torch

    from mixlm.bench.rank_bench import plot, run_rank_bench
    from mixlm.bench.store_bench import machine, write_report

    if threads:
        torch.set_num_threads(threads)
    report = run_rank_bench(bundle_dir, corpus, sizes=tuple(int(s) for s in sizes.split(",")),
                            queries_per_forward=tuple(int(q) for q in queries.split(",")), requests=requests,
                            dtypes=tuple(dtypes.split(",")), copy_backend=copy_backend, legacy=legacy,
                            truncate_tokens=truncate_tokens, full_text_max_n=full_text_max_n,
                            baseline_max_q=baseline_max_q, p99_budget_ms=p99_budget_ms, with_breakdown=breakdown,
                            log=echo_err)
    report.update({"machine": machine(), "bundle": bundle_dir, "corpus": str(corpus)})
    write_report(report, out)
    written = _with_plot(plot, report, out)
    click.echo(columns_table(report["results"], ("label", "dtype", "backend", "positions_per_candidate", "candidates",
                                                  "queries_per_forward", "p50_ms", "p99_ms", "items_per_s")))
    click.echo(f"best items/s within p99 {p99_budget_ms:g} ms: {report['best_items_per_s_under_budget']}")
    click.echo("ratios of best items/s: " + ", ".join(f"{k} {v}x" for k, v in report["ratios"].items()))
    click.echo(f"square matmul GFLOP/s: {report['matmul_2048_gflops']}; FLOPs: {report['flops']}")
    click.echo(columns_table(report["analysis"], list(report["analysis"][0]) if report["analysis"] else ()))
    if report["breakdown"]:
        click.echo(columns_table(report["breakdown"], list(report["breakdown"][0])))
    for point in report["speedups"]:
        click.echo(f"N={point['candidates']} q={point['queries_per_forward']}: {MAIN_LABEL} {point['items_per_s']} "
                   "items/s, " + ", ".join(f"{v}x {k}" for k, v in point["over"].items()))
    click.echo(written)


@bench.command("serve")
@bundle_option()
@click.option("--corpus", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=DEFAULT_CORPUS,
              show_default=True, help="BEIR corpus: the first max(sizes) items are backfilled into a temporary "
                                      "store, titles of later ones are the queries")
@click.option("--sizes", default="50,250", show_default=True, help="candidates per request")
@click.option("--concurrency", default="1,4,16", show_default=True, help="concurrent callers")
@click.option("--requests", type=click.IntRange(min=1), default=32, show_default=True,
              help="requests per point (each side)")
@click.option("--max-seconds", type=click.FloatRange(min=1), default=120.0, show_default=True,
              help="a point sends no new request after this long")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=DEFAULT_BATCH_WAIT_MS, show_default=True,
              help="the server's (and the in-process batcher's) wait for company")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True,
              help="most requests per forward pass, both sides")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              default=RESULTS_DIR / "serve.json", show_default=True)
def serve_command(bundle_dir, corpus, sizes, concurrency, requests, max_seconds, batch_wait_ms, batch_size, out):
    """`mixlm serve` (subprocess, loopback) under load against in-process RankerClient; JSON + PNG plot."""
    from mixlm.bench.serve_bench import plot, run_serve_bench
    from mixlm.bench.store_bench import machine, write_report

    report = run_serve_bench(bundle_dir, corpus, sizes=tuple(int(s) for s in sizes.split(",")),
                             concurrency=tuple(int(c) for c in concurrency.split(",")), requests=requests,
                             max_seconds=max_seconds, batch_wait_ms=batch_wait_ms, batch_size=batch_size,
                             log=echo_err)
    report.update({"machine": machine(), "bundle": bundle_dir, "corpus": str(corpus)})
    write_report(report, out)
    written = _with_plot(plot, report, out)
    click.echo(columns_table(report["results"], ("side", "candidates", "concurrency", "requests", "errors", "p50_ms",
                                                  "p99_ms", "items_per_s", "mean_batch")))
    click.echo(columns_table(report["comparisons"], list(report["comparisons"][0])))
    goals = report["goals"]
    click.echo(f"goal: service adds at most 10% p50 latency at the lowest concurrency: "
               f"{'met' if goals['overhead_met'] else 'NOT met'}")
    click.echo(f"goal: service items/s at the highest concurrency beats the lowest: "
               f"{'met' if goals['throughput_grows_met'] else 'NOT met'}")
    click.echo(written)
