"""The paper's Table 4 on one machine: full text, truncated text, MixLM naive and MixLM amortized.

All four use the same ranker model and head; the items are real long texts (job postings
where available). MixLM's item vectors come from the bundle's encoder, computed once before
timing (that is the nearline part). Each request is one query against N candidates.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mixlm.training.beir import read_corpus

QUERIES = ["senior data engineer with spark and kafka", "machine learning scientist for recommendation systems",
           "entry level data analyst sql dashboards", "nlp researcher large language models",
           "business intelligence developer in healthcare", "statistician for clinical trials"]


def _texts(corpus: Path, n: int) -> list[str]:
    return [f"{d.title}\n{d.text}" for d in read_corpus(corpus, n)]


def run_rank_bench(bundle_dir: str, corpus: Path, *, sizes=(50, 250), requests: int = 3, truncate_tokens: int = 64,
                   full_text_max_n: int = 50, threads: int | None = None,
                   log: Callable[[str], None] = print) -> dict:
    from mixlm.encoders import ItemEncoder
    from mixlm.ranker.model import MixedInputRanker
    from mixlm.ranker.text_baselines import FullTextRanker, TruncatedTextRanker

    if threads:
        torch.set_num_threads(threads)
    ranker = MixedInputRanker.from_bundle(bundle_dir)
    texts = _texts(corpus, max(sizes))
    vectors = [torch.from_numpy(item.vectors) for item in ItemEncoder.from_bundle(bundle_dir).encode(
        [("", text) for text in texts])]
    full, truncated = FullTextRanker(ranker), TruncatedTextRanker(ranker, max_item_tokens=truncate_tokens)
    item_tokens = float(np.mean([len(ranker.tokenizer.encode(t, add_special_tokens=False)) for t in texts]))
    query_tokens = float(np.mean([len(ranker.prefix_ids(q)) for q in QUERIES]))
    methods = {
        "full_text": lambda q, n: full.score(q, texts[:n]),
        "truncated_text": lambda q, n: truncated.score(q, texts[:n]),
        "mixlm_naive": lambda q, n: ranker.score(q, vectors[:n], backend="naive"),
        "mixlm_amortized": lambda q, n: ranker.score(q, vectors[:n], backend="amortized"),
    }
    rows = []
    for n in sizes:
        for name, run in methods.items():
            if name == "full_text" and n > full_text_max_n:
                continue
            run(QUERIES[0], 2)  # warm-up on a small request
            latencies = []
            for index in range(requests):
                began = time.perf_counter()
                run(QUERIES[index % len(QUERIES)], n)
                latencies.append(time.perf_counter() - began)
            ms = np.array(latencies) * 1e3
            row = {"method": name, "candidates": n, "requests": requests,
                   "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
                   "items_per_s": round(n * requests / (ms.sum() / 1e3), 1)}
            rows.append(row)
            log(f"  N={n:<4} {name:<16} p50 {row['p50_ms']:>9} ms  {row['items_per_s']:>9} items/s")
    best = {}
    for row in rows:
        best[row["method"]] = max(best.get(row["method"], 0.0), row["items_per_s"])
    ratios = {}
    if best.get("mixlm_amortized"):
        for baseline in ("full_text", "truncated_text", "mixlm_naive"):
            if best.get(baseline):
                ratios[f"mixlm_amortized_over_{baseline}"] = round(best["mixlm_amortized"] / best[baseline], 1)
    return {"benchmark": "rank", "mean_item_tokens": round(item_tokens),
            "mean_query_prefix_tokens": round(query_tokens),
            "truncate_tokens": truncate_tokens, "torch_threads": torch.get_num_threads(), "results": rows,
            "best_items_per_s": best, "ratios": ratios}


def plot(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(r["method"] for r in report["results"]):
        points = [r for r in report["results"] if r["method"] == method]
        ax.plot([p["p99_ms"] for p in points], [p["items_per_s"] for p in points], marker="o", label=method)
        for p in points:
            ax.annotate(f"N={p['candidates']}", (p["p99_ms"], p["items_per_s"]), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("p99 request latency (ms)")
    ax.set_ylabel("items / s")
    ax.set_title("Ranking throughput against latency (one request at a time)")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
