"""The product's final score: MixLM's log-odds fused with first-stage scores (``FusionConfig``).

The first stages' scores are standardised over one request's candidates before weighting, so
BM25 scores and cosines, whose scales differ by orders of magnitude and from query to query,
mix with weights that transfer across queries and collections. MixLM's log-odds are on one
scale already (the pointwise loss calibrates them), so they are centred and divided by a
constant fitted with the weights, and how far apart MixLM puts a request's candidates keeps
its meaning.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mixlm.encoders.config import FusionConfig
from mixlm.schemas.errors import InputError

FEATURES = ("mixlm", "first_stage", "dense")


def standardise(values: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` over one request's candidates; all zeros when they do not vary."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return values
    spread = values.std()
    return (values - values.mean()) / spread if spread > 1e-12 else np.zeros_like(values)


def scaled_log_odds(log_odds: np.ndarray, scale: float | None) -> np.ndarray:
    """MixLM's feature: log-odds centred and divided by the fitted ``scale``; standardised without one."""
    if scale is None:
        return standardise(log_odds)
    log_odds = np.asarray(log_odds, dtype=np.float64)
    return (log_odds - log_odds.mean()) / scale if log_odds.size else log_odds


def fuse(fusion: FusionConfig | None, log_odds: np.ndarray, *, first_stage: np.ndarray | None = None,
         dense: np.ndarray | None = None) -> np.ndarray:
    """The final score of each candidate of one request.

    Without first-stage scores (or without fitted weights) it is MixLM's log-odds unchanged, so
    a caller that passes none gets MixLM alone. ``dense`` counts only with first-stage scores.
    """
    log_odds = np.asarray(log_odds, dtype=np.float64)
    if fusion is None or first_stage is None:
        return log_odds
    features: Mapping[str, np.ndarray | None] = {"mixlm": log_odds, "first_stage": first_stage, "dense": dense}
    total = np.zeros_like(log_odds)
    for name in FEATURES:
        weight, values = getattr(fusion, name), features[name]
        if weight and values is not None:
            if len(values) != len(log_odds):
                raise InputError(f"{name}: {len(values)} scores for {len(log_odds)} candidates")
            total += weight * (scaled_log_odds(values, fusion.mixlm_scale) if name == "mixlm" else standardise(values))
    return total
