"""A Kafka source for Beam's Python SDK: one consumer-group member per element, as a Splittable DoFn.

The element names the topic. Its reader is a kafka-python consumer *subscribed* to the topic
in the job's consumer group, so the ``mixlm stream`` processes of one group share the
partitions the way Kafka consumer groups do: each partition has one reader at a time, and
the group rebalances when a member joins, leaves (a clean stop) or dies (its session times
out). The restriction is an open range of *rounds*: each call claims one round, polls, hands
out records, and defers the remainder, so the runner checkpoints and a new bundle continues.

At least once: offsets are committed to the group from the bundle finalizer, which runs only
after the bundle's outputs, the sink's LMDB commit included, are durable. Beam's local runner
finalizes a bundle before it starts the next one, and kafka-python rebalances only inside
``poll``, at the start of a call; so when partitions are revoked, everything read from them
is durable, and the revocation commits any durable offset whose commit had failed before the
partitions are given up, and rewinds each to its first record read but not yet handed out (the
eager protocol revokes every partition, and kafka-python keeps the position of those it hands
back to the same member). A member that dies cannot commit: the next owner re-reads from the
group's last commit (harmlessly: versions decide). A member evicted from the group
(``on_partitions_lost``) commits nothing more for those partitions.

No partition starves: kafka-python hands out one partition's fetched batch before the next
one's, so a backlog on one partition would hold the others back. The reader keeps a queue
per partition, fills the queues from what kafka-python has fetched, and takes records
round-robin across partitions, at most ``max_records`` per bundle.

While the reader is idle it asks the broker for the end offsets every few seconds;
``BROKER`` (process-wide, like ``STOP``) logs an outage once, keeps it for the job's
manifest, and stops the job when the broker stays away longer than its timeout. ``GROUP``
(process-wide too) tells the job which partitions this process holds after each rebalance.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import Duration
from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from mixlm.pipelines.elements import KafkaPosition, RawEvent
from mixlm.pipelines.kafka_options import KafkaOptions
from mixlm.pipelines.stop import STOP

END = sys.maxsize
HEALTH_CHECK_EVERY_S = 2.0
HEALTH_CHECK_TIMEOUT_MS = 3000
DEFAULT_BROKER_TIMEOUT_S = 60.0
COMMIT_TIMEOUT_MS = 10_000
# The reader holds up to this many bundles' worth of records in its per-partition queues: enough
# to take kafka-python's fetched batch of one partition (max_partition_fetch_bytes, 1 MiB) and
# reach the batches of the others. Pausing full partitions instead lost records with
# kafka-python 3.0.12 (its parked fetches after resume()), so the reader never pauses.
BUFFERED_BUNDLES = 10
CLOSE_TIMEOUT_MS = 5_000
# The group member's defaults (any --kafka-option overrides them). A dead member's partitions
# move after session_timeout_ms plus one rebalance; 6 s is the least a stock Kafka broker
# accepts (group.min.session.timeout.ms). Heartbeats come from kafka-python's own thread, so a
# long bundle does not end the session; only max_poll_interval_ms bounds a bundle's time.
CONSUMER_DEFAULTS = {"auto_offset_reset": "earliest", "session_timeout_ms": 6_000, "heartbeat_interval_ms": 1_000,
                     "max_poll_interval_ms": 300_000, "max_poll_records": 500}
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
    """Where the group stood on one partition when the job started (its committed offset, else the earliest)."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class GroupMember:
    """The source's element: one member of the consumer group reading ``topic``."""

    topic: str
    partitions: tuple[int, ...] = ()  # the topic's partitions when the job started (for the broker health check)


class GroupMembership:
    """The partitions this process holds, reported after each rebalance (to the job's log and manifest)."""

    def __init__(self) -> None:
        self.configure(None)

    def configure(self, on_change: Callable[[list[int]], None] | None) -> None:
        self.on_change = on_change
        self.partitions: list[int] = []
        self.assignments = 0  # rebalances this process took part in (its first join included)

    def changed(self, partitions: list[int]) -> None:
        self.partitions = partitions
        self.assignments += 1
        if self.on_change is not None:
            try:
                self.on_change(partitions)
            except Exception:  # reporting must not stop the reader
                _log.exception("could not report the new assignment %s", partitions)


GROUP = GroupMembership()


class GroupReader(AsyncConsumerRebalanceListener):
    """One member of the consumer group: its partitions, a fair share of records per bundle, commits of what is durable.

    ``read`` (the runner's thread) polls; kafka-python runs the rebalance callbacks on its IO
    thread while ``poll`` waits, and they only touch the state under ``_lock``.
    ``made_durable`` is the bundle finalizer: it commits the offsets the sink has made durable.
    """

    def __init__(self, consumer: KafkaConsumer, topic: str, *, max_records: int = 500, poll_ms: int = 100,
                 buffered: int | None = None, commit_timeout_ms: int = COMMIT_TIMEOUT_MS):
        self.consumer = consumer
        self.topic = topic
        self.max_records = max_records
        self.buffered = buffered or BUFFERED_BUNDLES * max_records
        self.poll_ms = poll_ms
        self.commit_timeout_ms = commit_timeout_ms
        self._lock = threading.Lock()
        self.assigned: set[TopicPartition] = set()
        self.queues: dict[TopicPartition, deque] = {}
        self.durable: dict[TopicPartition, int] = {}  # next offset after what the sink has made durable
        self.committed: dict[TopicPartition, int] = {}  # what this member committed to the group
        self.turn = 0  # which partition goes first in the next bundle
        self._reassigned = False
        self.closed = False
        consumer.subscribe([topic], listener=self)

    # --- rebalance callbacks: kafka-python awaits them on its IO thread, inside ``poll`` or ``close``

    async def on_partitions_revoked(self, revoked):
        """Commit what is durable of the partitions given up, rewind to what is queued, then forget them.

        Every record read from them is durable by now: the runner finalized every earlier
        bundle before the call whose ``poll`` runs this. Only commits that failed are left.
        """
        revoked = set(revoked)
        due = self._due(revoked)
        if due:
            try:
                await self.consumer.commit_async(due)
            except Exception as exc:  # noqa: BLE001 - the next owner re-reads them: duplicates, not losses
                _log.warning("could not commit %s before giving them up (%s); they will be read again",
                             _describe(due), _first_line(exc))
            else:
                self._committed(due)
        self._rewind(revoked)
        self._forget(revoked)

    async def on_partitions_lost(self, lost):
        """Evicted from the group (a session that timed out): the partitions are someone else's, commit nothing."""
        lost = set(lost)
        self._rewind(lost)
        self._forget(lost)

    async def on_partitions_assigned(self, assigned):
        with self._lock:
            self.assigned |= set(assigned)
            self._reassigned = True

    def _rewind(self, tps: set[TopicPartition]) -> None:
        """Point the consumer back at the first queued record of each of ``tps``, which ``_forget`` drops.

        The eager protocol revokes every partition, and kafka-python keeps the position of each
        one the rebalance hands back to this member: without the rewind, the queued records
        of such a partition would never be read, and later commits would skip past them.
        """
        with self._lock:
            firsts = {tp: self.queues[tp][0].offset for tp in tps if self.queues.get(tp)}
        for tp, offset in firsts.items():
            try:
                self.consumer.seek(tp, offset)
            except ValueError:  # no longer assigned: its next owner starts from the group's commit
                pass

    def _forget(self, tps: set[TopicPartition]) -> None:
        with self._lock:
            for tp in tps:
                self.queues.pop(tp, None)
                self.durable.pop(tp, None)
                self.committed.pop(tp, None)
            self.assigned -= tps
            self._reassigned = True

    # --- reading

    def read(self) -> list:
        """Poll (and take part in a rebalance when the group has one), then this bundle's records, fairly.

        Polls until the queues hold ``buffered`` records or kafka-python has nothing more at hand:
        that drains one partition's fetched batch and reaches the batches of the others, which
        ``_take`` then interleaves.
        """
        queued = self.queued()
        room = max(1, self.buffered - queued)  # poll must be called to rebalance, and takes max_records >= 1
        got = self._add(self.consumer.poll(timeout_ms=0 if queued else self.poll_ms, max_records=room))
        while got and self.queued() < self.buffered:
            got = self._add(self.consumer.poll(timeout_ms=0, max_records=self.buffered - self.queued()))
        taken = self._take()
        if self._reassigned:
            with self._lock:
                self._reassigned = False
                partitions = sorted(tp.partition for tp in self.assigned)
            GROUP.changed(partitions)
        return taken

    def queued(self) -> int:
        """Records read from Kafka and waiting for a bundle (none when the next call may wait for the broker)."""
        with self._lock:
            return sum(len(queue) for queue in self.queues.values())

    def backlog(self) -> bool:
        return self.queued() > 0

    def _add(self, batches: dict) -> int:
        added = 0
        with self._lock:
            for tp, records in batches.items():
                if tp in self.assigned and records:
                    self.queues.setdefault(tp, deque()).extend(records)
                    added += len(records)
        return added

    def _take(self) -> list:
        """Up to ``max_records``, one partition after another in turn, each partition's records in order."""
        with self._lock:
            order = sorted((tp for tp, queue in self.queues.items() if queue), key=lambda tp: tp.partition)
            if not order:
                return []
            first = self.turn % len(order)
            self.turn += 1
            order = order[first:] + order[:first]
            taken = []
            while order and len(taken) < self.max_records:
                for tp in list(order):
                    queue = self.queues[tp]
                    taken.append(queue.popleft())
                    if not queue:
                        order.remove(tp)
                    if len(taken) >= self.max_records:
                        break
            return taken

    # --- committing

    def made_durable(self, offsets: dict[TopicPartition, int]) -> None:
        """The bundle finalizer: the sink has made everything before ``offsets`` durable; commit it."""
        with self._lock:
            for tp, offset in offsets.items():
                if tp in self.assigned:  # given up since: its next owner reads from the group's commit
                    self.durable[tp] = max(self.durable.get(tp, 0), offset)
            assigned = set(self.assigned)
        due = self._due(assigned)
        if not due or self.closed:
            return
        try:
            self.consumer.commit(due, timeout_ms=self.commit_timeout_ms)
        except KafkaError as exc:  # a rebalance under way or the broker away: committed at the revocation, or later
            _log.info("commit of %s deferred: %s", _describe(due), _first_line(exc))
        else:
            self._committed(due)

    def _due(self, tps: set[TopicPartition]) -> dict[TopicPartition, OffsetAndMetadata]:
        with self._lock:
            return {tp: OffsetAndMetadata(self.durable[tp], "", -1) for tp in tps
                    if tp in self.durable and self.durable[tp] > self.committed.get(tp, -1)}

    def _committed(self, due: dict[TopicPartition, OffsetAndMetadata]) -> None:
        with self._lock:
            for tp, meta in due.items():
                if tp in self.assigned:
                    self.committed[tp] = max(self.committed.get(tp, 0), meta.offset)

    def close(self, timeout_ms: int = CLOSE_TIMEOUT_MS) -> None:
        """Leave the group (committing what is durable first): the others take the partitions over at once."""
        if self.closed:
            return
        self.closed = True
        try:
            self.consumer.close(autocommit=False, timeout_ms=timeout_ms)
        except Exception as exc:  # noqa: BLE001 - leaving is best effort; the session times out otherwise
            _log.info("leaving the consumer group failed: %s", _first_line(exc))


def _describe(offsets: dict[TopicPartition, OffsetAndMetadata]) -> str:
    return ", ".join(f"{tp.topic}/{tp.partition}@{meta.offset}" for tp, meta in sorted(offsets.items()))


class _OpenRounds(RestrictionProvider):
    """An open range of rounds, one claimed per call: the reader's position lives in the group's commits."""

    def initial_restriction(self, element: GroupMember) -> OffsetRange:
        return OffsetRange(0, END)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, element: GroupMember, restriction: OffsetRange) -> int:
        return 1

    def split(self, element, restriction):
        yield restriction  # one reader per member


_RESTRICTION = beam.DoFn.RestrictionParam(_OpenRounds())


class ReadKafkaGroup(beam.DoFn):
    """GroupMember -> RawEvents of the partitions the group gives this member, until ``STOP``."""

    def __init__(self, bootstrap_servers: str, group_id: str, *, options: KafkaOptions | None = None,
                 poll_ms: int = 100):
        self.bootstrap_servers = bootstrap_servers
        self.group_id = group_id
        self.options = options or KafkaOptions()  # secret references are resolved in setup, on the worker
        self.poll_ms = poll_ms

    def setup(self):
        self.readers: dict[GroupMember, GroupReader] = {}
        self.last_check = 0.0

    def _reader(self, element: GroupMember) -> GroupReader:
        if element not in self.readers:
            config = self.options.for_client("consumer", **CONSUMER_DEFAULTS)
            config.update(bootstrap_servers=self.bootstrap_servers, group_id=self.group_id, enable_auto_commit=False)
            self.readers[element] = GroupReader(KafkaConsumer(**config), element.topic,
                                                max_records=int(config["max_poll_records"]), poll_ms=self.poll_ms)
        return self.readers[element]

    def process(self, element: GroupMember, bundle_finalizer=beam.DoFn.BundleFinalizerParam,
                restriction_tracker=_RESTRICTION):
        if STOP.is_set():
            # Every earlier bundle is finalized (committed): leave the group so the others take over now.
            reader = self.readers.pop(element, None)
            if reader is not None:
                reader.close()
            restriction_tracker.try_claim(END)  # marks the open range done: the job ends
            return
        if not restriction_tracker.try_claim(restriction_tracker.current_restriction().start):
            return
        reader = self._reader(element)
        try:
            records = reader.read()
        except KafkaError as exc:
            BROKER.failed(exc)
            records = []
        if not records:
            self._check_broker(reader, element)
        ends: dict[TopicPartition, int] = {}
        for record in records:
            if not STOP.claim_record():
                break
            ends[TopicPartition(record.topic, record.partition)] = record.offset + 1
            yield RawEvent(value=record.value or b"", key=record.key,
                           source=f"{record.topic}/{record.partition}@{record.offset}",
                           position=KafkaPosition(record.topic, record.partition, record.offset))
        if ends:
            bundle_finalizer.register(functools.partial(reader.made_durable, ends))
        if STOP.is_set():
            restriction_tracker.try_claim(END)
            return
        delay_ms = 0 if reader.backlog() else self.poll_ms
        restriction_tracker.defer_remainder(Duration(micros=delay_ms * 1000))

    def _check_broker(self, reader: GroupReader, element: GroupMember) -> None:
        """An idle poll looks the same whether the topic is quiet or the broker is gone: ask for the end offsets."""
        now = time.monotonic()
        if now - self.last_check < HEALTH_CHECK_EVERY_S:
            return
        self.last_check = now
        partitions = [TopicPartition(element.topic, p) for p in element.partitions or (0,)]
        try:
            reader.consumer.end_offsets(partitions, timeout_ms=HEALTH_CHECK_TIMEOUT_MS)
        except KafkaError as exc:
            BROKER.failed(exc)
        else:
            BROKER.answered()

    def teardown(self):
        for reader in getattr(self, "readers", {}).values():
            reader.close()
