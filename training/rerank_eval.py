"""NDCG@10 of first stages and rerankers on one judged split: what ``mixlm eval`` reports.

Every method ranks the same candidates, each query's BM25 top-``depth`` (judged documents are
never added): BM25 itself, chance (the mean over ``RANDOM_SEEDS`` seeded random orderings, the
floor any reranker should clear), cosine of the encoder's retrieval vectors (dense), the z-score
fusion of BM25 and dense with equal weights (bm25+dense), the full-text and the truncated-text
ranker (the teacher's weights by default), MixLM alone (the bundle's encoder vectors in its
ranker) and the product's final score (MixLM fused with BM25's scores, and dense where the
bundle's fusion weighs it). A document outside a query's candidates is not ranked by any method.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mixlm.encoders.config import FusionConfig, RankerInputs
from mixlm.ranker.defaults import DEFAULT_TRUNCATE_TOKENS
from mixlm.ranker.fusion import fuse
from mixlm.schemas.beir import BeirDataset
from mixlm.schemas.errors import InputError
from mixlm.training.candidates import bm25_candidates
from mixlm.training.config import EVAL_METHODS, EVAL_RERANK_DEPTH, FULLTEXT_TOKENS
from mixlm.training.evaluation import ndcg_at_10

RANDOM_SEEDS = 20


def _item_text(bundle, doc) -> str:
    return bundle.config.encoding.format_item(doc.title, doc.text)


def evaluate(dataset_dir: str | Path, split: str, bundle_dir: str | Path, *, teacher_dir: str | Path | None = None,
             methods: Sequence[str] = EVAL_METHODS, depth: int = EVAL_RERANK_DEPTH, max_queries: int | None = None,
             fulltext_tokens: int | None = FULLTEXT_TOKENS, truncate_tokens: int = DEFAULT_TRUNCATE_TOKENS,
             log: Callable[[str], None] = lambda line: None) -> dict:
    """NDCG@10 per method (with seconds spent); ``teacher_dir`` defaults to ``bundle_dir``."""
    from mixlm.encoders.bundle import load_bundle

    unknown = sorted(set(methods) - set(EVAL_METHODS))
    if unknown:
        raise InputError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(EVAL_METHODS)}")
    bundle = load_bundle(bundle_dir)
    teacher = load_bundle(teacher_dir) if teacher_dir else bundle
    dataset = BeirDataset.load(dataset_dir, split).limit(max_queries)
    started = time.monotonic()
    candidates = bm25_candidates(dataset, depth)
    log(f"{dataset.name}/{split}: {len(dataset.qrels)} judged queries, BM25 top-{depth} "
        f"({time.monotonic() - started:.1f} s)")
    runs: dict[str, dict] = {}
    seconds: dict[str, float] = {"bm25": time.monotonic() - started}
    runs["bm25"] = {q: dict(hits) for q, hits in candidates.items()}
    wanted = [m for m in EVAL_METHODS if m in methods]
    random_ndcg = _random_orderings(dataset, candidates, runs) if "random" in wanted else None
    if {"dense", "bm25+dense", "mixlm", "final"} & set(wanted):
        need_mixlm = bool({"mixlm", "final"} & set(wanted))
        runs["dense"], mixlm_run = candidate_runs(bundle, dataset, candidates, log, mixlm=need_mixlm, seconds=seconds)
        runs["bm25+dense"] = bm25_dense_run(candidates, runs["dense"])
        if need_mixlm:
            runs["mixlm"] = mixlm_run
            runs["final"] = fused_run(bundle.config.fusion, candidates, runs["mixlm"], runs["dense"])
            seconds["final"] = seconds["mixlm"]
    text_methods = [(m, t) for m, t in (("truncated", truncate_tokens), ("fulltext", fulltext_tokens)) if m in wanted]
    if text_methods and teacher.config.inputs != RankerInputs():
        raise InputError(f"the truncated and fulltext rows need a ranker that reads text alone; {teacher.path}'s "
                         "reads query and item vectors too: give the teacher bundle with --teacher")
    if text_methods:
        from mixlm.ranker.model import MixedInputRanker
        from mixlm.ranker.text_baselines import FullTextRanker

        teacher_ranker = MixedInputRanker.from_bundle(teacher)  # loaded once for both text methods
        for method, tokens in text_methods:
            text_ranker = FullTextRanker(teacher_ranker, max_item_tokens=tokens)
            started = time.monotonic()
            runs[method] = _rerank(dataset, candidates, lambda qid, docs, r=text_ranker: r.score(
                dataset.queries[qid], [_item_text(teacher, dataset.corpus[d]) for d in docs]).log_odds, method, log)
            seconds[method] = time.monotonic() - started
    results = {}
    runs = {m: run for m, run in runs.items() if m in wanted}
    for method in ["bm25"] + [m for m in wanted if m != "bm25"]:
        score = random_ndcg if method == "random" else ndcg_at_10(dataset.qrels, runs[method])["ndcg@10"]
        results[method] = {"ndcg@10": round(score, 4), "seconds": round(seconds.get(method, 0.0), 1)}
    return {"dataset": dataset.name, "split": split, "queries": len(dataset.qrels), "rerank_depth": depth,
            "bundle": str(Path(bundle_dir)), "encoder_id": bundle.encoder_id,
            "teacher": str(Path(teacher_dir)) if teacher_dir else None,
            "fulltext_tokens": fulltext_tokens, "truncate_tokens": truncate_tokens, "results": results,
            "runs": runs}


def candidate_runs(bundle, dataset: BeirDataset, candidates, log, *, mixlm: bool = True,
                   seconds: dict | None = None) -> tuple[dict, dict | None]:
    """``(dense run, MixLM run)`` over each query's candidates with the bundle's encoder and ranker
    (the MixLM run is None without ``mixlm``); the seconds each took go into ``seconds``."""
    seconds = {} if seconds is None else seconds
    started = time.monotonic()
    encoded = _encode_candidates(bundle, dataset, candidates, log)
    seconds["encode"] = time.monotonic() - started
    dense_run = _dense_run(candidates, encoded)
    seconds["dense"] = time.monotonic() - started
    if not mixlm:
        return dense_run, None
    from mixlm.ranker.model import MixedInputRanker

    ranker = MixedInputRanker.from_bundle(bundle)
    started = time.monotonic()
    mixlm_run = _rerank(dataset, candidates, lambda qid, docs: ranker.score(
        dataset.queries[qid], [encoded[d].vectors for d in docs], query_embedding=encoded[("query", qid)],
        item_retrieval=np.stack([encoded[d].retrieval_vector for d in docs])).log_odds, "mixlm", log)
    seconds["mixlm"] = time.monotonic() - started
    return dense_run, mixlm_run


def _random_orderings(dataset: BeirDataset, candidates, runs: dict) -> float:
    """Mean NDCG@10 of seeded random orderings of the candidates; the seed-0 run goes into ``runs``."""
    import random

    scores = []
    for seed in range(RANDOM_SEEDS):
        rng = random.Random(seed)
        run = {q: {d: rng.random() for d, _ in hits} for q, hits in candidates.items()}
        runs.setdefault("random", run)
        scores.append(ndcg_at_10(dataset.qrels, run)["ndcg@10"])
    return sum(scores) / len(scores)


def _encode_candidates(bundle, dataset: BeirDataset, candidates, log) -> dict:
    from mixlm.encoders import ItemEncoder

    encoder = ItemEncoder.from_bundle(bundle)
    ids = sorted({d for hits in candidates.values() for d, _ in hits})
    encoded = {}
    for start in range(0, len(ids), 256):
        chunk = ids[start:start + 256]
        for doc_id, item in zip(chunk, encoder.encode([(dataset.corpus[d].title, dataset.corpus[d].text)
                                                       for d in chunk]), strict=True):
            encoded[doc_id] = item
        log(f"encoded {min(start + 256, len(ids))}/{len(ids)} candidate items")
    queries = list(dataset.queries)
    for qid, item in zip(queries, encoder.encode_queries([dataset.queries[q] for q in queries]), strict=True):
        encoded[("query", qid)] = item
    return encoded


def _dense_run(candidates, encoded) -> dict:
    run = {}
    for qid, hits in candidates.items():
        query = encoded[("query", qid)].retrieval_vector
        run[qid] = {d: float(np.dot(query, encoded[d].retrieval_vector)) for d, _ in hits}
    return run


def bm25_dense_run(candidates, dense_run: dict) -> dict:
    """The first stages' own fusion: z-scored BM25 and dense, equal weights (MixLM has no say)."""
    no_mixlm = {q: {d: 0.0 for d, _ in hits} for q, hits in candidates.items()}
    return fused_run(FusionConfig(mixlm=0.0, first_stage=1.0, dense=1.0), candidates, no_mixlm, dense_run)


def fused_run(fusion: FusionConfig | None, candidates, mixlm_run: dict, dense_run: dict) -> dict:
    """Each query's final scores: ``fuse`` of MixLM's log-odds, the BM25 scores and the dense scores."""
    run = {}
    for qid, hits in candidates.items():
        docs = [d for d, _ in hits]
        final = fuse(fusion, np.array([mixlm_run[qid][d] for d in docs]), first_stage=np.array([s for _, s in hits]),
                     dense=np.array([dense_run[qid][d] for d in docs]))
        run[qid] = dict(zip(docs, map(float, final), strict=True))
    return run


def _rerank(dataset: BeirDataset, candidates, score: Callable, method: str, log) -> dict:
    """``score(query id, doc ids) -> scores`` over each query's candidates, with progress."""
    run = {}
    began = time.monotonic()
    for count, (qid, hits) in enumerate(candidates.items(), start=1):
        docs = [d for d, _ in hits]
        run[qid] = dict(zip(docs, map(float, score(qid, docs)), strict=True)) if docs else {}
        if count % 10 == 0 or count == len(candidates):
            log(f"{method}: {count}/{len(candidates)} queries ({time.monotonic() - began:.0f} s)")
    return run
