"""Helpers of the pipeline tests: event scripts, producing, reading topics back, expected store state."""

import random
import time

from kafka import KafkaConsumer, TopicPartition

from mixlm.pipelines.produce import ensure_topic, produce_lines
from mixlm.schemas import ItemEvent


def event_script(n_items: int, n_valid: int, n_malformed: int, seed: int = 7) -> tuple[list[tuple[str, bytes]], dict]:
    """(key, value) messages with updates, deletes, out-of-order versions, duplicates and malformed events,
    plus the expected final state: item_id -> ItemEvent of its highest version (None when deleted)."""
    rng = random.Random(seed)
    messages: list[tuple[str, bytes]] = []
    latest: dict[str, ItemEvent] = {}
    versions = {f"item-{n:03d}": 0 for n in range(n_items)}
    while len(messages) < n_valid:
        item_id = rng.choice(list(versions))
        roll = rng.random()
        if roll < 0.12 and item_id in latest:  # a duplicate of the item's newest event
            event = latest[item_id]
        elif roll < 0.22 and versions[item_id] > 2:  # an out-of-order, older version
            late_version = rng.randrange(1, versions[item_id])
            event = ItemEvent(item_id, "upsert", late_version, "late", f"late text {rng.random()}")
            if latest.get(item_id) and latest[item_id].version == event.version:
                continue
        else:
            versions[item_id] += rng.randrange(1, 4)
            if rng.random() < 0.15:
                event = ItemEvent(item_id, "delete", versions[item_id])
            else:
                event = ItemEvent(item_id, "upsert", versions[item_id], f"Title {item_id}",
                                  f"Body of {item_id} at version {versions[item_id]}")
        if item_id not in latest or event.version >= latest[item_id].version:
            latest.setdefault(item_id, event)
            if event.version > latest[item_id].version:
                latest[item_id] = event
        messages.append((item_id, event.to_json().encode()))
    malformed = [b"{not json", b"\xff\xfe binary", b'{"item_id": "x", "op": "upsert", "version": "12a", "text": "t"}',
                 b'{"item_id": "x", "op": "merge", "version": 1}', b'{"op": "upsert", "version": 1, "text": "t"}']
    for index in range(n_malformed):
        position = rng.randrange(len(messages) + 1)
        messages.insert(position, (f"bad-{index}", malformed[index % len(malformed)]))
    expected = {item_id: (None if event.is_delete else event) for item_id, event in latest.items()}
    return messages, expected


def produce(bootstrap_servers: str, topic: str, messages, partitions: int = 3) -> None:
    """Send every message as it is (malformed ones included), keyed by item_id where it has one."""
    ensure_topic(bootstrap_servers, topic, partitions)
    produce_lines(bootstrap_servers, topic, [value for _key, value in messages], raw=True, warn=lambda _line: None)


def assert_store_matches(store, encoder_id: str, expected: dict) -> None:
    for item_id, event in expected.items():
        record = store.get(encoder_id, item_id)
        assert record is not None, f"{item_id} never written"
        if event is None:
            assert record.deleted, f"{item_id} should be deleted, holds version {record.item_version}"
        else:
            assert not record.deleted and record.item_version == event.version, (item_id, record.item_version,
                                                                                   event.version)
            assert record.content_hash == event.content_hash()
    live = [item_id for item_id, event in expected.items() if event is not None]
    assert not store.get_many(encoder_id, live).missing


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
