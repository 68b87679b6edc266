import pytest
import torch

from mixlm.encoders.base_reference import BaseMismatchError, write_reference
from mixlm.encoders.hf_models import load_model
from mixlm.encoders.lora import (
    LoraConfig,
    LoraLinear,
    add_lora,
    apply_adapter,
    lora_state,
    merge_lora,
    save_adapter,
)
from mixlm.training.averaging import average_adapters


def _ranker(bundle):
    return load_model(bundle / "ranker", causal_lm=True, device="cpu", dtype="float32")


def _hidden(model, ids):
    with torch.no_grad():
        return model.base_model(input_ids=ids).last_hidden_state


def test_a_fresh_adapter_changes_nothing_and_only_it_trains(tiny_bundle):
    model, ids = _ranker(tiny_bundle), torch.tensor([[1, 5, 9, 3]])
    before = _hidden(model, ids)
    params = add_lora(model, LoraConfig(rank=2, alpha=4.0, top_layers=1))
    assert torch.allclose(_hidden(model, ids), before)
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in params}
    adapted = [name for name, m in model.named_modules() if isinstance(m, LoraLinear)]
    assert adapted and all(".layers.1." in name for name in adapted)  # tiny models have blocks 0 and 1


def test_merging_keeps_the_function_and_drops_the_adapters(tiny_bundle):
    model, ids = _ranker(tiny_bundle), torch.tensor([[2, 4, 6, 8, 10]])
    add_lora(model, LoraConfig(rank=3, alpha=6.0), seed=1)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if "lora_B" in name:
                tensor.normal_(0, 0.1)
    unmerged = _hidden(model, ids)
    merge_lora(model)
    assert not any(isinstance(m, LoraLinear) for m in model.modules())
    assert torch.allclose(_hidden(model, ids), unmerged, atol=1e-5)


def test_an_adapter_round_trips_through_a_base_reference(tiny_bundle, tmp_path):
    trained, ids = _ranker(tiny_bundle), torch.tensor([[3, 1, 4, 1, 5]])
    config = LoraConfig(rank=2, alpha=2.0, top_layers=2)
    add_lora(trained, config, seed=3)
    with torch.no_grad():
        for name, tensor in trained.named_parameters():
            if "lora_B" in name:
                tensor.uniform_(-0.2, 0.2)
    folder = tmp_path / "ranker"
    write_reference(folder, tiny_bundle / "ranker")
    save_adapter(trained, config, folder)
    loaded = load_model(folder, causal_lm=True, device="cpu", dtype="float32")
    assert torch.allclose(_hidden(loaded, ids), _hidden(trained, ids), atol=1e-5)
    unmerged = load_model(folder, causal_lm=True, device="cpu", dtype="float32", merge_adapter=False)
    assert set(lora_state(unmerged)) == set(lora_state(trained))


def test_a_changed_base_is_refused(tiny_bundle, tmp_path):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_bundle / "ranker", base)
    folder = tmp_path / "ranker"
    write_reference(folder, base)
    (base / "config.json").write_text((base / "config.json").read_text().replace("}", ', "note": 1}', 1))
    with pytest.raises(BaseMismatchError, match="changed since the adapter was trained"):
        load_model(folder, causal_lm=True)


def test_an_adapter_for_other_layers_is_refused(tiny_bundle, tmp_path):
    model = _ranker(tiny_bundle)
    add_lora(model, LoraConfig(rank=2, top_layers=1))
    save_adapter(model, LoraConfig(rank=2, top_layers=1), tmp_path)
    (tmp_path / "adapter.json").write_text('{"rank": 2, "alpha": 16.0, "top_layers": 2}')
    with pytest.raises(ValueError, match="does not fit the model"):
        apply_adapter(_ranker(tiny_bundle), tmp_path)


def _factors(generator, out_features=12, in_features=10, rank=3, shared_a=None):
    a = shared_a if shared_a is not None else torch.randn(rank, in_features, generator=generator)
    return {"layer.lora_A": a, "layer.lora_B": torch.randn(out_features, rank, generator=generator)}


def test_averaged_adapters_hold_the_mean_change_at_the_adapters_rank():
    """Adapters sharing A: their mean change has rank r, kept exactly. Independent adapters: the mean
    has rank 2r, and what is kept is its best rank-r part (the SVD's), reported below 1."""
    generator = torch.Generator().manual_seed(0)
    shared = torch.randn(3, 10, generator=generator)
    pair = [_factors(generator, shared_a=shared), _factors(generator, shared_a=shared)]
    mean = sum(s["layer.lora_B"] @ s["layer.lora_A"] for s in pair) / 2
    averaged, kept = average_adapters(pair, rank=3)
    assert averaged["layer.lora_A"].shape == (3, 10) and averaged["layer.lora_B"].shape == (12, 3)
    assert torch.allclose(averaged["layer.lora_B"] @ averaged["layer.lora_A"], mean, atol=1e-5)
    assert kept == pytest.approx(1.0, abs=1e-6)

    apart = [_factors(generator), _factors(generator)]
    mean = sum(s["layer.lora_B"] @ s["layer.lora_A"] for s in apart) / 2
    averaged, kept = average_adapters(apart, rank=3)
    singular = torch.linalg.svdvals(mean.double())
    error = (averaged["layer.lora_B"] @ averaged["layer.lora_A"] - mean).norm()
    assert error == pytest.approx(float(singular[3:].square().sum().sqrt()), rel=1e-4)
    assert kept == pytest.approx(float((singular[:3].square().sum() / singular.square().sum()).sqrt()), rel=1e-6)
    assert kept < 0.99
