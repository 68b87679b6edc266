"""Fixtures shared across packages: a tiny model bundle, the Tansu binary (broker fixtures: tests/pipelines)."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
# Exact parity checks (naive == amortized, merged == unmerged) are made in float32 on every CPU;
# the bfloat16 default of CPUs with bfloat16 units has its own tests against float32.
os.environ.setdefault("MIXLM_DTYPE", "float32")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A tiny random decoder encoder + ranker with an in-process tokenizer (T_S = 1)."""
    from mixlm.encoders import init_tiny_bundle

    path = tmp_path_factory.mktemp("bundle") / "tiny"
    init_tiny_bundle(path, seed=0)
    return path


@pytest.fixture()
def kafka_broker_binary():
    """The embedded broker's Tansu binary (tests that start brokers skip without it)."""
    from mixlm.pipelines.kafka_broker import BrokerError, tansu_binary

    try:
        return tansu_binary()
    except BrokerError as exc:
        pytest.skip(f"no Tansu broker binary: {exc}")
