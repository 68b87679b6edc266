"""Candidates per query (BM25 top-K), soft labels from graded judgments, and training groups.

Label mapping: a judged grade ``g`` becomes ``p* = clip(g, 0, max_grade) / max_grade``, where
``max_grade`` is the highest grade in the split's judgments (binary qrels: 1 -> 1.0; Cranfield's
0-4: 3 -> 0.75). An unjudged candidate of a judged query is a negative (``p* = 0``).

Training groups add a query's judged relevant documents to its BM25 candidates (so every
query has positives); evaluation reranks BM25's list alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mixlm.ranker.retrieval import BM25Index
from mixlm.schemas.beir import BeirDataset
from mixlm.schemas.errors import InputError


def merged_candidates(*lists: dict[str, list[tuple[str, float]]]) -> dict[str, list[tuple[str, float]]]:
    """Interleave several candidate lists per query (rank 1 of each, then rank 2, ...), without repeats."""
    out = {}
    for qid in lists[0]:
        seen: dict[str, float] = {}
        rankings = [ranking.get(qid, []) for ranking in lists]
        for rank in range(max(len(r) for r in rankings)):
            for ranking in rankings:
                if rank < len(ranking) and ranking[rank][0] not in seen:
                    seen[ranking[rank][0]] = ranking[rank][1]
        out[qid] = list(seen.items())
    return out


def bm25_index(dataset: BeirDataset) -> BM25Index:
    ids = list(dataset.corpus)
    return BM25Index(ids, [dataset.corpus[i].full_text() for i in ids])


def bm25_candidates(dataset: BeirDataset, depth: int,
                    index: BM25Index | None = None) -> dict[str, list[tuple[str, float]]]:
    """Each query's BM25 top-``depth`` over the whole corpus (``index``: built from it when not given):
    [(doc id, score)], best first."""
    index = index or bm25_index(dataset)
    return {qid: [(hit.item_id, hit.score) for hit in index.search(text, depth)]
            for qid, text in dataset.queries.items()}


def max_grade(qrels: dict[str, dict[str, int]]) -> int:
    return max((g for docs in qrels.values() for g in docs.values()), default=1) or 1


def soft_label(grade: int | None, top: int) -> float:
    """``p*`` of a judged grade (None: unjudged, a negative)."""
    if grade is None:
        return 0.0
    return min(max(grade, 0), top) / top


@dataclass(frozen=True)
class Group:
    """One query and the candidates one training step scores together."""

    query_id: str
    doc_ids: tuple[str, ...]
    labels: tuple[float, ...]


class GroupSampler:
    """Deterministic groups: step ``s`` always yields the same groups for one seed, so runs resume exactly.

    A group holds up to ``positives`` judged relevant documents (sampled) and hard negatives,
    ``size`` in all: the query's first ``fixed_negatives`` candidates every time (the pairs that
    get teacher targets), the rest sampled from its other candidates. Queries are visited in a
    seeded order, epoch after epoch.
    """

    def __init__(self, dataset: BeirDataset, candidates: dict[str, list[tuple[str, float]]], *, size: int,
                 positives: int = 1, seed: int = 0, fixed_negatives: int = 0):
        if size < 2:
            raise InputError(f"a training group needs at least 2 candidates, got {size}")
        self.top = max_grade(dataset.qrels)
        if fixed_negatives > size - 1 - positives:
            raise InputError(f"{fixed_negatives} fixed negatives leave no room in groups of {size} with "
                             f"{positives} positive(s)")
        self.seed, self.size, self.positives, self.fixed = seed, size, positives, fixed_negatives
        self.pools = {}
        for qid, judged in dataset.qrels.items():
            relevant = sorted(d for d, g in judged.items() if g > 0 and d in dataset.corpus)
            negatives = [d for d, _ in candidates.get(qid, []) if judged.get(d, 0) <= 0]
            if relevant and negatives:
                self.pools[qid] = (relevant, negatives, judged)
        if not self.pools:
            raise InputError(f"{dataset.name}/{dataset.split}: no query has both a relevant document and "
                             "BM25 negatives to train on")
        self.order = sorted(self.pools)
        random.Random(seed).shuffle(self.order)

    def __len__(self) -> int:
        return len(self.order)

    def candidate_pairs(self) -> dict[str, list[str]]:
        """Per query, every document a group of it can hold: its judged relevant ones and its negatives."""
        return {qid: relevant + negatives for qid, (relevant, negatives, _) in self.pools.items()}

    def fixed_pairs(self) -> list[Group]:
        """Per query, its judged relevant documents and its fixed negatives: what teacher targets cover."""
        out = []
        for qid in self.order:
            relevant, negatives, judged = self.pools[qid]
            docs = tuple(relevant + negatives[:self.fixed])
            out.append(Group(qid, docs, tuple(soft_label(judged.get(d), self.top) for d in docs)))
        return out

    def groups(self, step: int, per_step: int) -> list[Group]:
        rng = random.Random(self.seed * 1_000_003 + step)
        out = []
        for k in range(per_step):
            qid = self.order[(step * per_step + k) % len(self.order)]
            relevant, negatives, judged = self.pools[qid]
            chosen = rng.sample(relevant, min(self.positives, len(relevant)))
            chosen += negatives[:self.fixed]
            rest = negatives[self.fixed:]
            chosen += rng.sample(rest, min(self.size - len(chosen), len(rest)))
            labels = tuple(soft_label(judged.get(d), self.top) for d in chosen)
            out.append(Group(qid, tuple(chosen), labels))
        return out
