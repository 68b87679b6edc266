"""Store benchmark: batch-lookup latency and write throughput on a real LMDB store."""

from __future__ import annotations

import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mixlm.schemas import EmbeddingRecord
from mixlm.store import EmbeddingStore

WRITE_BATCH = 1_000


def _records(n_items: int, start: int, count: int, dim: int, dtype: str, rng: np.random.Generator):
    vectors = rng.standard_normal((count, 1, dim)).astype(dtype)
    return [
        EmbeddingRecord(f"item-{i:08d}", 1, f"bench-{dtype}", "0" * 64, vectors[i - start], job_id="bench")
        for i in range(start, min(start + count, n_items))
    ]


def run_store_bench(*, n_items: int = 100_000, dim: int = 1024, lookup_size: int = 250,
                    lookups: int = 2_000, dtypes: tuple[str, ...] = ("float16", "float32"),
                    workdir: Path | None = None, log: Callable[[str], None] = print) -> dict:
    rng = np.random.default_rng(0)
    results = []
    with tempfile.TemporaryDirectory(dir=workdir, prefix="mixlm-store-bench-") as tmp:
        for dtype in dtypes:
            store = EmbeddingStore.open(Path(tmp) / dtype, create=True)
            encoder_id = f"bench-{dtype}"
            write_seconds = 0.0
            for start in range(0, n_items, WRITE_BATCH):
                batch = _records(n_items, start, WRITE_BATCH, dim, dtype, rng)
                began = time.perf_counter()
                store.put_many(batch)
                write_seconds += time.perf_counter() - began
                if (start // WRITE_BATCH) % 20 == 0:
                    log(f"  {dtype}: wrote {start + len(batch):,}/{n_items:,}")
            ids = [f"item-{i:08d}" for i in range(n_items)]
            latencies = []
            for round_ in range(lookups + 50):
                request = [ids[i] for i in rng.integers(0, n_items, lookup_size)]
                began = time.perf_counter()
                found = store.get_many(encoder_id, request)
                elapsed = time.perf_counter() - began
                if round_ >= 50:  # warm-up rounds are not counted
                    latencies.append(elapsed)
                assert found.vectors.shape == (lookup_size, 1, dim)
            ms = np.array(latencies) * 1e3
            row = {
                "dtype": dtype,
                "items": n_items,
                "dim": dim,
                "n_tokens": 1,
                "write_records_per_s": round(n_items / write_seconds),
                "lookup_size": lookup_size,
                "lookup_p50_ms": round(float(np.percentile(ms, 50)), 4),
                "lookup_p99_ms": round(float(np.percentile(ms, 99)), 4),
                "lookup_items_per_s": round(lookup_size * len(ms) / (ms.sum() / 1e3)),
                "store_bytes": store.stats()["used_bytes"],
            }
            results.append(row)
            log(f"  {dtype}: lookup p50 {row['lookup_p50_ms']} ms, p99 {row['lookup_p99_ms']} ms")
    return {"benchmark": "store", "machine": machine(), "results": results}


def machine() -> dict:
    import os

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version()}


def write_report(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
