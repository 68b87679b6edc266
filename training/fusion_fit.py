"""Fitting the final score's fusion weights on held-out training queries (never a test split).

A grid over the first-stage and dense weights, MixLM's weight fixed at 1 (only ratios matter
after standardisation). The weights are fitted over one or more *cases*, each a set of dev
queries with a student's scores: a collection's own dev queries scored by the student trained
on it, or, to stand for a collection nobody trained on, a collection's dev queries scored by a
student that never saw that collection. The product's promise is that the final score is never
below the best first stage, so the weights that win are those whose smallest gain over a case's
best first stage (BM25, dense, or their fusion) is largest; ties go to the larger mean gain,
then to smaller first-stage and dense weights, so that MixLM keeps the say it earned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mixlm.encoders.config import FusionConfig
from mixlm.schemas.errors import InputError
from mixlm.training.evaluation import ndcg_at_10

# Up to 4 each: equal large weights leave MixLM a small tilt on BM25+dense, which is what a
# weak student on an unfamiliar collection warrants (the grid must reach that far to offer it).
FIRST_STAGE_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
DENSE_GRID = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)


@dataclass(frozen=True)
class FusionCase:
    """Dev queries to fit on: their BM25 candidates ``(doc id, score)``, a student's log-odds and the dense cosines."""

    name: str
    qrels: Mapping[str, Mapping[str, int]]
    candidates: Mapping[str, Sequence[tuple[str, float]]]
    mixlm_run: dict
    dense_run: dict

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


def fit_fusion(cases: Sequence[FusionCase], *, fitted_on: str, use_dense: bool = True) -> tuple[FusionConfig, dict]:
    """``(weights, report)``: the weights with the largest worst-case gain, and every grid point's NDCG@10 per case."""
    from mixlm.training.rerank_eval import fused_run

    if not cases:
        raise InputError("fitting the fusion needs at least one set of dev queries")
    baselines = {case.name: case.first_stages(use_dense) for case in cases}
    best_first = {name: max(rows.values()) for name, rows in baselines.items()}
    grid = []
    for dense in DENSE_GRID if use_dense else (0.0,):
        for first_stage in FIRST_STAGE_GRID:
            config = FusionConfig(mixlm=1.0, first_stage=first_stage, dense=dense, fitted_on=fitted_on)
            scores = {case.name: round(case.ndcg(fused_run(config, case.candidates, case.mixlm_run, case.dense_run)), 6)
                      for case in cases}
            gains = [scores[name] - best_first[name] for name in scores]
            key = (round(min(gains), 6), round(sum(gains) / len(gains), 6), -first_stage, -dense)
            grid.append((key, config, scores))
    key, best, best_scores = max(grid, key=lambda row: row[0])
    report = {"cases": {case.name: {"queries": len(case.qrels),
                                    "first_stages": {k: round(v, 4) for k, v in baselines[case.name].items()},
                                    "mixlm": round(case.ndcg(case.mixlm_run), 4),
                                    "final": round(best_scores[case.name], 4)} for case in cases},
              "worst_gain": key[0], "mean_gain": key[1],
              "grid": [{"first_stage": c.first_stage, "dense": c.dense, "ndcg@10": scores} for _, c, scores in grid]}
    return best, report
