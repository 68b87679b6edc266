import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mixlm.encoders import ItemEncoder, init_tiny_bundle, load_bundle, seal_bundle
from mixlm.schemas import check_encoder_id


def test_stable_across_loads_and_rebuilds(tiny_bundle, tmp_path):
    stored = load_bundle(tiny_bundle).encoder_id
    check_encoder_id(stored)
    assert load_bundle(tiny_bundle).fingerprint() == load_bundle(tiny_bundle).fingerprint() == stored
    assert init_tiny_bundle(tmp_path / "again", seed=0).encoder_id == stored  # same weights + settings


@pytest.mark.parametrize("change", [{"seed": 1}, {"n_tokens": 4, "pooling": "last_k"}, {"pooling": "mean"},
                                    {"max_length": 64}, {"projection": "mlp"},
                                    {"encoder_kind": "encoder-only"}])
def test_changes_with_anything_that_changes_the_output(tiny_bundle, tmp_path, change):
    assert init_tiny_bundle(tmp_path / "other", **change).encoder_id != load_bundle(tiny_bundle).encoder_id


def test_changed_weights_are_refused_until_sealed_again(tiny_bundle, tmp_path):
    bundle_dir = tmp_path / "trained"
    shutil.copytree(tiny_bundle, bundle_dir)
    weights = bundle_dir / "encoder" / "model.safetensors"
    state = load_file(str(weights))
    name = sorted(state)[0]
    state[name] = state[name] + 0.01 * torch.ones_like(state[name])  # "training" touched the encoder
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="changed after its encoder_id was computed"):
        ItemEncoder.from_bundle(bundle_dir)
    sealed = seal_bundle(bundle_dir)
    assert sealed.encoder_id != load_bundle(tiny_bundle).encoder_id
    assert ItemEncoder.from_bundle(bundle_dir).encoder_id == sealed.encoder_id == load_bundle(bundle_dir).encoder_id


def test_item_template_and_projection_weights_count(tiny_bundle, tmp_path):
    base = ItemEncoder.from_model_dir(tiny_bundle / "encoder", max_length=128)
    other_template = ItemEncoder.from_model_dir(tiny_bundle / "encoder", max_length=128,
                                                item_template="{title}: {text}")
    assert base.encoder_id != other_template.encoder_id
    bundle_dir = tmp_path / "projection"
    shutil.copytree(tiny_bundle, bundle_dir)
    weights = load_file(str(bundle_dir / "projection.safetensors"))
    save_file({k: v * 2 for k, v in weights.items()}, str(bundle_dir / "projection.safetensors"))
    assert load_bundle(bundle_dir).fingerprint() != load_bundle(tiny_bundle).encoder_id
