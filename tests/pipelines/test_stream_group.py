"""Streaming consumers of one group share the topic: real ``mixlm stream`` processes, Tansu, one LMDB store.

Tansu coordinates consumer groups (JoinGroup/SyncGroup/Heartbeat/LeaveGroup): with the
stream's 6 s session a member's first join takes about 3 s, a member joining or leaving
moves partitions in about 4 s, and a member killed with SIGKILL loses its partitions after
its session times out (about 9 s in all).
"""

import os
import signal
import subprocess
import sys
import threading
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from mixlm.encoders.config import BundleConfig
from mixlm.pipelines.kafka_source import CONSUMER_DEFAULTS, GroupReader
from mixlm.pipelines.produce import ensure_topic
from mixlm.pipelines.streaming import run_stream
from mixlm.store import EmbeddingStore
from tests.pipelines.streams import assert_counts_add_up, assert_store_matches, event_script, produce

TOPIC = "items"
GROUP = "shared"
ALL = {0, 1, 2, 3}


def _start(bootstrap_servers: str, bundle, store, log_path, *extra) -> subprocess.Popen:
    command = [sys.executable, "-c", "from mixlm.cli import main; main()", "stream", "--bootstrap-servers",
               bootstrap_servers, "--topic", TOPIC, "--group", GROUP, "--bundle", str(bundle), "--store", str(store),
               *extra]
    with open(log_path, "w") as log:  # a file, not a pipe: nobody reads it while the process runs
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log,
                                env={**os.environ, "PYTHONPATH": os.getcwd()})


def _jobs(store_path) -> list:
    if not (store_path / "lmdb" / "data.mdb").exists():
        return []
    return EmbeddingStore.open(store_path).jobs.list()


def _job_id(log_path) -> str | None:
    """The job id a consumer logs first (``stream <job_id>: ...``)."""
    for line in log_path.read_text().splitlines() if log_path.exists() else []:
        if line.startswith("stream "):
            return line.split()[1].rstrip(":")
    return None


def _partitions(job) -> set[int]:
    shown = job.outputs.get("partitions", "none")
    return set() if shown == "none" else {int(p) for p in shown.split(",")}


def _wait(predicate, timeout: float, what: str, processes=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for process in processes:
            assert process.poll() is None, f"a consumer exited ({process.returncode}) while waiting for {what}"
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _split_between(store_path, n: int):
    """The jobs once ``n`` of them hold disjoint, non-empty shares covering every partition."""
    jobs = [job for job in _jobs(store_path) if job.status == "running"]
    shares = [_partitions(job) for job in jobs]
    if len(jobs) == n and all(shares) and set().union(*shares) == ALL and sum(map(len, shares)) == len(ALL):
        return jobs
    return None


def _caught_up(bootstrap_servers: str, expected: int) -> bool:
    """The group has committed every record of the topic (``expected`` of them)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=GROUP, enable_auto_commit=False)
    try:
        tps = [TopicPartition(TOPIC, p) for p in sorted(ALL)]
        ends = consumer.end_offsets(tps)
        return sum(ends.values()) == expected and all((consumer.committed(tp) or 0) >= ends[tp] for tp in tps)
    finally:
        consumer.close(autocommit=False)


def _stop(*processes) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        assert process.wait(timeout=120) == 0


def test_two_consumers_split_the_partitions_and_read_every_event_once(tiny_bundle, kafka_broker, tmp_path):
    bootstrap = kafka_broker.bootstrap_servers
    messages, expected = event_script(n_items=60, n_valid=400, n_malformed=8, seed=3)
    ensure_topic(bootstrap, TOPIC, len(ALL))
    store_path = tmp_path / "store"
    consumers = [_start(bootstrap, tiny_bundle, store_path, tmp_path / f"stream-{n}.log") for n in range(2)]
    try:
        jobs = _wait(lambda: _split_between(store_path, 2), 120, "two consumers sharing the partitions", consumers)
        rebalances = {job.job_id: job.outputs["assignments"] for job in jobs}
        produce(bootstrap, TOPIC, messages, partitions=len(ALL))
        _wait(lambda: _caught_up(bootstrap, len(messages)), 120, "the group to commit every event", consumers)
        settled = {job.job_id: job.outputs["assignments"] for job in _jobs(store_path)}
    finally:
        _stop(*consumers)

    store = EmbeddingStore.open(store_path)
    jobs = store.jobs.list()
    assert len(jobs) == 2 and all(job.status == "succeeded" for job in jobs)
    read = sum(job.counts.read for job in jobs)
    replays = read - len(messages)
    if settled == rebalances:  # no rebalance while the events were read: each was read exactly once
        assert replays == 0, f"{read} reads of {len(messages)} events"
    else:
        assert 0 <= replays <= 50, f"{read} reads of {len(messages)} events around a rebalance"
    # each consumer read its own partitions, and did its share of the work
    written = [set(job.offsets.get(TOPIC, {})) for job in jobs]
    assert all(written) and not written[0] & written[1] and written[0] | written[1] == {str(p) for p in ALL}
    assert all(job.counts.read > 0 for job in jobs)
    for job in jobs:
        assert_counts_add_up(job.counts)
    dead = sum(job.counts.dead_lettered for job in jobs)
    assert dead == 8 if replays == 0 else dead >= 8
    assert_store_matches(store, jobs[0].encoder_id, expected)


def _member(bootstrap_servers: str, topic: str, group: str, **kwargs) -> GroupReader:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=group, enable_auto_commit=False,
                             **{**CONSUMER_DEFAULTS, "max_poll_records": 10})
    return GroupReader(consumer, topic, poll_ms=100, **kwargs)


def test_a_member_that_keeps_a_partition_through_a_rebalance_skips_none_of_its_queued_records(kafka_broker):
    """Eager rebalances revoke every partition; kafka-python keeps the position of those handed back.

    The first member queues more records than it hands out, then a second member joins: the
    records the first one dropped at the revocation must still be read, by whoever owns them.
    """
    bootstrap = kafka_broker.bootstrap_servers
    topic, per_partition = "rebalanced", 1_000
    ensure_topic(bootstrap, topic, 2)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    for partition in (0, 1):
        for offset in range(per_partition):
            producer.send(topic, value=b"%d" % offset, partition=partition)
    producer.flush()
    producer.close()
    expected = {(partition, offset) for partition in (0, 1) for offset in range(per_partition)}
    delivered: list[set] = [set(), set()]
    after_split: set = set()  # what the first member handed out once the partitions were split
    split, stop = threading.Event(), threading.Event()

    def consume(index: int, reader: GroupReader) -> None:
        try:
            while not stop.is_set():
                batch = reader.read()
                if batch:  # a bundle made durable at once: commit what was handed out
                    delivered[index].update((r.partition, r.offset) for r in batch)
                    if index == 0 and split.is_set():
                        after_split.update((r.partition, r.offset) for r in batch)
                    ends = {}
                    for r in batch:
                        ends[TopicPartition(r.topic, r.partition)] = r.offset + 1
                    reader.made_durable(ends)
                if index == 0 and not split.is_set():  # 25 records a second: its queues stay full through the join
                    time.sleep(0.2)
        finally:
            reader.close()

    first = _member(bootstrap, topic, "keepers", max_records=5, buffered=5_000)
    threads = [threading.Thread(target=consume, args=(0, first), daemon=True)]
    threads[0].start()
    _wait(lambda: len(first.assigned) == 2 and first.queued() >= 2 * per_partition - 500, 60,
          "the first member to hold both partitions and queue most of them")
    second = _member(bootstrap, topic, "keepers", max_records=50)
    threads.append(threading.Thread(target=consume, args=(1, second), daemon=True))
    threads[1].start()
    try:
        _wait(lambda: len(first.assigned) == 1 and len(second.assigned) == 1, 60, "the partitions to be split")
        kept = next(iter(first.assigned)).partition
        split.set()
        _wait(lambda: delivered[0] | delivered[1] >= expected, 60, "every record to be handed out")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert {p for p, _ in after_split} == {kept}  # the first member went on reading the partition it kept, only it
    assert (delivered[0] | delivered[1]) == expected


class VersionWatch:
    """Samples every item's stored version while the consumers run: it must never go backwards."""

    def __init__(self, store_path, encoder_id: str, item_ids):
        self.store_path = store_path
        self.encoder_id = encoder_id
        self.item_ids = sorted(item_ids)
        self.seen: dict[str, int] = {}
        self.regressions: list[str] = []
        self.samples = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.done.wait(0.1):
            if not (self.store_path / "lmdb" / "data.mdb").exists():
                continue
            headers = EmbeddingStore.open(self.store_path).get_headers(self.encoder_id, self.item_ids)
            for item_id, header in headers.items():
                before = self.seen.get(item_id, -1)
                if header.item_version < before:
                    self.regressions.append(f"{item_id}: version {before} then {header.item_version}")
                self.seen[item_id] = max(before, header.item_version)
            self.samples += 1


def test_a_killed_consumer_s_partitions_are_taken_over_and_nothing_is_lost(tiny_bundle, kafka_broker, tmp_path):
    bootstrap = kafka_broker.bootstrap_servers
    messages, expected = event_script(n_items=80, n_valid=600, n_malformed=6, seed=5)
    ensure_topic(bootstrap, TOPIC, len(ALL))
    store_path = tmp_path / "store"
    watch = VersionWatch(store_path, BundleConfig.load(tiny_bundle).encoder_id, expected)
    consumers = [_start(bootstrap, tiny_bundle, store_path, tmp_path / f"stream-{n}.log") for n in range(2)]
    victim = survivor = None
    try:
        _wait(lambda: _split_between(store_path, 2), 120, "two consumers sharing the partitions", consumers)
        watch.thread.start()
        chunks = [messages[i:i + 20] for i in range(0, len(messages), 20)]

        def steadily() -> None:  # a live topic: about 60 events a second for 10 s
            for chunk in chunks:
                produce(bootstrap, TOPIC, chunk, partitions=len(ALL))
                time.sleep(0.3)

        producer = threading.Thread(target=steadily, daemon=True)
        producer.start()
        # kill a consumer in the middle of its work
        _wait(lambda: all(job.counts.read >= 30 for job in _jobs(store_path)), 60, "both consumers reading",
              consumers)
        victim, survivor = consumers
        victim_id, survivor_id = (_job_id(tmp_path / f"stream-{n}.log") for n in range(2))
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed = EmbeddingStore.open(store_path).jobs.get(victim_id)
        _wait(lambda: _partitions(EmbeddingStore.open(store_path).jobs.get(survivor_id)) == ALL, 60,
              "the survivor to take every partition", [survivor])
        producer.join()
        _wait(lambda: _caught_up(bootstrap, len(messages)), 120, "the survivor to commit every event", [survivor])
    finally:
        watch.done.set()
        for process in consumers:
            if process.poll() is None and process is not survivor:
                process.kill()
    _stop(survivor)

    store = EmbeddingStore.open(store_path)
    killed_final = store.jobs.get(victim_id)
    finished = store.jobs.get(survivor_id)
    assert killed_final.status == "running" and killed_final.counts.read >= killed.counts.read > 0
    assert finished.status == "succeeded" and _partitions(finished) == ALL
    assert int(finished.outputs["assignments"]) >= 2  # its first share, then every partition
    read = killed_final.counts.read + finished.counts.read
    replays = read - len(messages)
    # nothing lost; what the killed consumer read after its last commit was read again, nothing more
    assert 0 <= replays <= killed_final.counts.read, f"{read} reads of {len(messages)} events"
    for job in (killed_final, finished):
        assert_counts_add_up(job.counts)
    assert_store_matches(store, finished.encoder_id, expected)
    assert watch.samples > 10 and not watch.regressions, watch.regressions[:10]


def test_a_backlog_on_one_partition_does_not_starve_the_others(tiny_bundle, kafka_broker, tmp_path):
    bootstrap = kafka_broker.bootstrap_servers
    ensure_topic(bootstrap, TOPIC, 3)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    messages, _expected = event_script(n_items=200, n_valid=1540, n_malformed=0, seed=9)
    for index, (key, value) in enumerate(messages):  # 1,500 on partition 0, 20 each on 1 and 2
        partition = 0 if index < 1500 else 1 + index % 2
        producer.send(TOPIC, key=key.encode(), value=value, partition=partition)
    producer.flush()
    producer.close()
    manifest = run_stream(bootstrap, TOPIC, "backlog", str(tiny_bundle), str(tmp_path / "store"),
                          max_records=600, max_seconds=120, log=lambda _line: None)
    assert manifest.outputs["stopped_by"] == "max-records reached"
    # kafka-python alone would hand out partition 0's fetched 1,500 first; the reader takes turns
    assert manifest.offsets[TOPIC] == {"0": 560, "1": 20, "2": 20}
