"""Averaging trained bundles' rankers: several runs of one recipe made into one bundle (a weight soup).

Runs that continue the same bundle with other seeds see the queries in other orders and end in
nearby points of one basin; the mean of their weights ranks like the mean of their scores at the
cost of one ranker, and is less at the mercy of one run's luck. Only bundles that read items and
queries alike (``reading_difference``, the same ``encoder_id``) and carry adapters of one shape
are averaged, so the result ranks from the store records every one of them reads.

A LoRA adapter stores ``B A``, not the change itself, and the mean of the factors is not the
factor of the mean: the change ``B_i A_i`` of each linear layer is averaged, and its best
rank-``r`` approximation (truncated SVD) is stored at the adapters' rank ``r``. The share of the
mean change that this keeps is reported (1.0: exact). The interaction matrices are averaged as
they are. The fusion weights are not carried over: they were fitted to each run's own scores, so
the result has none until ``mixlm train fusion`` fits them to its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from mixlm.encoders.bundle import Bundle, load_bundle, reading_difference
from mixlm.encoders.config import LoraConfig
from mixlm.encoders.lora import load_lora_state, read_adapter
from mixlm.schemas.errors import InputError
from mixlm.training.export import write_bundle


def _compatible(bundles: Sequence[Bundle], loras: Sequence[LoraConfig]) -> None:
    first = bundles[0]
    for other, lora in zip(bundles[1:], loras[1:], strict=True):
        difference = reading_difference(first.config, other.config)
        if difference:
            raise InputError(f"{other.path} reads items and queries unlike {first.path}: {difference}")
        if other.encoder_id != first.encoder_id:
            raise InputError(f"{other.path} has encoder_id {other.encoder_id}, {first.path} {first.encoder_id}: "
                             "their item tokens differ, so their rankers cannot be averaged")
        if lora != loras[0]:
            raise InputError(f"{other.path}'s ranker adapter is {lora}, {first.path}'s {loras[0]}")


def average_adapters(states: Sequence[dict[str, torch.Tensor]], rank: int) -> tuple[dict[str, torch.Tensor], float]:
    """The rank-``rank`` adapter nearest the mean of the adapters' changes, and the smallest share of
    a layer's mean change (by Frobenius norm) that it keeps."""
    averaged: dict[str, torch.Tensor] = {}
    kept = 1.0
    for key in sorted(k for k in states[0] if k.endswith(".lora_A")):
        name = key[: -len(".lora_A")]
        change = sum(s[f"{name}.lora_B"].double() @ s[f"{name}.lora_A"].double() for s in states) / len(states)
        left, singular, right = torch.linalg.svd(change, full_matrices=False)
        total = singular.square().sum()
        if total > 0:
            kept = min(kept, float((singular[:rank].square().sum() / total).sqrt()))
        averaged[f"{name}.lora_B"] = (left[:, :rank] * singular[:rank]).float().contiguous()
        averaged[f"{name}.lora_A"] = right[:rank].float().contiguous()
    return averaged, kept


def _average_interaction(bundles: Sequence[Bundle]):
    modules = [bundle.load_interaction() for bundle in bundles]
    with torch.no_grad():
        modules[0].weight.copy_(torch.stack([m.weight for m in modules]).mean(dim=0))
    return modules[0]


def average_bundles(bundle_dirs: Sequence[str | Path], out_dir: str | Path, *,
                    log: Callable[[str], None] = print) -> tuple[Bundle, float]:
    """Write the bundle whose ranker is the average of the given bundles' (see the module's docstring);
    returns it and the share of the mean adapter change kept at the adapters' rank."""
    if len(bundle_dirs) < 2:
        raise InputError("averaging needs at least two bundles")
    bundles = [load_bundle(d) for d in bundle_dirs]
    loras, states = zip(*(read_adapter(bundle.ranker_dir) for bundle in bundles), strict=True)
    _compatible(bundles, loras)
    first, lora = bundles[0], loras[0]
    averaged, kept = average_adapters(states, lora.rank)
    log(f"average: {len(bundles)} rankers; the rank-{lora.rank} adapter keeps {kept:.4f} of the mean change "
        "in the layer it fits worst")
    ranker = first.load_ranker(merge_adapter=False)
    load_lora_state(ranker, averaged)
    interaction = _average_interaction(bundles) if first.config.inputs.interaction else None
    config = dataclasses.replace(first.config, fusion=None)
    return write_bundle(out_dir, first, config, ranker=ranker, interaction=interaction), kept
