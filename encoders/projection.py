"""Projection of pooled encoder states to the ranker's hidden width, stored as safetensors."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mixlm.encoders.config import ProjectionConfig
from mixlm.schemas.errors import InputError, PathNotFoundError


def build_projection(config: ProjectionConfig) -> nn.Module:
    """An uninitialised module of the configured kind (identity has no parameters)."""
    if config.kind == "identity":
        return nn.Identity()
    if config.kind == "linear":
        return nn.Linear(config.in_dim, config.out_dim)
    return nn.Sequential(nn.Linear(config.in_dim, config.out_dim), nn.GELU(), nn.Linear(config.out_dim, config.out_dim))


def init_projection(config: ProjectionConfig, seed: int) -> nn.Module:
    """A fresh, seeded projection; weights ~ N(0, 1/fan_in), biases 0.

    That init keeps each output coordinate at about the rms of the input coordinates, so
    untrained embedding tokens reach the ranker at the scale of the encoder's states.
    """
    generator = torch.Generator().manual_seed(seed)
    module = build_projection(config)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.dim() == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / parameter.shape[1] ** 0.5)
            else:
                parameter.zero_()
    return module


def save_projection(module: nn.Module, path: str | Path) -> None:
    """Weights as safetensors (an identity writes an empty file, so every bundle has one)."""
    from safetensors.torch import save_file

    state = {name: tensor.detach().to("cpu", torch.float32).contiguous()
             for name, tensor in module.state_dict().items()}
    save_file(state, str(path))


def load_projection(config: ProjectionConfig, path: str | Path) -> nn.Module:
    return _load_into(build_projection(config), path, f"a {config.kind} projection {config.in_dim} -> {config.out_dim}")


def init_interaction(in_dim: int, out_dim: int, seed: int) -> nn.Module:
    """The ranker's interaction matrix (``RankerInputs.interaction``), seeded, small: it starts as a nudge."""
    generator = torch.Generator().manual_seed(seed)
    module = nn.Linear(in_dim, out_dim, bias=False)
    with torch.no_grad():
        module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.02)
    return module


def load_interaction(in_dim: int, out_dim: int, path: str | Path) -> nn.Module:
    return _load_into(nn.Linear(in_dim, out_dim, bias=False), path, f"an interaction matrix {in_dim} -> {out_dim}")


def _load_into(module: nn.Module, path: str | Path, what: str) -> nn.Module:
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise PathNotFoundError(f"{path} is missing: the bundle needs {what}")
    try:
        module.load_state_dict(load_file(str(path)))
    except RuntimeError as exc:  # missing or mis-shaped tensors
        raise InputError(f"{path} does not hold {what}: {str(exc).splitlines()[0]}") from None
    return module.eval()
