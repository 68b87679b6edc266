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


def run_rank_bench(bundle_dir: str, corpus: Path, *, sizes=(50, 250), queries_per_forward=(1, 4), requests: int = 3,
                   truncate_tokens: int = 64, full_text_max_n: int = 50, p99_budget_ms: float = 5_000.0,
                   log: Callable[[str], None] = print) -> dict:
    """Each point: ``q`` requests (N candidates each) served together, timed ``requests`` times.

    Batched methods put the q queries in one prefill and shared candidate passes
    (``score_batch``); MixLM naive has no batching and runs at q = 1 only.
    """
    from mixlm.encoders import ItemEncoder
    from mixlm.ranker.model import MixedInputRanker

    ranker = MixedInputRanker.from_bundle(bundle_dir)
    texts = _texts(corpus, max(sizes))
    vectors = [torch.from_numpy(item.vectors) for item in ItemEncoder.from_bundle(bundle_dir).encode(
        [("", text) for text in texts])]
    with torch.inference_mode():
        text_tokens = [ranker.item_text_embeddings(text) for text in texts]
    truncated_tokens = [tokens[:truncate_tokens] for tokens in text_tokens]
    item_tokens = float(np.mean([t.shape[0] for t in text_tokens]))
    query_tokens = float(np.mean([len(ranker.prefix_ids(q)) for q in QUERIES]))

    def batched(items):
        return lambda queries, n: ranker.score_batch([(q, items[:n]) for q in queries])

    methods = {
        "full_text": batched(text_tokens),
        "truncated_text": batched(truncated_tokens),
        "mixlm_naive": lambda queries, n: [ranker.score(q, vectors[:n], backend="naive") for q in queries],
        "mixlm_amortized": batched(vectors),
    }
    rows = []
    for n in sizes:
        for name, run in methods.items():
            for q in queries_per_forward:
                if (name == "full_text" and (n > full_text_max_n or q > 1)) or (name == "mixlm_naive" and q > 1):
                    continue
                run(QUERIES[:1], 2)  # warm-up on a small request
                latencies = []
                for index in range(requests):
                    batch = [QUERIES[(index * q + j) % len(QUERIES)] for j in range(q)]
                    began = time.perf_counter()
                    run(batch, n)
                    latencies.append(time.perf_counter() - began)
                ms = np.array(latencies) * 1e3
                row = {"method": name, "candidates": n, "queries_per_forward": q, "requests": requests * q,
                       "p50_ms": round(float(np.percentile(ms, 50)), 1),
                       "p99_ms": round(float(np.percentile(ms, 99)), 1),
                       "items_per_s": round(n * q * requests / (ms.sum() / 1e3), 1)}
                rows.append(row)
                log(f"  N={n:<4} q={q:<3} {name:<16} p99 {row['p99_ms']:>9} ms  {row['items_per_s']:>9} items/s")
    under_budget = best_items_per_s(rows, p99_budget_ms)
    overall = best_items_per_s(rows, float("inf"))
    return {"benchmark": "rank", "mean_item_tokens": round(item_tokens),
            "mean_query_prefix_tokens": round(query_tokens), "truncate_tokens": truncate_tokens,
            "p99_budget_ms": p99_budget_ms, "torch_threads": torch.get_num_threads(), "results": rows,
            "best_items_per_s_under_budget": under_budget, "ratios_under_budget": amortized_ratios(under_budget),
            "best_items_per_s": overall, "ratios": amortized_ratios(overall)}


def best_items_per_s(rows: list[dict], p99_budget_ms: float) -> dict[str, float]:
    """Each method's best throughput among its points within the p99 budget (absent: none fits)."""
    best: dict[str, float] = {}
    for row in rows:
        if row["p99_ms"] <= p99_budget_ms:
            best[row["method"]] = max(best.get(row["method"], 0.0), row["items_per_s"])
    return best


def amortized_ratios(best: dict[str, float]) -> dict[str, float]:
    if not best.get("mixlm_amortized"):
        return {}
    return {f"mixlm_amortized_over_{baseline}": round(best["mixlm_amortized"] / best[baseline], 1)
            for baseline in ("full_text", "truncated_text", "mixlm_naive") if best.get(baseline)}


def plot(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(r["method"] for r in report["results"]):
        points = [r for r in report["results"] if r["method"] == method]
        ax.scatter([p["p99_ms"] for p in points], [p["items_per_s"] for p in points], label=method)
        for p in points:
            ax.annotate(f"N={p['candidates']} q={p['queries_per_forward']}", (p["p99_ms"], p["items_per_s"]),
                        fontsize=7)
    ax.axvline(report["p99_budget_ms"], color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("p99 request latency (ms)")
    ax.set_ylabel("items / s")
    ax.set_title("Ranking throughput against p99 latency (dashed: the p99 budget)")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
