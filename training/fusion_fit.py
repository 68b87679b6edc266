"""Fitting the final score's fusion weights on held-out training queries (never a test split).

A grid over the first-stage (and dense) weight, MixLM's weight fixed at 1 (only ratios matter
after standardisation); the weights with the best NDCG@10 win, ties going to the smaller
first-stage weight so that MixLM keeps the say it earned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mixlm.encoders.config import FusionConfig
from mixlm.training.evaluation import ndcg_at_10

FIRST_STAGE_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
DENSE_GRID = (0.0, 0.25, 0.5, 1.0)


def fit_fusion(qrels: Mapping[str, Mapping[str, int]], candidates: Mapping[str, Sequence[tuple[str, float]]],
               mixlm_run: dict, dense_run: dict, *, fitted_on: str,
               use_dense: bool = True) -> tuple[FusionConfig, dict]:
    """``(weights, report)``: the best weights on ``qrels`` and every grid point's NDCG@10."""
    from mixlm.training.rerank_eval import fused_run

    grid = []
    for dense in DENSE_GRID if use_dense else (0.0,):
        for first_stage in FIRST_STAGE_GRID:
            config = FusionConfig(mixlm=1.0, first_stage=first_stage, dense=dense, fitted_on=fitted_on)
            score = ndcg_at_10(qrels, fused_run(config, candidates, mixlm_run, dense_run))["ndcg@10"]
            grid.append((round(score, 6), -first_stage, -dense, config))
    best = max(grid, key=lambda row: row[:3])
    report = {"best": best[0], "grid": [{"first_stage": c.first_stage, "dense": c.dense, "ndcg@10": s}
                                        for s, _, _, c in grid]}
    return best[3], report
