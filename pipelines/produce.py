"""Publishing ItemEvents to Kafka, keyed by item_id: ``mixlm produce`` and the library under it.

Every line is validated with ``parse_item_event``; an invalid line is skipped with a warning
naming its line number, unless ``raw`` is set, in which case every non-blank line is sent as
it is (how the demo and tests inject malformed events for the dead-letter path). Records go
one per producer batch (``batch_size=1``, ``linger_ms=0``) by default, because Tansu reports
end offsets as the last batch's base offset + 1 (docs/devbroker.md); pass a larger
``batch_size`` for throughput against a real Kafka (5,000 records: ~2.3 s one per batch,
~0.4 s batched, on the embedded broker).
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click

from mixlm.errors import EXIT_NOT_FOUND, fail, user_errors
from mixlm.output import echo_err, output_option, render
from mixlm.pipelines.kafka_options import KafkaOptions, kafka_client_options, topic_name
from mixlm.schemas import ValidationError, parse_item_event
from mixlm.schemas.errors import InputError, UnavailableError
from mixlm.schemas.item_event import decode_json, rejection_reason

DEFAULT_PARTITIONS = 2
DEFAULT_TIMEOUT_S = 10.0
MAX_WARNINGS = 20  # invalid lines warned one by one; the rest are counted


class ProduceError(UnavailableError):
    """Kafka could not be reached, or events failed to send; one line for people (exit 5, as ``stream``'s)."""


@dataclass
class ProduceSummary:
    topic: str
    sent: int = 0
    skipped: int = 0  # invalid lines not sent
    invalid_sent: int = 0  # invalid lines sent as they are (raw)
    blank: int = 0
    invalid_lines: list[int] = field(default_factory=list)  # 1-based numbers of the invalid lines, sent or not
    partitions: dict[int, int] = field(default_factory=dict)  # records acknowledged per partition

    def to_dict(self) -> dict:
        data = asdict(self)
        data["partitions"] = {str(k): v for k, v in sorted(self.partitions.items())}
        return data

    def line(self) -> str:
        parts = ", ".join(f"{p}: {n}" for p, n in sorted(self.partitions.items()))
        text = f"sent {self.sent} events to {self.topic}" + (f" (partition {parts})" if parts else "")
        if self.invalid_sent:
            text += f", {self.invalid_sent} of them invalid (sent raw)"
        return text + f"; skipped {self.skipped} invalid lines"


def _bootstrap_errors() -> tuple[type[Exception], ...]:
    """What kafka-python raises when no broker answers: KafkaTimeoutError in 3.x, NoBrokersAvailable in 2.x."""
    from kafka import errors

    return tuple(e for e in (errors.KafkaTimeoutError, getattr(errors, "NoBrokersAvailable", None)) if e)


def _unreachable(bootstrap_servers: str, timeout_s: float) -> ProduceError:
    return ProduceError(f"no Kafka broker answered on {bootstrap_servers} within {timeout_s:g} s")


def ensure_topic(bootstrap_servers: str, topic: str, partitions: int = DEFAULT_PARTITIONS, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S, options: KafkaOptions | None = None) -> bool:
    """Create ``topic`` with ``partitions`` partitions (replication 1) unless it exists; True if created.

    ``options`` (security, tuning; kafka-python's names) go to the admin client."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    if partitions < 1:
        raise InputError(f"partitions must be >= 1, got {partitions}")
    timeout_ms = int(timeout_s * 1000)
    try:
        config = (options or KafkaOptions()).for_client("admin", bootstrap_timeout_ms=timeout_ms,
                                                         request_timeout_ms=timeout_ms, client_id="mixlm-produce")
        admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, **config)
    except _bootstrap_errors():
        raise _unreachable(bootstrap_servers, timeout_s) from None
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
        return True
    except TopicAlreadyExistsError:
        return False
    except KafkaError as exc:
        raise ProduceError(f"cannot create topic {topic} on {bootstrap_servers}: {type(exc).__name__}") from None
    finally:
        admin.close()


def _best_effort_key(line: bytes) -> bytes | None:
    """The item_id of an invalid line sent raw, when it has a usable one."""
    try:
        data = decode_json(line)
    except ValidationError:
        return None
    item_id = data.get("item_id") if isinstance(data, dict) else None
    if not isinstance(item_id, str) or not item_id:
        return None
    try:
        return item_id.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape
        return None


def produce_lines(bootstrap_servers: str, topic: str, lines: Iterable[bytes], *, raw: bool = False,
                  warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
                  batch_size: int = 1, timeout_s: float = DEFAULT_TIMEOUT_S,
                  options: KafkaOptions | None = None) -> ProduceSummary:
    """Send each line (bytes, newline optional) as one event keyed by its item_id.

    Invalid lines are skipped with a warning unless ``raw``. Blank lines are skipped and counted
    (``blank``). Returns once every sent record is acknowledged (``acks=all`` unless ``options``
    say otherwise); ProduceError if any failed.
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError, KafkaTimeoutError

    timeout_ms = int(timeout_s * 1000)
    try:
        config = (options or KafkaOptions()).for_client(
            "producer", linger_ms=0, acks="all", bootstrap_timeout_ms=timeout_ms, max_block_ms=timeout_ms,
            client_id="mixlm-produce")
        producer = KafkaProducer(bootstrap_servers=bootstrap_servers, batch_size=batch_size, **config)
    except _bootstrap_errors():
        raise _unreachable(bootstrap_servers, timeout_s) from None
    summary = ProduceSummary(topic)
    acked: Counter[int] = Counter()
    failures: list[Exception] = []
    lock = threading.Lock()

    def on_ack(metadata) -> None:
        with lock:
            acked[metadata.partition] += 1

    def on_error(exc: Exception) -> None:
        with lock:
            failures.append(exc)

    try:
        for number, line in enumerate(lines, start=1):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                summary.blank += 1
                continue
            try:
                key = parse_item_event(line).item_id.encode("utf-8")
            except Exception as exc:  # a line that cannot be parsed, for whatever reason, is skipped or sent raw
                reason = rejection_reason(exc)
                summary.invalid_lines.append(number)
                shown = len(summary.invalid_lines) <= MAX_WARNINGS
                if not raw:
                    summary.skipped += 1
                    if shown:
                        warn(f"line {number}: skipped: {reason}")
                    continue
                summary.invalid_sent += 1
                if shown:
                    warn(f"line {number}: invalid, sent as it is (--raw): {reason}")
                key = _best_effort_key(line)
            try:
                producer.send(topic, key=key, value=line).add_callback(on_ack).add_errback(on_error)
            except KafkaTimeoutError:
                raise ProduceError(f"topic {topic} is not available on {bootstrap_servers} within {timeout_s:g} s"
                                   " (it does not exist and the broker does not create topics on demand?)") from None
            summary.sent += 1
        producer.flush()
    except KafkaError as exc:
        raise ProduceError(f"sending to {topic} on {bootstrap_servers} failed: {exc}") from None
    finally:
        producer.close()
    hidden = len(summary.invalid_lines) - MAX_WARNINGS
    if hidden > 0:
        warn(f"... and {hidden} more invalid lines")
    if failures:
        raise ProduceError(f"{len(failures)} of {summary.sent} events failed to send to {topic}: {failures[0]}")
    summary.partitions = dict(acked)
    return summary


def produce_file(bootstrap_servers: str, topic: str, path: str | Path, **kwargs) -> ProduceSummary:
    """``produce_lines`` over a JSONL file (``-`` for stdin)."""
    if str(path) == "-":
        return produce_lines(bootstrap_servers, topic, sys.stdin.buffer, **kwargs)
    with open(path, "rb") as lines:
        return produce_lines(bootstrap_servers, topic, lines, **kwargs)


@click.command()
@click.option("--bootstrap-servers", required=True, envvar="MIXLM_BOOTSTRAP_SERVERS", show_envvar=True,
              help="Kafka host:port[,host:port...]")
@click.option("--topic", required=True, callback=topic_name, help="topic to publish to")
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="ItemEvent JSONL, one event per line ('-' for stdin)")
@click.option("--create-topic/--no-create-topic", default=True, show_default=True,
              help="create the topic first if it does not exist")
@click.option("--partitions", type=click.IntRange(min=1), default=DEFAULT_PARTITIONS, show_default=True,
              help="partitions of a topic this command creates")
@click.option("--raw", is_flag=True, help="send invalid lines as they are (to exercise dead letters)")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="producer batch size in bytes; 1 sends one record per batch, which keeps the embedded "
                   "broker's end offsets exact; raise it (e.g. 16384) for throughput")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=DEFAULT_TIMEOUT_S,
              show_default=True, help="seconds to wait for the broker")
@kafka_client_options
@output_option()
@user_errors
def produce(bootstrap_servers: str, topic: str, input_path: str, create_topic: bool, partitions: int, raw: bool,
            batch_size: int, timeout_s: float, kafka_config: str | None, kafka_option: tuple[str, ...],
            output: str) -> None:
    """Publish ItemEvents from a JSONL file to Kafka, keyed by item_id.

    Invalid lines are skipped with a warning on stderr naming their line numbers, unless
    --raw is given. Prints a summary: events sent, invalid lines skipped.
    """
    if input_path != "-" and not Path(input_path).is_file():
        fail(f"input {input_path} does not exist", EXIT_NOT_FOUND)
    options = KafkaOptions.parse(kafka_option, kafka_config)
    if create_topic and ensure_topic(bootstrap_servers, topic, partitions, timeout_s=timeout_s, options=options):
        echo_err(f"created topic {topic} ({partitions} partitions)")
    summary = produce_file(bootstrap_servers, topic, input_path, raw=raw, batch_size=batch_size,
                           timeout_s=timeout_s, options=options, warn=echo_err)
    click.echo(render(summary.to_dict(), output, summary.line()))
