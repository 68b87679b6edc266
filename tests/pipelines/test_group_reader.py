"""The group member's reader without a broker: fair shares per bundle, commits of durable offsets, rebalances.

A fake consumer hands out fetched batches the way kafka-python does: one partition's batch
is drained before the next one's, across ``poll`` calls.
"""

import asyncio
from collections import namedtuple

from kafka import TopicPartition
from kafka.errors import CommitFailedError
from kafka.future import Future

from mixlm.pipelines.kafka_source import GroupReader

Record = namedtuple("Record", "topic partition offset key value")
P0, P1, P2 = (TopicPartition("items", p) for p in range(3))


class FakeConsumer:
    def __init__(self, batches):
        self.batches = [(tp, list(records)) for tp, records in batches]  # kafka-python's completed fetches, in order
        self.commits = []  # (kind, {tp: offset})
        self.seeks = {}  # tp: the offset the next poll starts from
        self.fail_commits = False
        self.listener = None
        self.closed = False

    def subscribe(self, topics, listener):
        self.listener = listener

    def poll(self, timeout_ms=0, max_records=500):
        out = {}
        while self.batches and max_records > 0:
            tp, records = self.batches[0]
            part, rest = records[:max_records], records[max_records:]
            out.setdefault(tp, []).extend(part)
            max_records -= len(part)
            if rest:
                self.batches[0] = (tp, rest)
            else:
                self.batches.pop(0)
        return out

    def seek(self, tp, offset):
        self.seeks[tp] = offset

    def commit(self, offsets, timeout_ms=None):
        if self.fail_commits:
            raise CommitFailedError("rebalance in progress")
        self.commits.append(("sync", {tp: meta.offset for tp, meta in offsets.items()}))

    def commit_async(self, offsets):
        self.commits.append(("async", {tp: meta.offset for tp, meta in offsets.items()}))
        return Future().success(None)

    def close(self, autocommit=False, timeout_ms=None):
        self.closed = True


def records(tp, start, count):
    return [Record(tp.topic, tp.partition, offset, None, b"{}") for offset in range(start, start + count)]


def reader_with(batches, assigned=(P0, P1, P2), **kwargs):
    consumer = FakeConsumer(batches)
    reader = GroupReader(consumer, "items", poll_ms=0, **kwargs)
    asyncio.run(reader.on_partitions_assigned(set(assigned)))
    return reader, consumer


def by_partition(taken):
    out = {}
    for record in taken:
        out.setdefault(record.partition, []).append(record.offset)
    return out


def test_a_backlog_on_one_partition_does_not_hold_the_others_back():
    reader, _ = reader_with([(P0, records(P0, 0, 1500)), (P1, records(P1, 0, 20)), (P2, records(P2, 0, 20))],
                            max_records=500)
    first = reader.read()
    assert len(first) == 500
    got = by_partition(first)
    assert got[1] == list(range(20)) and got[2] == list(range(20))  # all of the small partitions, first bundle
    assert got[0] == list(range(460))  # each partition in order
    # the round-robin interleaves: the first 60 records hold 20 of each partition
    assert sorted(by_partition(first[:60])) == [0, 1, 2]
    rest = []
    while batch := reader.read():
        assert len(batch) <= 500
        rest.extend(batch)
    assert by_partition(rest) == {0: list(range(460, 1500))}


def test_partitions_take_turns_going_first():
    batches = [(tp, records(tp, 0, 10)) for tp in (P0, P1, P2)]
    reader, _ = reader_with(batches, max_records=3)
    firsts = [reader.read()[0].partition for _ in range(3)]
    assert sorted(firsts) == [0, 1, 2]


def test_durable_offsets_are_committed_and_never_go_backwards():
    reader, consumer = reader_with([(P0, records(P0, 0, 10)), (P1, records(P1, 0, 10))], assigned=(P0, P1))
    reader.read()
    reader.made_durable({P0: 10, P1: 4})
    reader.made_durable({P1: 3})  # an older bundle's offsets: nothing to commit
    reader.made_durable({P2: 7})  # not ours: never committed
    assert consumer.commits == [("sync", {P0: 10, P1: 4})]


def test_a_failed_commit_is_made_before_the_partitions_are_given_up():
    reader, consumer = reader_with([(P0, records(P0, 0, 10)), (P1, records(P1, 0, 10))])
    reader.read()
    consumer.fail_commits = True
    reader.made_durable({P0: 10, P1: 10})  # a rebalance under way: the commit fails
    assert consumer.commits == []
    asyncio.run(reader.on_partitions_revoked({P0, P1, P2}))
    assert consumer.commits == [("async", {P0: 10, P1: 10})]
    assert reader.assigned == set() and reader.queued() == 0


def test_queued_records_of_revoked_partitions_are_dropped_uncommitted():
    reader, consumer = reader_with([(P0, records(P0, 0, 30)), (P1, records(P1, 0, 30))], max_records=10)
    taken = reader.read()
    reader.made_durable({P0: max(r.offset for r in taken if r.partition == 0) + 1})
    asyncio.run(reader.on_partitions_revoked({P0}))
    assert all(tp != P0 for tp in reader.queues)  # the next owner reads them from the group's commit
    # ... and if the rebalance hands P0 back, kafka-python's position is where the queue began
    assert consumer.seeks == {P0: 5}
    assert {r.partition for r in reader.read()} == {1}
    assert consumer.commits == [("sync", {P0: 5})]  # only what was durable


def test_lost_partitions_commit_nothing():
    reader, consumer = reader_with([(P0, records(P0, 0, 10))])
    reader.read()
    consumer.fail_commits = True
    reader.made_durable({P0: 10})
    asyncio.run(reader.on_partitions_lost({P0, P1, P2}))
    assert consumer.commits == [] and reader.assigned == set()
    assert consumer.seeks == {}  # nothing was queued: every record read was handed out


def test_the_assignment_is_reported_after_the_rebalance(monkeypatch):
    from mixlm.pipelines.kafka_source import GROUP

    seen = []
    GROUP.configure(seen.append)
    try:
        reader, _ = reader_with([], assigned=(P2, P0))
        reader.read()
        reader.read()
        asyncio.run(reader.on_partitions_revoked({P0, P2}))
        asyncio.run(reader.on_partitions_assigned({P1}))
        reader.read()
    finally:
        GROUP.configure(None)
    assert seen == [[0, 2], [1]]
