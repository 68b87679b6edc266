"""A Kafka source for Beam's Python SDK: a Splittable DoFn per topic-partition over kafka-python.

Each element names one partition and the offset to start from (the consumer group's
committed offset). The restriction is the open offset range ``[start, END)``; every call
reads what is there, claims each record's offset, and defers the remainder, so the runner
checkpoints and a new bundle continues. Offsets are committed to the group from the bundle
finalizer, which runs only after the bundle's outputs, the sink's write included, are durable.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import Duration
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from mixlm.pipelines.elements import KafkaPosition, RawEvent
from mixlm.pipelines.stop import STOP

END = sys.maxsize


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
        for record in consumer.poll(timeout_ms=self.poll_ms).get(tp, []):
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

    def teardown(self):
        for consumer in getattr(self, "consumers", {}).values():
            consumer.close(autocommit=False)
