"""Late-interaction (MaxSim) scores of query-document pairs from the frozen encoder's token states.

A pair's score is the mean, over the query's tokens, of each token's best cosine with any of the
document's tokens (ColBERT's MaxSim, here on an encoder nobody trained for it). It needs every
token's state, which serving does not store, so it is a training-time signal only: the order
λ_e's prior can follow (``--encoder-prior-source maxsim``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from mixlm.encoders.batching import token_budget_batches
from mixlm.encoders.item_encoder import ItemEncoder
from mixlm.training.run import write_text_atomically


def maxsim(query_states: torch.Tensor, doc_states: torch.Tensor) -> float:
    """``[Lq, H]`` and ``[Ld, H]`` L2-normalised token states -> the mean over query tokens of the best cosine."""
    return float((query_states @ doc_states.T).max(dim=1).values.mean())


class MaxSimScores:
    """MaxSim scores of the pairs a run needs, by (query id, document id), cached as JSON in the run."""

    def __init__(self, scores: dict[str, float]):
        self.scores = scores

    @staticmethod
    def key(query_id: str, doc_id: str) -> str:
        return f"{query_id}\t{doc_id}"

    def get(self, query_id: str, doc_ids: Sequence[str]) -> torch.Tensor:
        return torch.tensor([self.scores[self.key(query_id, d)] for d in doc_ids])

    @classmethod
    def build(cls, path: Path | None, encoder: ItemEncoder, queries: Mapping[str, str], docs: Mapping[str, str],
              pairs: Mapping[str, Sequence[str]], *, log) -> MaxSimScores:
        """Score every (query, document) of ``pairs`` (query id -> document ids; texts in ``queries`` and
        ``docs``, documents already formatted), or load the scores from ``path`` when it holds them all."""
        wanted = {cls.key(q, d) for q, ids in pairs.items() for d in ids}
        if path is not None and path.is_file():
            try:
                stored = json.loads(path.read_text())
            except ValueError:  # unreadable: scored again
                stored = {}
            if wanted <= stored.keys():
                return cls(stored)
        query_ids = sorted(pairs)
        query_states = dict(zip(query_ids, token_states(encoder, [queries[q] for q in query_ids]), strict=True))
        askers: dict[str, list[str]] = defaultdict(list)
        for query_id in query_ids:
            for doc_id in pairs[query_id]:
                askers[doc_id].append(query_id)
        doc_ids = sorted(askers)
        scores: dict[str, float] = {}
        chunk = 512
        for start in range(0, len(doc_ids), chunk):
            part = doc_ids[start:start + chunk]
            for doc_id, states in zip(part, token_states(encoder, [docs[d] for d in part]), strict=True):
                for query_id in askers[doc_id]:
                    scores[cls.key(query_id, doc_id)] = maxsim(query_states[query_id], states)
            log(f"joint: MaxSim of {min(start + chunk, len(doc_ids))}/{len(doc_ids)} documents' pairs")
        if path is not None:
            write_text_atomically(path, json.dumps(scores))
        return cls(scores)


@torch.no_grad()
def token_states(encoder: ItemEncoder, texts: list[str], *, normalise: bool = True) -> list[torch.Tensor]:
    """Each text's token states ``[L, H]`` in float32 (its real tokens, special ones included; L2-normalised
    unless ``normalise`` is False), in order."""
    tokenized = encoder.tokenizer(texts)
    out: list[torch.Tensor | None] = [None] * len(texts)
    for batch in token_budget_batches([len(t.ids) for t in tokenized], encoder.token_budget):
        hidden, mask = encoder.token_states([tokenized[i] for i in batch])
        hidden = (F.normalize(hidden.float(), dim=-1) if normalise else hidden.float()).cpu()
        for row, index in enumerate(batch):
            out[index] = hidden[row, : int(mask[row].sum())]
    return out
