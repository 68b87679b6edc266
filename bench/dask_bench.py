"""The snapshot-only backfill on the local runner and on Dask clusters of 1, 2, ... worker processes, one run."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from mixlm.bench.pipeline_bench import corpus_events

WARMUP_ITEMS = 512  # 8 blocks of SPLIT_BLOCK lines: every split of up to 4 task slots warms up


def run_dask_backfill_bench(bundle_dir: str, corpus: Path, *, n_items: int = 5_000, workers: Sequence[int] = (1, 2),
                            log: Callable[[str], None] = print) -> dict:
    """Items/s of the same ``--snapshot-only`` backfill on the local runner and on each Dask cluster size.

    Each Dask worker process runs one task at a time with ``cores // workers`` torch threads;
    the local runner is measured with each of those thread counts too (just before the Dask
    row that uses it), so that every Dask row has a local row with the same threads per
    process. Every job is preceded by a small warm-up job, so that the timed job finds the
    model loaded (in this process, or in every Dask worker) and measures the pipeline alone. A
    cluster's start-up is timed on its own.
    """
    from mixlm.pipelines.backfill import run_backfill
    from mixlm.pipelines.dask_runner import dask_cluster

    events = corpus_events(corpus, n_items)
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="mixlm-dask-bench-") as tmp:
        root = Path(tmp)
        catalog, warmup = root / "items.jsonl", root / "warmup.jsonl"
        catalog.write_text("".join(e.to_json() + "\n" for e in events))
        warmup.write_text("".join(e.to_json() + "\n" for e in events[:WARMUP_ITEMS]))
        job = 0

        def timed(**dask) -> float:
            nonlocal job
            job += 1
            run_backfill(str(warmup), bundle_dir, str(root / "driver"), snapshot_only=str(root / f"warm-{job}"),
                         log=lambda _line: None, **dask)
            began = time.perf_counter()
            manifest = run_backfill(str(catalog), bundle_dir, str(root / "driver"),
                                    snapshot_only=str(root / f"snap-{job}"), log=lambda _line: None, **dask)
            seconds = time.perf_counter() - began
            assert manifest.counts.written == len(events), manifest.counts
            return seconds

        import torch

        default_threads = torch.get_num_threads()
        local: dict[int, dict] = {}
        try:
            for n in workers:
                threads = max(1, cores // n)
                if threads not in local:  # the local runner with the torch threads of this Dask row's workers
                    torch.set_num_threads(threads)
                    local[threads] = _row("local (FnApiRunner)", 0, threads, len(events), timed(), None)
                    rows.append(local[threads])
                    log(f"  local runner, {threads} torch threads: {rows[-1]['items_per_s']:,.1f} items/s")
                began = time.perf_counter()
                with dask_cluster(workers=n, torch_threads=threads) as (address, _slots, _threads):
                    start_s = time.perf_counter() - began
                    seconds = timed(beam_args=["--runner=dask"], dask_address=address, torch_threads=threads)
                rows.append(_row("dask", n, threads, len(events), seconds, start_s))
                log(f"  dask, {n} worker(s) x {threads} torch threads: {rows[-1]['items_per_s']:,.1f} items/s "
                    f"(cluster start {start_s:.1f} s)")
        finally:
            torch.set_num_threads(default_threads)
    best_local = max(row["items_per_s"] for row in local.values())
    return {"results": rows,
            "over_local_same_threads": {f"dask_{r['workers']}": round(r["items_per_s"] /
                                                                      local[r["torch_threads"]]["items_per_s"], 3)
                                        for r in rows if r["workers"]},
            "over_best_local": {f"dask_{r['workers']}": round(r["items_per_s"] / best_local, 3)
                                for r in rows if r["workers"]}}


def _row(runner: str, workers: int, threads: int, items: int, seconds: float, start_s: float | None) -> dict:
    return {"runner": runner, "workers": workers, "torch_threads": threads, "items": items,
            "seconds": round(seconds, 2), "items_per_s": round(items / seconds, 1),
            "cluster_start_s": None if start_s is None else round(start_s, 1)}
