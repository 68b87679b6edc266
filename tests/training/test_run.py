import pytest
import torch

from mixlm.training.config import LoopConfig
from mixlm.training.run import RunDir, train_loop


def _train(run_dir, stop_at=None):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    data = torch.randn(32, 4), torch.randn(32, 1)

    def step(index):
        if index == stop_at:
            raise KeyboardInterrupt
        rows = slice((index * 4) % 32, (index * 4) % 32 + 4)
        loss = torch.nn.functional.mse_loss(model(data[0][rows]), data[1][rows])
        loss.backward()
        return {"loss": loss.item()}

    run = RunDir(run_dir, "toy", {"what": "linear"})
    loop = LoopConfig(steps=8, lr=0.05, warmup_steps=2, checkpoint_every=2, log_every=2)
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
