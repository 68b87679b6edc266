import pytest
import torch

from mixlm.training.config import LoopConfig
from mixlm.training.run import RunDir, train_loop


def _train(run_dir, stop_at=None, ema_decay=0.0, seen=None):
    """A linear model's 8 steps; ``seen`` collects the weights each step starts from."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    data = torch.randn(32, 4), torch.randn(32, 1)

    def step(index):
        if index == stop_at:
            raise KeyboardInterrupt
        if seen is not None:
            seen.append({name: p.detach().clone() for name, p in model.named_parameters()})
        rows = slice((index * 4) % 32, (index * 4) % 32 + 4)
        loss = torch.nn.functional.mse_loss(model(data[0][rows]), data[1][rows])
        loss.backward()
        return {"loss": loss.item()}

    run = RunDir(run_dir, "toy", {"what": "linear"})
    loop = LoopConfig(steps=8, lr=0.05, warmup_steps=2, checkpoint_every=2, log_every=2, ema_decay=ema_decay)
    params = dict(model.named_parameters())
    train_loop(run, params, step, loop, log=lambda line: None)
    return {name: p.detach().clone() for name, p in params.items()}


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    straight = _train(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "b", stop_at=5)
    resumed = _train(tmp_path / "b")
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 + 2  # steps 2 and 4 before the interruption, 6 and 8 after


def test_a_moving_average_run_ends_on_the_average_and_resumes_to_it(tmp_path):
    seen = []
    raw = _train(tmp_path / "raw", seen=seen)
    after = seen[1:] + [raw]  # the weights after each step
    averaged = _train(tmp_path / "ema", ema_decay=0.5)
    for name in raw:
        expected = seen[0][name]  # the average starts at the initial weights
        for weights in after:
            expected = 0.5 * expected + 0.5 * weights[name]
        assert torch.allclose(averaged[name], expected, atol=1e-6), name
        assert not torch.allclose(averaged[name], raw[name])
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "ema-b", stop_at=5, ema_decay=0.5)
    resumed = _train(tmp_path / "ema-b", ema_decay=0.5)
    assert all(torch.equal(averaged[name], resumed[name]) for name in averaged)


def test_a_run_directory_refuses_other_settings(tmp_path):
    RunDir(tmp_path, "teacher", {"lr": 1e-3})
    with pytest.raises(ValueError, match="lr differ"):
        RunDir(tmp_path, "teacher", {"lr": 2e-3})


def test_the_schedule_warms_up_then_decays():
    loop = LoopConfig(steps=100, lr=1.0, warmup_steps=10)
    rates = [loop.lr_at(s) for s in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:], strict=False))
    assert rates[-1] == pytest.approx(0.1, abs=0.01)


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_a_moving_average_needs_a_decay_below_one(decay):
    from mixlm.schemas.errors import InputError

    with pytest.raises(InputError, match="ema_decay"):
        LoopConfig(ema_decay=decay)
