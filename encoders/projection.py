"""Projection of encoder outputs to the ranker's hidden width."""

from __future__ import annotations

import torch
from torch import nn

PROJECTIONS = ("identity", "linear", "mlp")


def build_projection(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    if kind == "identity":
        if in_dim != out_dim:
            raise ValueError(f"identity projection needs equal widths, got {in_dim} -> {out_dim}")
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
    raise ValueError(f"projection must be one of {', '.join(PROJECTIONS)}, got {kind!r}")


def default_projection(in_dim: int, out_dim: int) -> str:
    return "identity" if in_dim == out_dim else "linear"


def init_projection(kind: str, in_dim: int, out_dim: int, seed: int) -> nn.Module:
    """A fresh projection, seeded; scaled so projected vectors have the norm of the inputs' rms."""
    generator = torch.Generator().manual_seed(seed)
    module = build_projection(kind, in_dim, out_dim)
    for parameter in module.parameters():
        if parameter.dim() == 2:
            with torch.no_grad():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / parameter.shape[1] ** 0.5)
        else:
            nn.init.zeros_(parameter)
    return module
