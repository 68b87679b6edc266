"""``mixlm bench stream-group``: events/s and freshness of 1 and 2 ``mixlm stream`` consumers of one group.

For each consumer count, a fresh embedded broker (a topic of ``partitions`` partitions) and a
fresh store; the consumers are real ``mixlm stream`` processes of one group writing that one
store. Once the group has split the partitions between them, and one warm-up event per
partition is readable (every encoder has run once):

- live: events produced at ``rate_per_s`` for ``seconds``; freshness is the time from the
  producer's acknowledged send to the record being readable in LMDB (p50, p99);
- burst: ``burst`` events sent at once; events/s is their number over the time from the
  first send until the consumers' manifests count them all read (the counts commit in the
  transaction that writes the records, so they are readable then).

Each consumer gets the cores shared out as torch (OpenMP) threads, unless ``OMP_NUM_THREADS``
is set. Every event is a new item (it is encoded). ``reads`` and ``encoded`` sum the consumers' job
counts: with the partitions split, each event is read and encoded once however many
consumers there are.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mixlm.schemas import ItemEvent

TOPIC = "items"
GROUP = "bench"


def _events(corpus: Path | None, prefix: str, start: int, count: int) -> list[ItemEvent]:
    """``count`` new items: the corpus's documents under fresh ids (synthetic text without a corpus)."""
    texts: list[tuple[str, str]] = []
    if corpus is not None:
        from mixlm.schemas.beir import read_corpus

        texts = [(doc.title, doc.text) for doc in read_corpus(corpus, start + count)][start:]
    while len(texts) < count:
        n = start + len(texts)
        texts.append((f"Item {n}", f"Synthetic body {n}: " + " ".join(f"word{(n * 7 + k) % 997}" for k in range(60))))
    return [ItemEvent(f"{prefix}-{start + i:06d}", "upsert", 1, title, text) for i, (title, text) in enumerate(texts)]


def _start(bootstrap_servers: str, bundle_dir: str, store: Path, log_path: Path, extra,
           threads: int) -> subprocess.Popen:
    command = [sys.executable, "-c", "from mixlm.cli import main; main()", "stream", "--bootstrap-servers",
               bootstrap_servers, "--topic", TOPIC, "--group", GROUP, "--bundle", bundle_dir, "--store", str(store),
               *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": str(threads)}
    with open(log_path, "w") as log:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env)


def consumer_threads(n_consumers: int) -> int:
    """torch threads per consumer: the cores shared out (OpenMP threads of several processes that
    outnumber the cores spin against each other)."""
    return int(os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // n_consumers))


def _split(store, n: int, partitions: int) -> bool:
    shares = []
    for job in store.jobs.list():
        shown = job.outputs.get("partitions", "none")
        if job.status == "running" and shown != "none":
            shares.append({int(p) for p in shown.split(",")})
    return len(shares) == n and set().union(*shares) == set(range(partitions)) and \
        sum(map(len, shares)) == partitions


class _Readable:
    """When each produced item first became readable in LMDB."""

    def __init__(self, store, encoder_id: str):
        self.store = store
        self.encoder_id = encoder_id
        self.produced: dict[str, float] = {}
        self.seen: dict[str, float] = {}

    def poll(self) -> None:
        pending = [item_id for item_id in self.produced if item_id not in self.seen]
        if pending:
            now = time.perf_counter()
            for item_id in self.store.get_many(self.encoder_id, pending).item_ids:
                self.seen[item_id] = now

    def wait(self, timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        while len(self.seen) < len(self.produced) and time.perf_counter() < deadline:
            self.poll()
            time.sleep(0.005)


def _one_run(n_consumers: int, bundle_dir: str, corpus: Path | None, *, rate_per_s: float, seconds: float,
             burst: int, partitions: int, workdir: Path, extra, log: Callable[[str], None]) -> dict:
    from kafka import KafkaProducer

    from mixlm.devbroker.broker import EmbeddedBroker
    from mixlm.encoders.config import BundleConfig
    from mixlm.pipelines.produce import ensure_topic
    from mixlm.store import EmbeddingStore

    store_path = workdir / f"store-{n_consumers}"
    encoder_id = BundleConfig.load(bundle_dir).encoder_id
    live_events = _events(corpus, "live", 0, int(rate_per_s * seconds))
    burst_events = _events(corpus, "burst", len(live_events), burst)
    with EmbeddedBroker(log_path=workdir / f"broker-{n_consumers}.log") as broker:
        ensure_topic(broker.bootstrap_servers, TOPIC, partitions)
        store = EmbeddingStore.open(store_path, create=True)
        began = time.perf_counter()
        threads = consumer_threads(n_consumers)
        consumers = [_start(broker.bootstrap_servers, bundle_dir, store_path,
                            workdir / f"stream-{n_consumers}-{k}.log", extra, threads) for k in range(n_consumers)]
        try:
            deadline = time.perf_counter() + 180
            while not _split(store, n_consumers, partitions):
                if time.perf_counter() > deadline or any(p.poll() is not None for p in consumers):
                    raise RuntimeError(f"{n_consumers} consumers did not split the partitions; see {workdir}")
                time.sleep(0.1)
            joined_s = time.perf_counter() - began
            producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=0, acks="all")
            # one event per partition first, so that every consumer has run its encoder once before the clock runs
            warm = _Readable(store, encoder_id)
            for partition, event in enumerate(_events(None, "warmup", 0, partitions)):
                producer.send(TOPIC, key=event.item_id.encode(), value=event.to_json().encode(),
                              partition=partition).get(timeout=30)
                warm.produced[event.item_id] = time.perf_counter()
            warm.wait(120)
            live = _Readable(store, encoder_id)
            start = time.perf_counter()
            for index, event in enumerate(live_events):
                due = start + index / rate_per_s
                while time.perf_counter() < due:
                    live.poll()
                    time.sleep(0.002)
                producer.send(TOPIC, key=event.item_id.encode(), value=event.to_json().encode()).get(timeout=30)
                live.produced[event.item_id] = time.perf_counter()
            live.wait(60)
            latencies = np.array([live.seen[i] - live.produced[i] for i in live.seen]) * 1e3
            # The burst is timed by the consumers' manifests (counts commit with the records): polling
            # thousands of ids would take a core from the consumers.
            before = sum(job.counts.read for job in store.jobs.list())
            burst_producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5, acks="all",
                                           batch_size=64 * 1024)
            sent = time.perf_counter()
            for event in burst_events:
                burst_producer.send(TOPIC, key=event.item_id.encode(), value=event.to_json().encode())
            burst_producer.flush()
            burst_done = before
            deadline = time.perf_counter() + 300
            while burst_done < before + len(burst_events) and time.perf_counter() < deadline:
                time.sleep(0.02)
                burst_done = sum(job.counts.read for job in store.jobs.list())
            drained = time.perf_counter() - sent
            burst_readable = len(store.get_many(encoder_id, [e.item_id for e in burst_events]).item_ids)
            producer.close()
            burst_producer.close()
        finally:
            for process in consumers:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in consumers:
                try:
                    process.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    process.kill()
        jobs = store.jobs.list()
    events = partitions + len(live_events) + len(burst_events)
    result = {
        "consumers": n_consumers,
        "partitions": partitions,
        "threads_per_consumer": threads,
        "join_s": round(joined_s, 1),
        "live_rate_per_s": rate_per_s,
        "live_events": len(live_events),
        "live_readable": len(live.seen),
        "freshness_p50_ms": round(float(np.percentile(latencies, 50)), 1) if len(latencies) else None,
        "freshness_p99_ms": round(float(np.percentile(latencies, 99)), 1) if len(latencies) else None,
        "burst_events": len(burst_events),
        "burst_readable": burst_readable,
        "events_per_s": round((burst_done - before) / drained, 1) if drained > 0 else None,
        "reads": sum(job.counts.read for job in jobs),
        "encoded": sum(job.counts.encoded for job in jobs),
        "reads_per_event": round(sum(job.counts.read for job in jobs) / events, 3),
        "per_consumer_reads": sorted(job.counts.read for job in jobs),
    }
    log(f"  {n_consumers} consumer(s): joined in {result['join_s']} s, freshness p50 {result['freshness_p50_ms']} ms "
        f"p99 {result['freshness_p99_ms']} ms at {rate_per_s:g}/s; burst of {burst}: {result['events_per_s']} "
        f"events/s; {result['reads']} reads of {events} events")
    return result


def run_stream_group_bench(bundle_dir: str, corpus: Path | None = None, *, consumers=(1, 2),
                           rate_per_s: float = 40.0, seconds: float = 20.0, burst: int = 2_000, partitions: int = 4,
                           workdir: str | Path | None = None, stream_args=(),
                           log: Callable[[str], None] = print) -> dict:
    """One run per consumer count, in order; the report's ``results`` hold one row each."""
    results = []
    with tempfile.TemporaryDirectory(prefix="mixlm-stream-group-") as scratch:
        folder = Path(workdir or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for n in consumers:
            results.append(_one_run(n, bundle_dir, corpus, rate_per_s=rate_per_s, seconds=seconds, burst=burst,
                                    partitions=partitions, workdir=folder, extra=list(stream_args), log=log))
    base = results[0]
    ratios = {f"{row['consumers']}_over_{base['consumers']}": round(row["events_per_s"] / base["events_per_s"], 2)
              for row in results[1:] if row["events_per_s"] and base["events_per_s"]}
    return {"benchmark": "stream-group", "results": results, "events_per_s_ratio": ratios}
