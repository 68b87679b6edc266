"""Writing a trained bundle: adapters on pinned base models, the projection, and a fresh encoder_id.

A trained part (encoder or ranker) is stored as ``base.json`` + its LoRA adapter, so a bundle
trained on SmolLM2 and MiniLM is a few MB; an untouched part is copied from the source bundle.
The bundle is staged in a hidden sibling directory and renamed into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from torch import nn

from mixlm.encoders.base_reference import BASE_FILE, is_reference, write_reference
from mixlm.encoders.bundle import (
    ENCODER_DIR,
    INTERACTION_FILE,
    PROJECTION_FILE,
    RANKER_DIR,
    Bundle,
    load_bundle,
    seal_bundle,
)
from mixlm.encoders.config import BundleConfig
from mixlm.encoders.lora import adapter_config, save_adapter
from mixlm.encoders.projection import save_projection
from mixlm.schemas.errors import InputError


def _write_part(source_dir: Path, target_dir: Path, model: nn.Module | None) -> None:
    if model is None:
        shutil.copytree(source_dir, target_dir)
        return
    config = adapter_config(model)
    if config is None:
        raise InputError(f"the trained model for {target_dir.name}/ has no LoRA adapters to save")
    if is_reference(source_dir):
        target_dir.mkdir(parents=True)
        shutil.copy2(source_dir / BASE_FILE, target_dir / BASE_FILE)
    else:
        write_reference(target_dir, source_dir)
    save_adapter(model, config, target_dir)


def write_bundle(out_dir: str | Path, source: Bundle, config: BundleConfig, *, encoder: nn.Module | None = None,
                 ranker: nn.Module | None = None, projection: nn.Module | None = None,
                 interaction: nn.Module | None = None) -> Bundle:
    """``source`` with the given trained parts (unmerged adapters) and settings, sealed, at ``out_dir``."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as staging_root:
        staging = Path(staging_root) / out.name
        staging.mkdir()
        _write_part(source.encoder_dir, staging / ENCODER_DIR, encoder)
        _write_part(source.ranker_dir, staging / RANKER_DIR, ranker)
        if interaction is not None:
            save_projection(interaction, staging / RANKER_DIR / INTERACTION_FILE)
        elif config.inputs.interaction and not (staging / RANKER_DIR / INTERACTION_FILE).exists():
            shutil.copy2(source.ranker_dir / INTERACTION_FILE, staging / RANKER_DIR / INTERACTION_FILE)
        if projection is None:
            shutil.copy2(source.projection_file, staging / PROJECTION_FILE)
        else:
            save_projection(projection, staging / PROJECTION_FILE)
        config.save(staging)
        seal_bundle(staging)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    return load_bundle(out)
