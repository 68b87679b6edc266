"""Tiny bundles trained on a few real SciFact train queries: the stages run for real, in seconds."""

from pathlib import Path

import pytest

SCIFACT = Path(__file__).resolve().parents[2] / "data" / "scifact"


def small_data(**overrides):
    from mixlm.training.config import DataConfig

    settings = {"datasets": (str(SCIFACT),), "max_queries": 6, "group_size": 3, "queries_per_step": 2, "bm25_depth": 20}
    return DataConfig(**{**settings, **overrides})


def teacher_config(steps=4, **data):
    from mixlm.encoders.config import LoraConfig
    from mixlm.training.config import LoopConfig, TeacherConfig

    return TeacherConfig(small_data(**data), LoopConfig(steps=steps, lr=5e-3, warmup_steps=1, checkpoint_every=2,
                                                        log_every=1), LoraConfig(rank=4, alpha=8.0, top_layers=1),
                         max_item_tokens=48)


@pytest.fixture(scope="session")
def base_bundle(tmp_path_factory):
    """BERT-style tiny encoder (mean pooling) and tiny Llama ranker."""
    from mixlm.encoders import init_tiny_bundle

    return init_tiny_bundle(tmp_path_factory.mktemp("train") / "base", encoder_kind="encoder-only").path


@pytest.fixture(scope="session")
def teacher_bundle(base_bundle, tmp_path_factory):
    from mixlm.training.teacher import train_teacher

    return train_teacher(base_bundle, tmp_path_factory.mktemp("train") / "teacher", teacher_config(),
                         log=lambda line: None).path
