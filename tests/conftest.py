"""Fixtures shared across packages: a tiny model bundle (the Kafka broker fixture is in tests/pipelines)."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A tiny random decoder encoder + ranker with an in-process tokenizer (T_S = 1)."""
    from mixlm.encoders import init_tiny_bundle

    path = tmp_path_factory.mktemp("bundle") / "tiny"
    init_tiny_bundle(path, seed=0)
    return path
