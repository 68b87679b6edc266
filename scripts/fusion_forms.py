"""The final score's form: the product's z-score fusion against weighted reciprocal-rank fusion.

For each case, a bundle scoring a collection's dev queries (the train split's hold-out, as `mixlm
train joint` carves it) reranking BM25's top 100, NDCG@10 of both forms at every point of the
fusion grid (MixLM's weight 1, the first stage's and dense's from `training.fusion_fit`):

- ``z``: the weighted sum of each feature's z-scores over the query's candidates (`ranker.fusion`);
- ``rrf``: the weighted sum of ``1 / (60 + rank)``, each feature's rank among the candidates.

    python scripts/fusion_forms.py --case bundles/scifact=data/scifact --case bundles/default=runs/debian-pq
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from mixlm.encoders.bundle import load_bundle
from mixlm.encoders.config import FusionConfig
from mixlm.training.config import DataConfig
from mixlm.training.fusion_fit import DENSE_GRID, FIRST_STAGE_GRID, FusionCase
from mixlm.training.fusion_stage import dev_case, dev_queries
from mixlm.training.rerank_eval import fused_run

RRF_K = 60
RERANK_DEPTH = 100  # BM25 candidates per query, as the fusion fit and `mixlm eval` rerank


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


def compare(case: FusionCase) -> dict:
    grid = {}
    for dense in DENSE_GRID:
        for first_stage in FIRST_STAGE_GRID:
            config = FusionConfig(mixlm=1.0, first_stage=first_stage, dense=dense)
            grid[f"{first_stage},{dense}"] = {
                "z": round(case.ndcg(fused_run(config, case.candidates, case.mixlm_run, case.dense_run)), 4),
                "rrf": round(case.ndcg(rrf_run(case, first_stage, dense)), 4)}
    best = {form: max((scores[form], weights) for weights, scores in grid.items()) for form in ("z", "rrf")}
    return {"first_stages": {k: round(v, 4) for k, v in case.first_stages(True).items()},
            "mixlm": round(case.ndcg(case.mixlm_run), 4),
            "best": {form: {"ndcg@10": score, "first_stage,dense": weights} for form, (score, weights) in best.items()},
            "grid": grid}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", action="append", required=True, metavar="BUNDLE=DATASET",
                        help="a bundle and the BEIR folder whose dev queries it scores (repeatable)")
    parser.add_argument("--holdout-every", type=int, default=DataConfig.holdout_every)
    args = parser.parse_args()
    report = {}
    for spec in args.case:
        bundle_dir, _, dataset = spec.partition("=")
        if not dataset:
            parser.error(f"--case {spec}: expected BUNDLE=DATASET")
        bundle = load_bundle(bundle_dir)
        for dev in dev_queries(DataConfig(datasets=(dataset,), holdout_every=args.holdout_every)):
            name = f"{bundle_dir} on {dev.name}/{dev.split}"
            report[name] = compare(dev_case(bundle, dev, name, RERANK_DEPTH, lambda line: print(line, file=sys.stderr)))
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
