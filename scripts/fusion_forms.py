"""The final score's form: the product's against two others, on the same fusion grid.

For each case, a bundle scoring a collection's dev queries (the train split's hold-out, as `mixlm
train joint` carves it) reranking BM25's top 100, NDCG@10 of each form at every point of the
fusion grid (MixLM's weight 1, the first stage's and dense's from `training.fusion_fit`):

- ``scaled`` (the product's, `ranker.fusion`): MixLM's centred log-odds over the bundle's fitted
  scale, plus the first stages' weighted z-scores over the query's candidates;
- ``z``: every feature's z-scores, MixLM's included (the product's form before the scale);
- ``rrf``: the weighted sum of ``1 / (60 + rank)``, each feature's rank among the candidates.

Beside each form's best grid point, which flatters a form by the choice it makes on the very
queries it is scored on, ``cv`` is the mean NDCG@10 of the point chosen on half of the queries,
measured on the other half (both halves, 20 random halvings).

    python scripts/fusion_forms.py --case bundles/scifact=data/scifact --case bundles/default=runs/debian-pq
"""

from __future__ import annotations

import argparse
import json
import random
import sys

import numpy as np

from mixlm.encoders.bundle import load_bundle
from mixlm.encoders.config import FusionConfig
from mixlm.training.config import DataConfig
from mixlm.training.evaluation import ndcg_at_10
from mixlm.training.fusion_fit import DENSE_GRID, FIRST_STAGE_GRID, FusionCase
from mixlm.training.fusion_stage import dev_case, dev_queries
from mixlm.training.rerank_eval import fused_run

RRF_K = 60
RERANK_DEPTH = 100  # BM25 candidates per query, as the fusion fit and `mixlm eval` rerank
HALVINGS = 20
FORMS = ("scaled", "z", "rrf")


def reciprocal_ranks(values: list[float]) -> np.ndarray:
    """``1 / (RRF_K + rank)``, rank 1 for the largest value."""
    ranks = np.empty(len(values))
    ranks[np.argsort(-np.asarray(values), kind="stable")] = np.arange(1, len(values) + 1)
    return 1.0 / (RRF_K + ranks)


def rrf_run(case: FusionCase, first_stage: float, dense: float) -> dict:
    run = {}
    for qid, hits in case.candidates.items():
        docs = [d for d, _ in hits]
        total = reciprocal_ranks([case.mixlm_run[qid][d] for d in docs])
        if first_stage:
            total = total + first_stage * reciprocal_ranks([s for _, s in hits])
        if dense:
            total = total + dense * reciprocal_ranks([case.dense_run[qid][d] for d in docs])
        run[qid] = dict(zip(docs, map(float, total), strict=True))
    return run


def form_run(case: FusionCase, form: str, first_stage: float, dense: float) -> dict:
    if form == "rrf":
        return rrf_run(case, first_stage, dense)
    config = FusionConfig(mixlm=1.0, first_stage=first_stage, dense=dense,
                          mixlm_scale=case.mixlm_scale if form == "scaled" else None)
    return fused_run(config, case.candidates, case.mixlm_run, case.dense_run)


def best_point(per_query: dict[tuple, dict[str, float]], queries) -> tuple:
    """The grid point with the best mean NDCG@10 over ``queries``; ties to the smaller weights, as in the fit."""
    return max(per_query, key=lambda p: (round(float(np.mean([per_query[p][q] for q in queries])), 6), -p[0], -p[1]))


def cross_validated(per_query: dict[tuple, dict[str, float]]) -> float:
    """Mean NDCG@10 on one half of the queries at the grid point that was best on the other half."""
    queries = sorted(next(iter(per_query.values())))
    measured = []
    for seed in range(HALVINGS):
        shuffled = random.Random(seed).sample(queries, len(queries))
        halves = (shuffled[: len(queries) // 2], shuffled[len(queries) // 2:])
        for fit, held in (halves, halves[::-1]):
            point = best_point(per_query, fit)
            measured.append(np.mean([per_query[point][q] for q in held]))
    return float(np.mean(measured))


def compare(case: FusionCase) -> dict:
    report = {"first_stages": {k: round(v, 4) for k, v in case.first_stages(True).items()},
              "mixlm": round(case.ndcg(case.mixlm_run), 4), "mixlm_scale": case.mixlm_scale}
    grid = {}
    for form in FORMS:
        per_query = {(first_stage, dense): ndcg_at_10(case.qrels, form_run(case, form, first_stage, dense))["per_query"]
                     for dense in DENSE_GRID for first_stage in FIRST_STAGE_GRID}
        means = {point: float(np.mean(list(scores.values()))) for point, scores in per_query.items()}
        best = best_point(per_query, list(next(iter(per_query.values()))))
        report[form] = {"best": round(means[best], 4), "first_stage,dense": list(best),
                        "cv": round(cross_validated(per_query), 4)}
        for (first_stage, dense), mean in means.items():
            grid.setdefault(f"{first_stage},{dense}", {})[form] = round(mean, 4)
    return {**report, "grid": grid}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", action="append", required=True, metavar="BUNDLE=DATASET",
                        help="a bundle and the BEIR folder whose dev queries it scores (repeatable); the bundle's "
                             "fitted MixLM scale is used, or without one that of these queries")
    parser.add_argument("--holdout-every", type=int, default=DataConfig.holdout_every)
    args = parser.parse_args()
    report = {}
    for spec in args.case:
        bundle_dir, _, dataset = spec.partition("=")
        if not dataset:
            parser.error(f"--case {spec}: expected BUNDLE=DATASET")
        bundle = load_bundle(bundle_dir)
        fusion = bundle.config.fusion
        for dev in dev_queries(DataConfig(datasets=(dataset,), holdout_every=args.holdout_every)):
            name = f"{bundle_dir} on {dev.name}/{dev.split}"
            case = dev_case(bundle, dev, name, RERANK_DEPTH, lambda line: print(line, file=sys.stderr),
                            mixlm_scale=fusion.mixlm_scale if fusion else None)
            report[name] = compare(case)
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
