"""The paper's Table 4 on one machine: full text, truncated text, MixLM naive and MixLM amortized.

All methods use the same ranker model and head; the items are real long texts (job postings
where available). MixLM's item vectors, retrieval vectors and query embeddings come from the
bundle's encoder, computed once before timing (the nearline part; one query's encoding is timed
on its own and reported). Each request is one query against N candidates.

Besides the baselines, one run compares, for MixLM amortized: the shared-prefix backend against
the earlier backend that copies the query cache per batch (``amortized-copy``), each compute
dtype (``dtypes``), and "legacy": float32, the copying backend and the earlier prompt end
(``LEGACY_END``, four tokens: five positions per candidate), i.e. the code before bfloat16, the
one-token end and the shared prefix. It also measures the machine's square-matmul rate in each
dtype, so the ranker's FLOP rate can be set against it (``analysis``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mixlm.ranker.defaults import DEFAULT_TRUNCATE_TOKENS
from mixlm.schemas.beir import read_corpus

QUERIES = ["senior data engineer with spark and kafka", "machine learning scientist for recommendation systems",
           "entry level data analyst sql dashboards", "nlp researcher large language models",
           "business intelligence developer in healthcare", "statistician for clinical trials"]
LEGACY_END = "\nRelevant:"  # the prompt end before the one-token " Relevant"
MAIN_METHOD = "mixlm_amortized"


def _texts(corpus: Path, n: int) -> list[str]:
    return [d.full_text() for d in read_corpus(corpus, n)]


def cpu_model() -> str:
    """The CPU's model name (``lscpu``'s), where /proc/cpuinfo says it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def matmul_gflops(dtype: torch.dtype, size: int = 2048, seconds: float = 1.0) -> float:
    """The best GFLOP/s of a ``size``-square matmul in ``dtype`` on this machine (torch's threads)."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b
    best, spent = float("inf"), 0.0
    while spent < seconds:
        began = time.perf_counter()
        a @ b
        elapsed = time.perf_counter() - began
        best, spent = min(best, elapsed), spent + elapsed
    return round(2 * size ** 3 / best / 1e9, 1)


def flops_per_candidate(ranker, prefix_tokens: float, positions: int) -> dict:
    """Forward FLOPs of one candidate's positions (2 x the decoder's matrix parameters each, plus
    attention over the prefix and the earlier positions), and of the query prefill per request."""
    config = ranker.model.config
    matrices = sum(p.numel() for p in ranker.decoder.layers.parameters() if p.dim() == 2)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention_per_key = 4 * config.num_attention_heads * head_dim * config.num_hidden_layers  # QK^T and PV
    candidate = positions * 2 * matrices + attention_per_key * positions * (prefix_tokens + (positions + 1) / 2)
    prefill = prefix_tokens * 2 * matrices + attention_per_key * prefix_tokens * (prefix_tokens + 1) / 2
    return {"decoder_matrix_params": matrices, "positions_per_candidate": positions,
            "mflop_per_candidate": round(candidate / 1e6, 3), "mflop_prefill_per_query": round(prefill / 1e6, 3),
            "attention_share": round(1 - positions * 2 * matrices / candidate, 4)}


def run_rank_bench(bundle_dir: str, corpus: Path, *, sizes=(50, 250), queries_per_forward=(1, 4), requests: int = 3,
                   dtypes=("bfloat16", "float32"), copy_backend: bool = True, legacy: bool = True,
                   truncate_tokens: int = DEFAULT_TRUNCATE_TOKENS, full_text_max_n: int = 50, baseline_max_q: int = 4,
                   p99_budget_ms: float = 5_000.0, with_breakdown: bool = True,
                   log: Callable[[str], None] = print) -> dict:
    """Each point: ``q`` requests (N candidates each) served together, timed ``requests`` times,
    the methods of a point in turn (round robin, so the noise of a shared machine hits them alike).

    Batched methods put the q queries in one prefill and shared candidate passes (``score_batch``);
    MixLM naive has no batching and runs at q = 1 only, full text at q = 1 and N <= full_text_max_n,
    truncated text at q <= baseline_max_q. The text baselines and MixLM naive run in ``dtypes[0]``;
    MixLM amortized in every dtype.
    """
    from mixlm.encoders import ItemEncoder
    from mixlm.ranker.model import DEFAULT_TOKEN_BUDGET, MixedInputRanker

    main_dtype = dtypes[0]
    rankers = {dtype: MixedInputRanker.from_bundle(bundle_dir, dtype=dtype) for dtype in dtypes}
    if legacy and "float32" not in rankers:
        rankers["float32"] = MixedInputRanker.from_bundle(bundle_dir, dtype="float32")
    main = rankers[main_dtype]
    encoder = ItemEncoder.from_bundle(bundle_dir)
    texts = _texts(corpus, max(sizes))
    encoded = encoder.encode([("", text) for text in texts])
    vectors = [torch.from_numpy(item.vectors) for item in encoded]
    retrieval = np.stack([item.retrieval_vector for item in encoded])
    query_embeddings = dict(zip(QUERIES, encoder.encode_queries(QUERIES), strict=True))
    began = time.perf_counter()
    for query in QUERIES:
        encoder.encode_queries([query])
    query_encode_ms = (time.perf_counter() - began) * 1e3 / len(QUERIES)
    # The text baselines read the item's own tokens: the same model and prompt, no embedding inputs.
    text_ranker = MixedInputRanker(main.model, main.tokenizer, main.prompt, main.encoder_id)
    with torch.inference_mode():
        text_tokens = [text_ranker.item_text_embeddings(text) for text in texts]
        prefix_sizes = [len(main.prefix_embeddings(q, query_embeddings[q])) for q in QUERIES]
    prefix_tokens = float(np.mean(prefix_sizes))
    truncated_tokens = [tokens[:truncate_tokens] for tokens in text_tokens]
    item_tokens = float(np.mean([t.shape[0] for t in text_tokens]))

    def mixlm(ranker, backend):
        def run(queries, n):
            return ranker.score_batch([(q, vectors[:n]) for q in queries],
                                      query_embeddings=[query_embeddings[q] for q in queries],
                                      item_retrievals=[retrieval[:n]] * len(queries), backend=backend)
        return run

    def text(items):
        return lambda queries, n: text_ranker.score_batch([(q, items[:n]) for q in queries])

    def naive(queries, n):
        return [main.score(q, vectors[:n], backend="naive", query_embedding=query_embeddings[q],
                           item_retrieval=retrieval[:n]) for q in queries]

    ts = vectors[0].shape[0]
    methods = {  # label -> (method, dtype, backend, positions per candidate, run)
        "full_text": ("full_text", main_dtype, "amortized", item_tokens + len(main.end_ids), text(text_tokens)),
        "truncated_text": ("truncated_text", main_dtype, "amortized",
                           float(np.mean([t.shape[0] for t in truncated_tokens])) + len(main.end_ids),
                           text(truncated_tokens)),
        "mixlm_naive": ("mixlm_naive", main_dtype, "naive", ts + len(main.end_ids), naive),
    }
    for dtype in dtypes:
        suffix = "" if dtype == main_dtype else f"@{dtype}"
        for backend in ("amortized", "amortized-copy") if copy_backend else ("amortized",):
            name = MAIN_METHOD if backend == "amortized" else "mixlm_amortized_copy"
            methods[name + suffix] = (name, dtype, backend, ts + len(rankers[dtype].end_ids),
                                      mixlm(rankers[dtype], backend))
    if legacy:
        old = rankers["float32"]
        old = MixedInputRanker(old.model, old.tokenizer, dataclasses.replace(old.prompt, end=LEGACY_END),
                               old.encoder_id, inputs=old.inputs, interaction=old.interaction,
                               token_budget=DEFAULT_TOKEN_BUDGET)  # the budget of the time
        methods["mixlm_legacy"] = ("mixlm_legacy", "float32", "amortized-copy", ts + len(old.end_ids),
                                   mixlm(old, "amortized-copy"))

    def applies(method: str, n: int, q: int) -> bool:
        if method == "full_text":
            return n <= full_text_max_n and q == 1
        if method == "mixlm_naive":
            return q == 1
        return method != "truncated_text" or q <= baseline_max_q

    # The square-matmul rate is probed before, after every point and at the end; its best is the
    # machine's rate (a shared machine's load lowers single probes).
    probes: list[dict[str, float]] = []

    def probe() -> None:
        probes.append({dtype: matmul_gflops(getattr(torch, dtype), seconds=0.5) for dtype in ("float32", "bfloat16")})

    def batch_of(q: int, index: int = 0) -> list[str]:
        return [QUERIES[(index * q + j) % len(QUERIES)] for j in range(q)]

    probe()
    for *_, run in methods.values():
        run(QUERIES[:1], 2)  # warm-up on a small request
    rows = []
    for n in sizes:
        for q in queries_per_forward:
            points = {label: spec for label, spec in methods.items() if applies(spec[0], n, q)}
            latencies: dict[str, list[float]] = {label: [] for label in points}
            for index in range(requests):
                batch = batch_of(q, index)
                for label, (*_, run) in points.items():
                    began = time.perf_counter()
                    run(batch, n)
                    latencies[label].append(time.perf_counter() - began)
            for label, (method, dtype, backend, positions, _) in points.items():
                ms = np.array(latencies[label]) * 1e3
                row = {"label": label, "method": method, "dtype": dtype, "backend": backend,
                       "positions_per_candidate": round(positions, 1), "candidates": n, "queries_per_forward": q,
                       "requests": requests * q, "p50_ms": round(float(np.percentile(ms, 50)), 1),
                       "p99_ms": round(float(np.percentile(ms, 99)), 1),
                       "items_per_s": round(float(n * q * requests / (ms.sum() / 1e3)), 1)}
                rows.append(row)
                log(f"  N={n:<4} q={q:<3} {label:<30} p99 {row['p99_ms']:>9} ms  {row['items_per_s']:>9} items/s")
            probe()
    where = [breakdown(main, lambda q, n: methods[MAIN_METHOD][4](batch_of(q), n), max(sizes), q,
                       max(prefix_sizes[i % len(QUERIES)] for i in range(q)), ts + len(main.end_ids))
             for q in queries_per_forward] if with_breakdown else []
    probe()
    matmul = {dtype: max(p[dtype] for p in probes) for dtype in probes[0]}
    flops = flops_per_candidate(main, prefix_tokens, ts + len(main.end_ids))
    under_budget = best_items_per_s(rows, p99_budget_ms)
    overall = best_items_per_s(rows, float("inf"))
    return {"benchmark": "rank", "mean_item_tokens": round(item_tokens),
            "mean_query_prefix_tokens": round(prefix_tokens), "item_embedding_tokens": ts,
            "end_tokens": len(main.end_ids), "truncate_tokens": truncate_tokens,
            "main_dtype": main_dtype, "query_encode_ms": round(query_encode_ms, 1), "p99_budget_ms": p99_budget_ms,
            "cpu_model": cpu_model(), "torch_threads": torch.get_num_threads(), "matmul_2048_gflops": matmul,
            "matmul_2048_gflops_probes": probes,
            "flops": flops, "results": rows, "speedups": speedups(rows, main_dtype),
            "analysis": analysis(rows, flops, matmul, main_dtype), "breakdown": where,
            "best_items_per_s_under_budget": under_budget, "ratios_under_budget": amortized_ratios(under_budget),
            "best_items_per_s": overall, "ratios": amortized_ratios(overall)}


def breakdown(ranker, run: Callable, n: int, q: int, prefix_width: int, positions: int, repeats: int = 3) -> dict:
    """Where one MixLM amortized point's time goes, by ablation in one process (best of ``repeats``):
    the whole batch (``run(q, n)``); the decoder's matmuls alone at the batch's shapes and the
    model's weights (the candidate passes' and the prefill's); the shared-prefix attention alone at
    its shapes; the rest is the decoder's elementwise work (norms, RoPE, activations, residual
    adds) and Python."""
    from mixlm.encoders.batching import token_budget_batches
    from mixlm.ranker import shared_prefix

    config, layers = ranker.model.config, ranker.decoder.layers
    owners = [i // n for i in range(n * q)]
    batches = list(token_budget_batches([positions] * (n * q), ranker.token_budget))
    linears = [m for m in layers.modules() if isinstance(m, torch.nn.Linear)]
    inputs: dict[tuple[int, int], torch.Tensor] = {}

    def matmuls(rows: int) -> Callable[[], None]:
        for width in {m.in_features for m in linears}:
            inputs.setdefault((rows, width), torch.randn(rows, width, device=ranker.device).to(ranker.dtype))
        return lambda: [torch.nn.functional.linear(inputs[rows, m.in_features], m.weight) for m in linears]

    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    keys = torch.randn(q, kv_heads, prefix_width, head_dim, device=ranker.device).to(ranker.dtype)

    def attention(batch: list[int]) -> Callable[[], None]:
        rows = len(batch)
        query = torch.randn(rows, heads, positions, head_dim, device=ranker.device).to(ranker.dtype)
        key = torch.randn(rows, kv_heads, positions, head_dim, device=ranker.device).to(ranker.dtype)
        segments, start = [], 0
        for owner in dict.fromkeys(owners[i] for i in batch):
            stop = start + sum(1 for i in batch if owners[i] == owner)
            segments.append((owner, start, stop))
            start = stop
        layer = type("Layer", (), {"layer_idx": 0})
        return lambda: [shared_prefix.attention(layer, query, key, key, shared_prefix.SharedPrefix(
            [keys], [keys], [prefix_width] * q, segments), head_dim ** -0.5) for _ in layers]

    candidate = [matmuls(len(b) * positions) for b in batches]
    attend = [attention(b) for b in batches]
    parts = {"request": lambda: run(q, n), "candidate_matmuls": lambda: [f() for f in candidate],
             "prefill_matmuls": matmuls(q * prefix_width), "attention": lambda: [f() for f in attend]}
    best = {name: float("inf") for name in parts}
    with torch.inference_mode():
        for f in parts.values():
            f()
        for _ in range(repeats):
            for name, f in parts.items():
                began = time.perf_counter()
                f()
                best[name] = min(best[name], time.perf_counter() - began)
    rest = best["request"] - best["candidate_matmuls"] - best["prefill_matmuls"] - best["attention"]
    matmul_flop = 2 * n * q * positions * sum(m.weight.numel() for m in linears)
    out = {"candidates": n, "queries_per_forward": q, "request_ms": round(best["request"] * 1e3, 1),
           "items_per_s": round(n * q / best["request"], 1)}
    for name in ("candidate_matmuls", "prefill_matmuls", "attention"):
        out[f"{name}_share"] = round(best[name] / best["request"], 3)
    out["rest_share"] = round(rest / best["request"], 3)
    out["candidate_matmul_gflops"] = round(matmul_flop / best["candidate_matmuls"] / 1e9, 1)
    return out


def best_items_per_s(rows: list[dict], p99_budget_ms: float) -> dict[str, float]:
    """Each method's (label's) best throughput among its points within the p99 budget (absent: none fits)."""
    best: dict[str, float] = {}
    for row in rows:
        if row["p99_ms"] <= p99_budget_ms:
            best[row["label"]] = max(best.get(row["label"], 0.0), row["items_per_s"])
    return best


def amortized_ratios(best: dict[str, float]) -> dict[str, float]:
    if not best.get(MAIN_METHOD):
        return {}
    return {f"{MAIN_METHOD}_over_{baseline}": round(best[MAIN_METHOD] / best[baseline], 1)
            for baseline in ("full_text", "truncated_text", "mixlm_naive", "mixlm_legacy") if best.get(baseline)}


def speedups(rows: list[dict], main_dtype: str) -> list[dict]:
    """Per point: MixLM amortized (shared prefix, main dtype) over the other MixLM variants of the point."""
    out = []
    for n, q in dict.fromkeys((r["candidates"], r["queries_per_forward"]) for r in rows):
        point = {r["label"]: r["items_per_s"] for r in rows if (r["candidates"], r["queries_per_forward"]) == (n, q)}
        if not point.get(MAIN_METHOD):
            continue
        over = {label: round(point[MAIN_METHOD] / value, 2) for label, value in point.items()
                if label.startswith("mixlm_") and label != MAIN_METHOD and value}
        out.append({"candidates": n, "queries_per_forward": q, "items_per_s": point[MAIN_METHOD], "over": over})
    return out


def analysis(rows: list[dict], flops: dict, matmul: dict[str, float], main_dtype: str) -> list[dict]:
    """MixLM amortized's FLOP rate (candidate positions plus the amortized prefill) against the
    square-matmul rate of its dtype: the fraction of what the machine's matmul reaches."""
    out = []
    for row in rows:
        if row["method"] != MAIN_METHOD:
            continue
        per_item = flops["mflop_per_candidate"] + flops["mflop_prefill_per_query"] / row["candidates"]
        rate = per_item * row["items_per_s"] / 1e3
        out.append({"label": row["label"], "candidates": row["candidates"],
                    "queries_per_forward": row["queries_per_forward"], "mflop_per_item": round(per_item, 3),
                    "achieved_gflops": round(rate, 3), "matmul_gflops": matmul[row["dtype"]],
                    "fraction_of_matmul": round(rate / matmul[row["dtype"]], 4),
                    "items_per_s_at_matmul_rate": round(matmul[row["dtype"]] * 1e3 / per_item, 1)})
    return out


def plot(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for label in dict.fromkeys(r.get("label", r["method"]) for r in report["results"]):
        points = [r for r in report["results"] if r.get("label", r["method"]) == label]
        ax.scatter([p["p99_ms"] for p in points], [p["items_per_s"] for p in points], label=label)
        for p in points:
            ax.annotate(f"N={p['candidates']} q={p['queries_per_forward']}", (p["p99_ms"], p["items_per_s"]),
                        fontsize=6)
    ax.axvline(report["p99_budget_ms"], color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("p99 batch latency (ms)")
    ax.set_ylabel("items / s")
    ax.set_title("Ranking throughput against p99 latency (dashed: the p99 budget)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
