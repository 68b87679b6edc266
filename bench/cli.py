"""``mixlm bench ...``: benchmarks that print a table and write JSON."""

from __future__ import annotations

from pathlib import Path

import click

from mixlm.output import columns_table

RESULTS_DIR = Path("bench/results")


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
                             log=lambda line: click.echo(line, err=True))
    write_report(report, out)
    click.echo(columns_table(report["results"], ("dtype", "items", "dim", "write_records_per_s",
                                                  "lookup_size", "lookup_p50_ms", "lookup_p99_ms")))
    click.echo(f"wrote {out}")
