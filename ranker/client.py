"""``RankerClient``: score a query against candidate item ids using the store's embedding tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mixlm.ranker.model import MixedInputRanker
from mixlm.store import EmbeddingStore
from mixlm.store.errors import StoreError

DEFAULT_MAX_CANDIDATES = 1_000


class EncoderMismatchError(StoreError):
    pass


@dataclass(frozen=True)
class ScoredItem:
    item_id: str
    score: float  # p(yes)
    log_odds: float


@dataclass
class RankResult:
    """Scored items (request order for ``score``, best first for ``rank``) and the ids not in the store."""

    items: list[ScoredItem]
    missing: list[str] = field(default_factory=list)


class RankerClient:
    def __init__(self, ranker: MixedInputRanker, store: EmbeddingStore, *, encoder_id: str | None = None,
                 max_candidates: int = DEFAULT_MAX_CANDIDATES, backend: str = "amortized"):
        """``encoder_id`` defaults to the bundle's; embeddings of any other encoder are refused."""
        if encoder_id and encoder_id != ranker.encoder_id:
            raise EncoderMismatchError(f"embeddings of encoder {encoder_id} cannot feed this ranker, whose bundle "
                                       f"was trained with encoder {ranker.encoder_id}")
        active = store.active_encoder()
        if not encoder_id and active and active != ranker.encoder_id and ranker.encoder_id not in store.encoders():
            raise EncoderMismatchError(f"the store's active encoder {active} is not the bundle's encoder "
                                       f"{ranker.encoder_id}; backfill with this bundle first")
        self.ranker = ranker
        self.store = store
        self.max_candidates = max_candidates
        self.backend = backend

    @classmethod
    def open(cls, bundle_dir: str | Path, store_path: str | Path, **kwargs) -> RankerClient:
        return cls(MixedInputRanker.from_bundle(bundle_dir), EmbeddingStore.open(store_path), **kwargs)

    def score(self, query: str, item_ids: Sequence[str]) -> RankResult:
        """p(yes) per item id, in request order; duplicate ids are scored once."""
        unique = list(dict.fromkeys(item_ids))
        if len(unique) > self.max_candidates:
            raise ValueError(f"{len(unique)} candidates, more than the cap of {self.max_candidates} per request")
        if not query.strip():
            raise ValueError("the query is empty")
        lookup = self.store.get_many(self.ranker.encoder_id, unique)
        scores = self.ranker.score(query, list(lookup.vectors), backend=self.backend)
        items = [ScoredItem(item_id, float(p), float(lo))
                 for item_id, p, lo in zip(lookup.item_ids, scores.p_yes, scores.log_odds, strict=True)]
        return RankResult(items, lookup.missing)

    def rank(self, query: str, item_ids: Sequence[str], top_k: int | None = None) -> RankResult:
        """The ``top_k`` best items by p(yes), best first (the shape of ``CrossEncoder.rank``)."""
        result = self.score(query, item_ids)
        ordered = sorted(result.items, key=lambda item: item.log_odds, reverse=True)
        return RankResult(ordered[:top_k] if top_k else ordered, result.missing)
