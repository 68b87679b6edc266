"""A Kafka source for Beam's Python SDK: a Splittable DoFn per topic-partition over kafka-python.

Each element names one partition and the offset to start from (the consumer group's
committed offset). The restriction is the open offset range ``[start, END)``; every call
reads what is there, claims each record's offset, and defers the remainder, so the runner
checkpoints and a new bundle continues. Offsets are committed to the group from the bundle
finalizer, which runs only after the bundle's outputs, the sink's write included, are durable.

While a partition is idle the reader asks the broker for its end offset every few seconds;
``BROKER`` (process-wide, like ``STOP``) logs an outage once, keeps it for the job's
manifest, and stops the job when the broker stays away longer than its timeout.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import Duration
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from mixlm.pipelines.elements import KafkaPosition, RawEvent
from mixlm.pipelines.stop import STOP

END = sys.maxsize
HEALTH_CHECK_EVERY_S = 2.0
HEALTH_CHECK_TIMEOUT_MS = 3000
DEFAULT_BROKER_TIMEOUT_S = 60.0
_log = logging.getLogger(__name__)


class BrokerHealth:
    """Whether the stream's broker answers: outages are logged once each and kept for the manifest."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.configure("", DEFAULT_BROKER_TIMEOUT_S)

    def configure(self, bootstrap_servers: str, timeout_s: float) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.timeout_s = timeout_s
        self.lost_since: float | None = None
        self.fatal: str | None = None  # the outage that outlasted the timeout and stopped the job
        self.outages: list[str] = []  # outages the broker came back from, one line each

    def failed(self, exc: Exception) -> None:
        """A health check failed; past the timeout the job stops, marked by ``STOP.reason``."""
        with self._lock:
            now = time.monotonic()
            if self.lost_since is None:
                self.lost_since = now
                _log.warning("lost the Kafka broker at %s (%s); retrying for %g s", self.bootstrap_servers,
                             _first_line(exc), self.timeout_s)
            elif now - self.lost_since >= self.timeout_s and self.fatal is None:
                self.fatal = (f"Kafka broker {self.bootstrap_servers} unreachable for {now - self.lost_since:.0f} s "
                              f"({_first_line(exc)}); the job stopped")
                STOP.set("broker unreachable")

    def answered(self) -> None:
        with self._lock:
            if self.lost_since is not None:
                away = time.monotonic() - self.lost_since
                self.outages.append(f"Kafka broker {self.bootstrap_servers} unreachable for {away:.0f} s, then back")
                _log.warning("the Kafka broker at %s is back after %.0f s", self.bootstrap_servers, away)
                self.lost_since = None


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


BROKER = BrokerHealth()


@dataclass(frozen=True)
class PartitionStart:
    topic: str
    partition: int
    offset: int


class _OpenRange(RestrictionProvider):
    def initial_restriction(self, element: PartitionStart) -> OffsetRange:
        return OffsetRange(element.offset, END)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, element: PartitionStart, restriction: OffsetRange) -> int:
        return 1  # unknown backlog: every partition weighs the same

    def split(self, element, restriction):
        yield restriction  # one reader per partition keeps offsets in order


_RESTRICTION = beam.DoFn.RestrictionParam(_OpenRange())


class ReadKafkaPartitions(beam.DoFn):
    def __init__(self, bootstrap_servers: str, group_id: str, *, poll_ms: int = 100, max_poll_records: int = 500):
        self.bootstrap_servers = bootstrap_servers
        self.group_id = group_id
        self.poll_ms = poll_ms
        self.max_poll_records = max_poll_records

    def setup(self):
        self.consumers: dict[TopicPartition, KafkaConsumer] = {}
        self.last_check: dict[TopicPartition, float] = {}

    def _consumer(self, tp: TopicPartition) -> KafkaConsumer:
        if tp not in self.consumers:
            consumer = KafkaConsumer(bootstrap_servers=self.bootstrap_servers, group_id=self.group_id,
                                     enable_auto_commit=False, auto_offset_reset="earliest",
                                     max_poll_records=self.max_poll_records)
            consumer.assign([tp])
            self.consumers[tp] = consumer
        return self.consumers[tp]

    def process(self, element: PartitionStart, bundle_finalizer=beam.DoFn.BundleFinalizerParam,
                restriction_tracker=_RESTRICTION):
        if STOP.is_set():
            restriction_tracker.try_claim(END)  # marks the open range done: the job ends
            return
        tp = TopicPartition(element.topic, element.partition)
        consumer = self._consumer(tp)
        start = restriction_tracker.current_restriction().start
        if consumer.position(tp) != start:
            consumer.seek(tp, start)
        last = None
        records = consumer.poll(timeout_ms=self.poll_ms).get(tp, [])
        if not records:
            self._check_broker(consumer, tp)
        for record in records:
            if not STOP.claim_record() or not restriction_tracker.try_claim(record.offset):
                consumer.seek(tp, record.offset)
                break
            last = record.offset
            yield RawEvent(value=record.value or b"", key=record.key,
                           source=f"{record.topic}/{record.partition}@{record.offset}",
                           position=KafkaPosition(record.topic, record.partition, record.offset))
        if last is not None:
            bundle_finalizer.register(lambda: consumer.commit({tp: OffsetAndMetadata(last + 1, "", -1)}))
        if STOP.is_set():
            restriction_tracker.try_claim(END)
            return
        restriction_tracker.defer_remainder(Duration(micros=self.poll_ms * 1000))

    def _check_broker(self, consumer: KafkaConsumer, tp: TopicPartition) -> None:
        """An idle poll looks the same whether the topic is quiet or the broker is gone: ask for the end offset."""
        now = time.monotonic()
        if now - self.last_check.get(tp, 0.0) < HEALTH_CHECK_EVERY_S:
            return
        self.last_check[tp] = now
        try:
            consumer.end_offsets([tp], timeout_ms=HEALTH_CHECK_TIMEOUT_MS)
        except KafkaError as exc:
            BROKER.failed(exc)
        else:
            BROKER.answered()

    def teardown(self):
        for consumer in getattr(self, "consumers", {}).values():
            consumer.close(autocommit=False)
