"""Text baselines on the same ranker: the full item text, or its first K tokens, in the prompt.

They are the paper's full-text (teacher-style) and "summarized" baselines: the same model and
head, with the item's own tokens where MixLM puts its embedding tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mixlm.ranker.defaults import DEFAULT_TRUNCATE_TOKENS
from mixlm.ranker.model import MixedInputRanker, Scores


class FullTextRanker:
    def __init__(self, ranker: MixedInputRanker, *, max_item_tokens: int | None = None):
        self.ranker = ranker
        self.max_item_tokens = max_item_tokens

    def item_tokens(self, text: str) -> torch.Tensor:
        tokens = self.ranker.item_text_embeddings(text)
        return tokens if self.max_item_tokens is None else tokens[: self.max_item_tokens]

    @torch.inference_mode()
    def score(self, query: str, texts: Sequence[str], *, backend: str = "amortized") -> Scores:
        return self.ranker.score(query, [self.item_tokens(text) for text in texts], backend=backend)

    def rank(self, query: str, texts: Sequence[str], top_k: int | None = None) -> list[tuple[int, float]]:
        """(index into ``texts``, p_yes), best first."""
        scores = self.score(query, texts)
        order = sorted(range(len(texts)), key=lambda i: scores.log_odds[i], reverse=True)
        return [(i, float(scores.p_yes[i])) for i in order[:top_k]]


class TruncatedTextRanker(FullTextRanker):
    """The first ``max_item_tokens`` tokens of each item: the "summarized and pruned" baseline."""

    def __init__(self, ranker: MixedInputRanker, *, max_item_tokens: int = DEFAULT_TRUNCATE_TOKENS):
        super().__init__(ranker, max_item_tokens=max_item_tokens)
