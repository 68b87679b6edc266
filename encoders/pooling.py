"""Pooling of encoder hidden states into T_S embedding tokens.

Works with left or right padding: positions come from the attention mask, never from
assuming where the padding is.
"""

from __future__ import annotations

import torch

POOLINGS = ("last", "last_k", "mean")


def last_positions(attention_mask: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[B, k]`` of each row's last k real tokens, in order; short rows repeat their first token."""
    mask = attention_mask.bool()
    lengths = mask.sum(dim=1)  # [B]
    # rank[b, j] = how many real tokens are at or before position j
    rank = mask.long().cumsum(dim=1)
    wanted = lengths.unsqueeze(1) - k + 1 + torch.arange(k, device=mask.device).unsqueeze(0)  # ranks we want
    wanted = wanted.clamp(min=1)
    # position of the token with rank r: the first j where rank[j] == r and mask[j]
    hits = (rank.unsqueeze(1) == wanted.unsqueeze(2)) & mask.unsqueeze(1)  # [B, k, L]
    return hits.float().argmax(dim=2)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, strategy: str, n_tokens: int) -> torch.Tensor:
    """``[B, L, H]`` hidden states -> ``[B, n_tokens, H]`` embedding tokens."""
    if strategy == "mean":
        if n_tokens != 1:
            raise ValueError("mean pooling gives one embedding token (n_tokens=1)")
        weights = attention_mask.to(hidden.dtype).unsqueeze(2)
        return ((hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)).unsqueeze(1)
    if strategy == "last":
        if n_tokens != 1:
            raise ValueError("last pooling gives one embedding token; use last_k for more")
        k = 1
    elif strategy == "last_k":
        k = n_tokens
    else:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {strategy!r}")
    index = last_positions(attention_mask, k)
    return torch.gather(hidden, 1, index.unsqueeze(2).expand(-1, -1, hidden.shape[2]))
