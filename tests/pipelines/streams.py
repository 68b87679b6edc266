"""Helpers of the pipeline tests: event scripts, producing, reading topics back, expected store state."""

import time

from kafka import KafkaConsumer, TopicPartition

from mixlm.bench.chaos import event_script, store_mismatches
from mixlm.bench.chaos import produce_messages as produce

__all__ = ["assert_counts_add_up", "assert_store_matches", "event_script", "produce", "read_topic"]


def assert_store_matches(store, encoder_id: str, expected: dict) -> None:
    problems = store_mismatches(store, encoder_id, expected)
    assert not problems, problems[:10]


def assert_counts_add_up(counts) -> None:
    assert counts.read == (counts.dead_lettered + counts.written + counts.deleted + counts.stale
                           + counts.skipped_unchanged), counts


def read_topic(bootstrap_servers: str, topic: str, expected: int, timeout: float = 10.0):
    """Every record of ``topic`` from the beginning (until ``expected`` arrived), and the end offsets."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    records = []
    deadline = time.monotonic() + timeout
    while len(records) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(200).values():
            records.extend(batch)
    ends = consumer.end_offsets(tps)
    consumer.close()
    return records, ends
