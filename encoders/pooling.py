"""Pooling of encoder hidden states ``[B, L, H]`` into T_S embedding tokens ``[B, T_S, H]``.

Positions come from the attention mask, never from assuming where the padding is, so left
and right padding give the same result.

- ``last``: the last real token (T_S = 1), what a decoder has read the whole item at.
- ``last_k``: the last k real tokens, in order. An item shorter than k repeats its first
  token in front (``a b`` with k = 4 gives ``a a a b``), so every item has exactly k.
- ``mean``: the masked mean over real tokens (T_S = 1), in float32 whatever the input dtype.
"""

from __future__ import annotations

import torch

from mixlm.encoders.config import POOLINGS
from mixlm.schemas.errors import InputError


def last_positions(attention_mask: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, k]`` indices of each row's last k real tokens, in order (short rows repeat their first)."""
    mask = attention_mask.bool()
    length = mask.shape[1]
    positions = torch.arange(length, device=mask.device)
    # a stable order that puts each row's real positions first, ascending
    real_first = torch.argsort((~mask).long() * length + positions, dim=1)
    ranks = (mask.sum(dim=1, keepdim=True) - k + torch.arange(k, device=mask.device)).clamp(min=0)
    return real_first.gather(1, ranks)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, strategy: str, n_tokens: int = 1) -> torch.Tensor:
    """``[B, L, H]`` hidden states -> ``[B, n_tokens, H]``; every row needs at least one real token."""
    if strategy not in POOLINGS:
        raise InputError(f"pooling must be one of {', '.join(POOLINGS)}, got {strategy!r}")
    if strategy != "last_k" and n_tokens != 1:
        raise InputError(f"{strategy} pooling gives one embedding token; use last_k for {n_tokens}")
    if not bool(attention_mask.bool().any(dim=1).all()):
        raise ValueError("cannot pool a row without tokens (its attention mask is all zeros)")
    if strategy == "mean":
        weights = attention_mask.float().unsqueeze(2)  # summed in float32: bfloat16 sums lose digits
        return ((hidden.float() * weights).sum(dim=1) / weights.sum(dim=1)).unsqueeze(1)
    index = last_positions(attention_mask, n_tokens)
    return hidden.gather(1, index.unsqueeze(2).expand(-1, -1, hidden.shape[2]))
