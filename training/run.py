"""A training run: its directory, resumable checkpoints and the optimisation loop shared by all stages.

A run directory holds ``config.json`` (the stage's settings), ``metrics.jsonl`` (one line per
logged step), ``checkpoint/`` (the latest trainable tensors, AdamW state and step, as
safetensors: never pickles) and, when the stage ends, ``bundle/``. Starting a stage on a run
directory that has a checkpoint resumes it; a different config there is an error.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mixlm.schemas.errors import InputError
from mixlm.training.config import LoopConfig

CHECKPOINT_DIR = "checkpoint"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file and an atomic rename: a run killed meanwhile leaves
    the old file or the new one, never a torn one that a resumed run would read."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


class RunDir:
    def __init__(self, path: str | Path, stage: str, config: dict):
        self.path = Path(path)
        self.stage = stage
        self.config = {"stage": stage, **config}
        stored = self.path / CONFIG_FILE
        if stored.is_file():
            previous = json.loads(stored.read_text())
            if previous != json.loads(json.dumps(self.config)):
                changed = sorted(k for k in set(previous) | set(self.config)
                                 if previous.get(k) != json.loads(json.dumps(self.config.get(k))))
                raise InputError(f"run directory {self.path} holds a {previous.get('stage')} run with other settings "
                                 f"({', '.join(changed)} differ); give a new --run directory to start afresh")
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomically(stored, json.dumps(self.config, indent=2, sort_keys=True) + "\n")

    @property
    def bundle_dir(self) -> Path:
        return self.path / "bundle"

    def log_metrics(self, row: dict) -> None:
        with open(self.path / METRICS_FILE, "a") as out:
            out.write(json.dumps(row) + "\n")

    def save_checkpoint(self, step: int, params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer,
                        average: dict[str, torch.Tensor] | None = None) -> None:
        """Atomically replace ``checkpoint/`` with the state after ``step`` steps (and the weights' moving
        average, when the loop keeps one)."""
        from safetensors.torch import save_file

        tensors = {f"param/{name}": p.detach().cpu().contiguous() for name, p in params.items()}
        tensors.update({f"ema/{name}": t.cpu().contiguous() for name, t in (average or {}).items()})
        for name, p in params.items():
            state = optimizer.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    tensors[f"{key}/{name}"] = state[key].detach().cpu().contiguous()
        staging = self.path / f".{CHECKPOINT_DIR}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        save_file(tensors, str(staging / "state.safetensors"))
        (staging / "progress.json").write_text(json.dumps({"step": step}) + "\n")
        final = self.path / CHECKPOINT_DIR
        old = self.path / f".{CHECKPOINT_DIR}.old"
        if final.exists():
            os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self, params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer,
                        average: dict[str, torch.Tensor] | None = None) -> int:
        """Restore the latest checkpoint into ``params``, ``optimizer`` and ``average``; the step to continue
        from (0: none)."""
        from safetensors.torch import load_file

        folder = self.path / CHECKPOINT_DIR
        if not (folder / "progress.json").is_file():
            return 0
        step = json.loads((folder / "progress.json").read_text())["step"]
        tensors = load_file(str(folder / "state.safetensors"))
        missing = sorted(f"param/{n}" for n in params if f"param/{n}" not in tensors)
        if missing:
            raise InputError(f"checkpoint in {folder} does not match this stage's parameters ({missing[0]} missing)")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(tensors[f"param/{name}"])
                if f"exp_avg/{name}" in tensors:
                    optimizer.state[p] = {"step": torch.tensor(float(step)),
                                          "exp_avg": tensors[f"exp_avg/{name}"].to(p.device),
                                          "exp_avg_sq": tensors[f"exp_avg_sq/{name}"].to(p.device)}
            for name, kept in (average or {}).items():
                kept.copy_(tensors[f"ema/{name}"])
        return step


def train_loop(run: RunDir, params: dict[str, nn.Parameter], step_fn: Callable[[int], dict[str, float]],
               loop: LoopConfig, *, log: Callable[[str], None], param_groups: list[dict] | None = None) -> dict:
    """Run ``step_fn(step)`` (forward and backward; returns its loss parts) from the checkpoint to ``loop.steps``.

    AdamW over ``params`` (or ``param_groups``, each with an ``lr_scale``), gradient clipping,
    the learning-rate schedule, a metrics line every ``log_every`` steps and a checkpoint every
    ``checkpoint_every`` steps and at the end. With ``loop.ema_decay`` the parameters end as the
    exponential moving average of their values after each step (the checkpoint keeps it, so a
    resumed run ends the same). Returns the mean of each loss part over the last log window.
    """
    groups = param_groups or [{"params": list(params.values()), "lr_scale": 1.0}]
    optimizer = torch.optim.AdamW(groups, lr=loop.lr, weight_decay=0.0)
    average = {name: p.detach().clone() for name, p in params.items()} if loop.ema_decay else None
    start = run.load_checkpoint(params, optimizer, average)
    if start:
        log(f"{run.stage}: resuming {run.path} at step {start}/{loop.steps}")
    window: dict[str, list[float]] = {}
    began = time.monotonic()
    for step in range(start, loop.steps):
        for group in optimizer.param_groups:
            group["lr"] = loop.lr_at(step) * group["lr_scale"]
        optimizer.zero_grad(set_to_none=True)
        parts = step_fn(step)
        torch.nn.utils.clip_grad_norm_(list(params.values()), loop.grad_clip)
        optimizer.step()
        if average is not None:
            with torch.no_grad():
                for name, p in params.items():
                    average[name].lerp_(p.detach(), 1 - loop.ema_decay)
        for key, value in parts.items():
            window.setdefault(key, []).append(value)
        done = step + 1
        if done % loop.log_every == 0 or done == loop.steps:
            means = {key: sum(v) / len(v) for key, v in window.items()}
            per_step = (time.monotonic() - began) / (done - start)
            run.log_metrics({"step": done, "lr": loop.lr_at(step), **means, "seconds_per_step": per_step})
            eta = per_step * (loop.steps - done)
            log(f"{run.stage}: step {done}/{loop.steps}  " + "  ".join(f"{k} {v:.4f}" for k, v in means.items())
                + f"  {per_step:.1f} s/step, {eta / 60:.1f} min left")
            last, window = means, {}
        if done % loop.checkpoint_every == 0 or done == loop.steps:
            run.save_checkpoint(done, params, optimizer, average)
    if average is not None:  # what the stage goes on with, and writes, is the average
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(average[name])
    return last if start < loop.steps else {}
