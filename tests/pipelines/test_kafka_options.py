"""Kafka client settings: parsing, secrets by reference, redaction, and the commands that take them."""

import json
import os
import subprocess
import sys

import pytest

from mixlm.pipelines.kafka_options import REDACTED, KafkaOptions
from mixlm.schemas.errors import InputError
from mixlm.store import EmbeddingStore
from tests.pipelines.streams import event_script, produce


def test_file_then_options_typed_after_kafka_python_defaults(tmp_path):
    config = tmp_path / "client.properties"
    config.write_text("# production cluster\nsecurity.protocol=SASL_SSL\nsasl_mechanism: SCRAM-SHA-512\n"
                      "! a Java-style comment\nssl_check_hostname=false\nsession_timeout_ms=10000\n\n")
    options = KafkaOptions.parse(["session_timeout_ms=7000", "api_version=2.8.0", "max_poll_records=50",
                                  "acks=all"], config)
    assert options.values == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                              "ssl_check_hostname": False, "session_timeout_ms": 7000, "api_version": (2, 8, 0),
                              "max_poll_records": 50, "acks": "all"}
    assert KafkaOptions.parse(["acks=1"]).values == {"acks": 1}
    consumer = options.for_client("consumer", session_timeout_ms=6000, auto_offset_reset="earliest")
    assert consumer["session_timeout_ms"] == 7000 and consumer["auto_offset_reset"] == "earliest"
    producer = options.for_client("producer", linger_ms=0)
    assert "max_poll_records" not in producer and "session_timeout_ms" not in producer  # consumer-only settings
    assert producer["security_protocol"] == "SASL_SSL" and producer["linger_ms"] == 0


@pytest.mark.parametrize(("given", "message"), [
    (["sesion_timeout_ms=1"], "'sesion_timeout_ms' is not a kafka-python client setting (did you mean "
                              "session_timeout_ms"),
    (["group_id=other"], "kafka option group_id is set by mixlm (use --group)"),
    (["enable_auto_commit=true"], "offsets are committed by mixlm, only after the store's write is durable"),
    (["session_timeout_ms=soon"], "kafka option session_timeout_ms: expected a number, got 'soon'"),
    (["ssl_check_hostname=maybe"], "expected true or false"),
    (["security_protocol"], "--kafka-option takes name=value"),
    (["ssl_context=x"], "kafka option ssl_context takes a Python object"),
])
def test_bad_options_are_one_line_errors(given, message):
    with pytest.raises(InputError) as caught:
        KafkaOptions.parse(given)
    assert message in str(caught.value)


def test_a_bad_line_of_a_config_file_is_not_quoted(tmp_path):
    config = tmp_path / "client.properties"
    config.write_text("security_protocol=SSL\nhunter2-pasted-alone\n")
    with pytest.raises(InputError) as caught:
        KafkaOptions.parse([], config)
    assert str(caught.value) == f"{config}:2: expected name=value"
    with pytest.raises(InputError, match="cannot read the Kafka config"):
        KafkaOptions.parse([], tmp_path / "missing.properties")


def test_secrets_resolve_only_for_a_client_and_never_show(tmp_path, monkeypatch):
    secret_file = tmp_path / "password"
    secret_file.write_text("file-secret-value\n")
    monkeypatch.setenv("MIXLM_TEST_TOKEN", "env-secret-value")
    options = KafkaOptions.parse(["sasl_plain_username=svc-mixlm", f"sasl_plain_password=${{file:{secret_file}}}",
                                  "ssl_password=${env:MIXLM_TEST_TOKEN}", "ssl_cafile=/etc/ssl/ca.pem"])
    assert options.for_client("consumer")["sasl_plain_password"] == "file-secret-value"
    assert options.for_client("admin")["ssl_password"] == "env-secret-value"
    shown = options.redacted()
    assert shown == {"sasl_plain_username": "svc-mixlm", "sasl_plain_password": REDACTED,
                     "ssl_password": REDACTED, "ssl_cafile": "/etc/ssl/ca.pem"}
    for text in (repr(options), str(options), json.dumps(shown)):
        assert "secret-value" not in text
    literal = KafkaOptions.parse(["sasl_plain_password=hunter2"])
    assert "hunter2" not in repr(literal) and literal.redacted() == {"sasl_plain_password": REDACTED}
    monkeypatch.delenv("MIXLM_TEST_TOKEN")
    with pytest.raises(InputError, match="kafka option ssl_password: environment variable MIXLM_TEST_TOKEN is not set"):
        options.for_client("consumer")


def _mixlm(*args, env=None, timeout=180):
    command = [sys.executable, "-c", "from mixlm.cli import main; main()", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": os.getcwd(), **(env or {})})


def test_stream_and_produce_take_the_options_and_never_echo_secrets(tiny_bundle, kafka_broker, tmp_path):
    secret_file = tmp_path / "ssl-password"
    secret_file.write_text("from-a-file-1b9e\n")
    config = tmp_path / "client.properties"
    config.write_text("client_id=mixlm-options-test\nssl_password=${env:MIXLM_TEST_SSL_PASSWORD}\n")
    env = {"MIXLM_TEST_SSL_PASSWORD": "from-the-env-7c2a"}
    events = tmp_path / "events.jsonl"
    messages, _expected = event_script(n_items=5, n_valid=20, n_malformed=0)
    events.write_bytes(b"".join(value + b"\n" for _key, value in messages))
    produced = _mixlm("produce", "--bootstrap-servers", kafka_broker.bootstrap_servers, "--topic", "items",
                      "--input", events, "--kafka-config", config, "--kafka-option", "acks=1", env=env)
    assert produced.returncode == 0, produced.stderr[-2000:]
    assert "sent 20 events to items" in produced.stdout

    store = tmp_path / "store"
    run = _mixlm("stream", "--bootstrap-servers", kafka_broker.bootstrap_servers, "--topic", "items",
                 "--group", "options", "--bundle", tiny_bundle, "--store", store, "--max-records", 20,
                 "--max-seconds", 60, "--kafka-config", config,
                 "--kafka-option", f"sasl_plain_password=${{file:{secret_file}}}",
                 "--kafka-option", "session_timeout_ms=7000", env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    manifest = EmbeddingStore.open(store).jobs.get(run.stdout.strip().splitlines()[-1])
    assert manifest.counts.read == 20
    assert manifest.params["kafka_options"] == {
        "client_id": "mixlm-options-test", "ssl_password": REDACTED, "sasl_plain_password": REDACTED,
        "session_timeout_ms": 7000}
    everything = run.stdout + run.stderr + produced.stdout + produced.stderr + manifest.to_json()
    assert "from-the-env-7c2a" not in everything and "from-a-file-1b9e" not in everything


def test_an_unknown_option_stops_the_command_before_anything_starts(tiny_bundle, tmp_path):
    run = _mixlm("stream", "--bootstrap-servers", "127.0.0.1:9", "--topic", "items", "--group", "g",
                 "--bundle", tiny_bundle, "--store", tmp_path / "store", "--kafka-option", "sesion_timeout_ms=1")
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        "mixlm: error: --kafka-option: 'sesion_timeout_ms' is not a kafka-python client setting "
        "(did you mean session_timeout_ms?)"]
    assert not (tmp_path / "store").exists()


def test_sasl_against_a_broker_without_it_fails_in_one_line_without_the_password(tiny_bundle, kafka_broker,
                                                                                   tmp_path):
    produce(kafka_broker.bootstrap_servers, "items", event_script(2, 2, 0)[0])
    run = _mixlm("stream", "--bootstrap-servers", kafka_broker.bootstrap_servers, "--topic", "items",
                 "--group", "g", "--bundle", tiny_bundle, "--store", tmp_path / "store", "--broker-timeout", 2,
                 "--kafka-option", "security_protocol=SASL_PLAINTEXT", "--kafka-option", "sasl_mechanism=PLAIN",
                 "--kafka-option", "sasl_plain_username=svc", "--kafka-option",
                 "sasl_plain_password=${env:MIXLM_TEST_SASL}", env={"MIXLM_TEST_SASL": "sasl-secret-5d1f"})
    assert run.returncode == 5, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert lines == [f"mixlm: error: no Kafka broker answered on {kafka_broker.bootstrap_servers} within 2 s "
                     "(KafkaTimeoutError); security_protocol SASL_PLAINTEXT: check the broker's listener and the "
                     "credentials"], lines
    assert "sasl-secret-5d1f" not in run.stdout + run.stderr
