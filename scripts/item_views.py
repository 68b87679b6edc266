"""How well finer views of an item than its pooled vector match a query, before any training.

For each collection's dev queries (the train split's hold-out, as `mixlm train joint` carves it),
reranking BM25's top 100, NDCG@10 of:

- ``dense``: the cosine of the query's and the item's mean-pooled vectors (what the bundle stores);
- ``idf-mean``: the same with each token weighted by its inverse document frequency in the
  collection's corpus (a pooling that leans on rare words, as a lexical match does);
- ``segments-K``: the best cosine between the query's vector and the means of K contiguous
  segments of the item's tokens (what T_S = K tokens of segment means would carry);
- ``maxsim``: the mean over the query's tokens of the best cosine with any item token (what only
  token-level storage carries; `mixlm.training.late_interaction`);

each alone and fused with BM25 (sum of z-scores, as `mixlm eval`'s bm25+dense). ``--model-dir``
measures another encoder, a local transformers folder with mean pooling, instead of a bundle's.

    python scripts/item_views.py --bundle bundles/default --dataset data/scifact --dataset runs/debian-pq
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mixlm.encoders import ItemEncoder
from mixlm.encoders.bundle import load_bundle
from mixlm.ranker.fusion import standardise
from mixlm.training.candidates import bm25_candidates
from mixlm.training.config import DataConfig
from mixlm.training.evaluation import ndcg_at_10
from mixlm.training.late_interaction import maxsim, token_states
from mixlm.training.stages import training_data

SEGMENTS = (2, 4, 8)


def segment_means(states: torch.Tensor, k: int) -> torch.Tensor:
    """``[k, H]``: the means of k contiguous, near-equal runs of the tokens (a run left empty by a short
    item takes the whole item's mean)."""
    run = torch.arange(states.shape[0]) * k // states.shape[0]
    return torch.stack([states[run == j].mean(0) if (run == j).any() else states.mean(0) for j in range(k)])


def inverse_document_frequency(encoder: ItemEncoder, texts: list[str]) -> Callable[[int], float]:
    """A token id's smoothed IDF over ``texts``: ``log((N + 1) / (df + 1)) + 1``."""
    frequency = Counter(token for item in encoder.tokenizer(texts) for token in set(item.ids))
    return lambda token: math.log((len(texts) + 1) / (frequency[token] + 1)) + 1


def views(states: torch.Tensor, idf_weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """A text's L2-normalised views from its raw token states and their IDF weights ``[L]``: the whole
    mean ``[1, H]``, the IDF-weighted mean, each segmentation's means ``[k, H]``, and every token ``[L, H]``."""
    out = {"dense": states.mean(0, keepdim=True),
           "idf-mean": (states * idf_weights[:, None]).sum(0, keepdim=True) / idf_weights.sum()}
    out.update({f"segments-{k}": segment_means(states, k) for k in SEGMENTS})
    out["maxsim"] = states
    return {name: F.normalize(view, dim=-1) for name, view in out.items()}


def view_scores(query: dict[str, torch.Tensor], item: dict[str, torch.Tensor]) -> dict[str, float]:
    """Every view's score of one (query, item) pair: the query's mean against the item's best segment
    (the whole mean is one segment), the IDF-weighted means against each other, and MaxSim token
    against token."""
    pooled = [name for name in item if name not in ("maxsim", "idf-mean")]
    scores = {name: float((item[name] @ query["dense"][0]).max()) for name in pooled}
    scores["idf-mean"] = float(item["idf-mean"][0] @ query["idf-mean"][0])
    scores["maxsim"] = maxsim(query["maxsim"], item["maxsim"])
    return scores


def collection_views(encoder: ItemEncoder, dataset: str, depth: int) -> dict[str, float]:
    _, devs = training_data(DataConfig((dataset,)), lambda line: print(line, file=sys.stderr))
    dev = devs[0]
    candidates = bm25_candidates(dev, depth)
    doc_ids = sorted({d for ranked in candidates.values() for d, _ in ranked})
    idf = inverse_document_frequency(encoder, [encoder.encoding.format_item(doc.title, doc.text)
                                               for doc in dev.corpus.values()])

    def text_views(texts: list[str]) -> list[dict[str, torch.Tensor]]:
        return [views(states, torch.tensor([idf(token) for token in item.ids]))
                for states, item in zip(token_states(encoder, texts, normalise=False), encoder.tokenizer(texts),
                                        strict=True)]

    texts = [encoder.encoding.format_item(dev.corpus[d].title, dev.corpus[d].text) for d in doc_ids]
    items = dict(zip(doc_ids, text_views(texts), strict=True))
    queries = dict(zip(dev.queries, text_views(list(dev.queries.values())), strict=True))
    runs: dict[str, dict[str, dict[str, float]]] = {"bm25": {}}
    for qid, ranked in candidates.items():
        ids = [d for d, _ in ranked]
        runs["bm25"][qid] = dict(ranked)
        per_item = [view_scores(queries[qid], items[d]) for d in ids]
        bm25 = standardise(np.array([s for _, s in ranked]))
        for view in per_item[0]:
            values = np.array([scores[view] for scores in per_item])
            fused = bm25 + standardise(values)
            runs.setdefault(view, {})[qid] = dict(zip(ids, values.tolist(), strict=True))
            runs.setdefault(f"bm25+{view}", {})[qid] = dict(zip(ids, fused.tolist(), strict=True))
    return {"queries": len(dev.qrels), **{view: round(ndcg_at_10(dev.qrels, run)["ndcg@10"], 4)
                                          for view, run in runs.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    encoders = parser.add_mutually_exclusive_group(required=True)
    encoders.add_argument("--bundle", help="a bundle whose encoder is measured")
    encoders.add_argument("--model-dir", help="a local transformers encoder folder, mean-pooled, instead of a bundle's")
    parser.add_argument("--max-length", type=int, help="item tokens kept with --model-dir  [default: 256]")
    parser.add_argument("--dataset", action="append", required=True, help="a BEIR folder with a train split")
    parser.add_argument("--depth", type=int, default=100, help="BM25 candidates reranked per query")
    args = parser.parse_args()
    if args.bundle and args.max_length is not None:
        parser.error("--max-length goes with --model-dir: a bundle keeps the item tokens it was built with")
    encoder = (ItemEncoder.from_bundle(load_bundle(args.bundle)) if args.bundle else
               ItemEncoder.from_model_dir(args.model_dir, pooling="mean", max_length=args.max_length or 256))
    print(json.dumps({name: collection_views(encoder, name, args.depth) for name in args.dataset}, indent=2))


if __name__ == "__main__":
    main()
