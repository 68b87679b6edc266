import pytest
import torch

from mixlm.encoders.config import ProjectionConfig
from mixlm.encoders.projection import init_projection, load_projection, save_projection


@pytest.mark.parametrize("kind", ["identity", "linear", "mlp"])
def test_save_load_round_trip(kind, tmp_path):
    config = ProjectionConfig(kind, 8, 8 if kind == "identity" else 12)
    module = init_projection(config, seed=3)
    save_projection(module, tmp_path / "p.safetensors")
    loaded = load_projection(config, tmp_path / "p.safetensors")
    x = torch.randn(5, 8)
    assert loaded(x).shape == (5, config.out_dim)
    torch.testing.assert_close(loaded(x), module(x), rtol=0, atol=0)


def test_init_is_seeded_and_keeps_the_scale():
    config = ProjectionConfig("linear", 256, 512)
    a, b, c = init_projection(config, 0), init_projection(config, 0), init_projection(config, 1)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)
    x = torch.randn(64, 256)
    assert a(x).pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=0.1)


def test_mismatches_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="equal widths"):
        ProjectionConfig("identity", 8, 12)
    with pytest.raises(ValueError, match="projection must be one of"):
        ProjectionConfig("conv", 8, 12)
    save_projection(init_projection(ProjectionConfig("linear", 8, 12), 0), tmp_path / "p.safetensors")
    with pytest.raises(ValueError, match="does not hold a linear projection 8 -> 16"):
        load_projection(ProjectionConfig("linear", 8, 16), tmp_path / "p.safetensors")
