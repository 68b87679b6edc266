"""What a ranking request is and what it returns, shared by the in-process and the HTTP clients.

Torch-free on purpose: ``mixlm rank --server`` and HTTP callers import these without loading models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ScoredItem:
    item_id: str
    score: float  # the final score: MixLM's log-odds, fused with first-stage scores when given
    p_yes: float
    log_odds: float
    title: str = ""  # the item's display title from the store (empty for records stored before titles)


@dataclass
class RankResult:
    """Scored items (request order for ``score``, best first for ``rank``) and the ids not in the store."""

    items: list[ScoredItem]
    missing: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RankRequest:
    """One query, its candidate ids and, optionally, their first-stage scores (e.g. BM25)."""

    query: str
    item_ids: Sequence[str]
    first_stage_scores: Mapping[str, float] | None = None


def ranked(result: RankResult, top_k: int | None) -> RankResult:
    """``result`` best first by final score, cut to ``top_k`` when given."""
    ordered = sorted(result.items, key=lambda item: item.score, reverse=True)
    return RankResult(ordered[:top_k] if top_k else ordered, result.missing)
