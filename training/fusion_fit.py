"""Fitting the final score's fusion weights on held-out training queries (never a test split).

A grid over the first-stage and dense weights, MixLM's weight fixed at 1 (only ratios matter:
the first stages are standardised, MixLM's log-odds divided by the student's ``log_odds_scale``).
The weights are fitted over one or more *cases*, each a set of dev queries with a student's
scores: a collection's own dev queries scored by the student trained on it, or, to stand for a
collection nobody trained on, a collection's dev queries scored by a
student that never saw that collection. The product's promise is that the final score is never
below the best first stage, so the weights that win are those whose smallest gain over a case's
best first stage (BM25, dense, or their fusion) is largest; ties go to the larger mean gain,
then to smaller first-stage and dense weights, so that MixLM keeps the say it earned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mixlm.encoders.config import FusionConfig
from mixlm.schemas.errors import InputError
from mixlm.training.evaluation import ndcg_at_10

# Up to 4 each: equal large weights leave MixLM a small tilt on BM25+dense, which is what a
# weak student on an unfamiliar collection warrants (the grid must reach that far to offer it).
FIRST_STAGE_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
DENSE_GRID = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)


def log_odds_scale(mixlm_runs: Iterable[Mapping[str, Mapping[str, float]]]) -> float:
    """The median, over queries, of the standard deviation of a student's log-odds over a query's candidates
    (5 significant digits); 1 where they do not vary, since MixLM then adds nothing whatever the scale."""
    spreads = [np.std(list(scores.values())) for run in mixlm_runs for scores in run.values() if len(scores) > 1]
    scale = float(f"{np.median(spreads):.5g}") if spreads else 0.0
    return scale if scale > 0 else 1.0


@dataclass(frozen=True)
class FusionCase:
    """Dev queries to fit on: their BM25 candidates ``(doc id, score)``, a student's log-odds and the dense
    cosines, and that student's ``mixlm_scale`` (``log_odds_scale`` of its own collections' dev queries)."""

    name: str
    qrels: Mapping[str, Mapping[str, int]]
    candidates: Mapping[str, Sequence[tuple[str, float]]]
    mixlm_run: dict
    dense_run: dict
    mixlm_scale: float

    def ndcg(self, run: dict) -> float:
        return ndcg_at_10(self.qrels, run)["ndcg@10"]

    def first_stages(self, use_dense: bool) -> dict[str, float]:
        """NDCG@10 of the first stages the fused score must beat."""
        from mixlm.training.rerank_eval import bm25_dense_run

        rows = {"bm25": self.ndcg({q: dict(hits) for q, hits in self.candidates.items()})}
        if use_dense:
            rows["dense"] = self.ndcg(self.dense_run)
            rows["bm25+dense"] = self.ndcg(bm25_dense_run(self.candidates, self.dense_run))
        return rows


def fit_fusion(cases: Sequence[FusionCase], *, fitted_on: str, mixlm_scale: float,
               use_dense: bool = True) -> tuple[FusionConfig, dict]:
    """``(weights, report)``: the weights with the largest worst-case gain, and every grid point's NDCG@10 per case.

    ``mixlm_scale`` is the fitted bundle's own; each case is scored with its own student's.
    """
    from mixlm.training.rerank_eval import fused_run

    if not cases:
        raise InputError("fitting the fusion needs at least one set of dev queries")
    baselines = {case.name: case.first_stages(use_dense) for case in cases}
    best_first = {name: max(rows.values()) for name, rows in baselines.items()}
    grid = []
    for dense in DENSE_GRID if use_dense else (0.0,):
        for first_stage in FIRST_STAGE_GRID:
            config = FusionConfig(mixlm=1.0, first_stage=first_stage, dense=dense, fitted_on=fitted_on,
                                  mixlm_scale=mixlm_scale)
            scores = {case.name: round(case.ndcg(fused_run(dataclasses.replace(config, mixlm_scale=case.mixlm_scale),
                                                           case.candidates, case.mixlm_run, case.dense_run)), 6)
                      for case in cases}
            gains = [scores[name] - best_first[name] for name in scores]
            key = (round(min(gains), 6), round(sum(gains) / len(gains), 6), -first_stage, -dense)
            grid.append((key, config, scores))
    key, best, best_scores = max(grid, key=lambda row: row[0])
    report = {"cases": {case.name: {"queries": len(case.qrels), "mixlm_scale": case.mixlm_scale,
                                    "first_stages": {k: round(v, 4) for k, v in baselines[case.name].items()},
                                    "mixlm": round(case.ndcg(case.mixlm_run), 4),
                                    "final": round(best_scores[case.name], 4)} for case in cases},
              "worst_gain": key[0], "mean_gain": key[1],
              "grid": [{"first_stage": c.first_stage, "dense": c.dense, "ndcg@10": scores} for _, c, scores in grid]}
    return best, report
