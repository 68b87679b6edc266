"""Low-rank adapters (LoRA) on a model's linear layers, saved as safetensors and merged on load.

Training adds ``W x + (alpha / r) B A x`` beside chosen linear layers (``A`` random, ``B`` zero,
so an adapter starts as the identity change); only ``A`` and ``B`` learn. A bundle stores the
adapter, not the model: loading merges ``(alpha / r) B A`` into ``W``, so inference costs nothing
extra. ``top_layers`` limits the adapters to the last N transformer blocks, which also keeps
backward passes out of the frozen blocks below.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from mixlm.encoders.config import LoraConfig
from mixlm.schemas.errors import InputError

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
# "model.layers.12.self_attn.q_proj" (Llama and most decoders), "encoder.layer.3.attention.self.query" (BERT)
_BLOCK = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.")


class LoraLinear(nn.Module):
    """``base(x) + scale * B A x``; A and B stay float32 whatever the base's dtype (bfloat16 on a GPU)."""

    def __init__(self, base: nn.Linear, config: LoraConfig, generator: torch.Generator):
        super().__init__()
        self.base = base
        self.scale = config.scale
        a = torch.randn(config.rank, base.in_features, generator=generator) / base.in_features ** 0.5
        self.lora_A = nn.Parameter(a.to(base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, config.rank, device=base.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = (x.to(self.lora_A.dtype) @ self.lora_A.T @ self.lora_B.T) * self.scale
        return self.base(x) + delta.to(x.dtype)

    def delta(self) -> torch.Tensor:
        return (self.lora_B.float() @ self.lora_A.float()) * self.scale


def _blocks(model: nn.Module) -> dict[str, int]:
    """Linear layer name -> index of the transformer block that holds it."""
    found = {}
    for name, module in model.named_modules():
        match = _BLOCK.search(name)
        if isinstance(module, nn.Linear) and match:
            found[name] = int(match.group(1))
    if not found:
        raise InputError(f"{type(model).__name__} has no linear layers inside numbered blocks to adapt")
    return found


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def add_lora(model: nn.Module, config: LoraConfig, *, seed: int = 0) -> list[nn.Parameter]:
    """Freeze ``model`` and put adapters beside the linear layers of its last ``top_layers`` blocks.

    Returns the adapter parameters (the only ones that require grad afterwards).
    """
    blocks = _blocks(model)
    first = max(blocks.values()) + 1 - (config.top_layers or max(blocks.values()) + 1)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model._mixlm_lora = config
    generator = torch.Generator().manual_seed(seed)
    params: list[nn.Parameter] = []
    for name, block in sorted(blocks.items()):
        if block >= first:
            wrapped = LoraLinear(model.get_submodule(name), config, generator)
            _set_module(model, name, wrapped)
            params += [wrapped.lora_A, wrapped.lora_B]
    return params


def _adapters(model: nn.Module) -> dict[str, LoraLinear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLinear)}


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors, keyed ``<linear name>.lora_A`` / ``.lora_B``, float32 on the CPU."""
    state = {}
    for name, module in _adapters(model).items():
        state[f"{name}.lora_A"] = module.lora_A.detach().to("cpu", torch.float32).contiguous()
        state[f"{name}.lora_B"] = module.lora_B.detach().to("cpu", torch.float32).contiguous()
    return state


def load_lora_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy saved adapter tensors into a model that ``add_lora`` prepared with the same config."""
    adapters = _adapters(model)
    expected = {f"{name}.lora_{part}" for name in adapters for part in "AB"}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise InputError(f"adapter does not fit the model: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for name, module in adapters.items():
            module.lora_A.copy_(state[f"{name}.lora_A"])
            module.lora_B.copy_(state[f"{name}.lora_B"])


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its linear layer and drop the adapter modules (in place)."""
    with torch.no_grad():
        for name, module in _adapters(model).items():
            base = module.base
            base.weight.copy_((base.weight.float() + module.delta().to(base.weight.device)).to(base.weight.dtype))
            _set_module(model, name, base)
    return model


def save_adapter(model: nn.Module, config: LoraConfig, folder: str | Path) -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(lora_state(model), str(folder / ADAPTER_WEIGHTS))
    (folder / ADAPTER_CONFIG).write_text(json.dumps(asdict(config), indent=2) + "\n")


def has_adapter(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter tensors of a model loaded unmerged, switched to trainable (the rest stays frozen)."""
    params = []
    for module in _adapters(model).values():
        params += [module.lora_A, module.lora_B]
    for parameter in params:
        parameter.requires_grad_(True)
    return params


def adapter_config(model: nn.Module) -> LoraConfig | None:
    """The config an unmerged model's adapters were built with (None without adapters)."""
    return getattr(model, "_mixlm_lora", None)


def read_adapter(folder: str | Path) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        config = LoraConfig(**json.loads((folder / ADAPTER_CONFIG).read_text()))
    except (OSError, TypeError, ValueError) as exc:
        raise InputError(f"{folder / ADAPTER_CONFIG} is not a LoRA adapter config: {exc}") from None
    return config, load_file(str(folder / ADAPTER_WEIGHTS))


def apply_adapter(model: nn.Module, folder: str | Path, *, merge: bool = True) -> nn.Module:
    """Load the adapter saved in ``folder`` onto ``model``; merged into its weights unless ``merge=False``."""
    config, state = read_adapter(folder)
    add_lora(model, config)
    load_lora_state(model, state)
    return merge_lora(model) if merge else model
