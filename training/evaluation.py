"""NDCG@10 with pytrec_eval (the standard implementation), and the guard that keeps test splits out of training."""

from __future__ import annotations

from collections.abc import Mapping

from mixlm.schemas.errors import InputError

TRAINING_SPLITS = ("train", "dev")


class SplitLeakError(InputError):
    pass


def guard_training_split(split: str) -> str:
    """Training and model selection may read only train/dev judgments; a test split is an error."""
    if split not in TRAINING_SPLITS:
        raise SplitLeakError(f"split {split!r} cannot be used for training or model selection "
                             f"(allowed: {', '.join(TRAINING_SPLITS)}); it is for the final evaluation only")
    return split


def ndcg_at_10(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]) -> dict:
    """Mean NDCG@10 over the judged queries of ``qrels`` (a query missing from ``run`` scores 0)."""
    import pytrec_eval

    judged = {q: dict(docs) for q, docs in qrels.items() if docs}
    evaluator = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut.10"})
    per_query = evaluator.evaluate({q: {d: float(s) for d, s in run.get(q, {}).items()} for q in judged})
    scores = {q: per_query.get(q, {}).get("ndcg_cut_10", 0.0) for q in judged}
    return {"ndcg@10": sum(scores.values()) / len(scores) if scores else 0.0, "queries": len(scores),
            "per_query": scores}
