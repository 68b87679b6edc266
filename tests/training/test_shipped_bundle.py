"""The trained bundles in bundles/: complete, pinned to the published base models, and, where the bases
are fetched (``mixlm models fetch``), loading to a working encoder and ranker."""

import json
from pathlib import Path

import pytest

from mixlm.encoders.base_reference import BASE_FILE
from mixlm.encoders.bundle import load_bundle
from mixlm.encoders.lora import has_adapter, read_adapter
from mixlm.encoders.pretrained import MANIFEST, PRETRAINED, model_dir

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
SHIPPED = (BUNDLES / "default", BUNDLES / "scifact")


@pytest.mark.parametrize("shipped", SHIPPED, ids=lambda path: path.name)
def test_the_shipped_bundle_is_complete_and_pinned(shipped):
    bundle = load_bundle(shipped)
    assert (bundle.config.encoder.base, bundle.config.ranker.base) == ("minilm-l6", "smollm2-135m")
    for part, name in ((bundle.encoder_dir, "minilm-l6"), (bundle.ranker_dir, "smollm2-135m")):
        pin = json.loads((part / BASE_FILE).read_text())
        assert pin == {"pretrained": name, "wheel_sha256": PRETRAINED[name].wheel_sha256}
        if part == bundle.encoder_dir and not has_adapter(part):
            continue  # the default recipe keeps the encoder frozen: its base alone
        config, tensors = read_adapter(part)
        for key, tensor in tensors.items():
            assert tensor.shape[0 if key.endswith("lora_A") else 1] == config.rank, key
    projection = bundle.load_projection()
    assert projection.weight.shape == (bundle.config.ranker.hidden_size, bundle.config.encoder.hidden_size)
    assert bundle.load_interaction().weight.shape == projection.weight.shape
    assert bundle.config.inputs.query_vector and bundle.config.inputs.interaction
    fusion = bundle.config.fusion
    assert fusion is not None and "train-dev" in fusion.fitted_on and "test" not in fusion.fitted_on
    assert fusion.mixlm_scale is not None and fusion.mixlm_scale > 0  # MixLM's log-odds keep their spread
    assert sum(f.stat().st_size for f in shipped.rglob("*") if f.is_file()) < 25 * 2**20


def test_the_scifact_bundle_reads_the_default_bundle_s_store_records():
    """Trained further from bundles/default with its projection frozen: the same item tokens, so one
    backfill serves both; only the ranker and the fusion weights differ."""
    default, scifact = map(load_bundle, SHIPPED)
    assert scifact.encoder_id == default.encoder_id
    assert scifact.projection_file.read_bytes() == default.projection_file.read_bytes()
    assert (scifact.ranker_dir / "adapter.safetensors").read_bytes() != (
        default.ranker_dir / "adapter.safetensors").read_bytes()
    assert scifact.config.fusion.fitted_on.startswith("scifact/train-dev")


@pytest.mark.skipif(not all((model_dir(n) / MANIFEST).is_file() for n in ("minilm-l6", "smollm2-135m")),
                    reason="the base models are not fetched (mixlm models fetch minilm-l6 smollm2-135m)")
@pytest.mark.parametrize("shipped", SHIPPED, ids=lambda path: path.name)
def test_the_shipped_bundle_loads_on_its_bases_and_scores_items_apart(shipped):
    """The mechanics only: its quality is measured in docs/training.md, not asserted here."""
    import numpy as np

    from mixlm.encoders import ItemEncoder
    from mixlm.ranker.model import MixedInputRanker

    bundle = load_bundle(shipped)
    encoder = ItemEncoder.from_bundle(bundle, device="cpu")  # refuses files that no longer match encoder_id
    ranker = MixedInputRanker.from_bundle(bundle, device="cpu")
    items = encoder.encode([
        ("Vitamin D and bone fractures", "Low serum vitamin D was associated with a higher risk of hip fractures "
                                         "in a cohort of older adults."),
        ("Supersonic flow over wings", "Pressure distributions on swept wings at Mach 2 were measured in a wind "
                                       "tunnel."),
    ])
    assert items[0].vectors.shape == (bundle.config.encoding.n_tokens, bundle.config.ranker.hidden_size)
    assert len(ranker.end_ids) == 1  # one end token: a candidate costs T_S + 1 positions
    query = "Vitamin D deficiency increases fracture risk."
    scores = ranker.score(query, [i.vectors for i in items], query_embedding=encoder.encode_queries([query])[0],
                          item_retrieval=np.stack([i.retrieval_vector for i in items]))
    assert np.isfinite(scores.log_odds).all() and abs(scores.log_odds[0] - scores.log_odds[1]) > 1e-3
