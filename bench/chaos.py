"""``mixlm bench chaos``: a streaming consumer SIGKILLed at random moments must still end exactly right.

A script of item events (upserts, newer and older versions, duplicates, deletes, re-creates and
poison pills) goes to the embedded Kafka broker at a steady rate, as a live topic would fill.
``mixlm stream`` consumes it as a child process and is SIGKILLed at random moments; then one
last run catches up, and every item in the store is compared with the final state the script
implies.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mixlm.schemas import ItemEvent

TOPIC = "items"
GROUP = "chaos"
# Lines no consumer may choke on: each must become a dead letter while the valid events around it land.
POISON = (
    b"{not json",
    b"\xff\xfe binary",
    b'{"item_id": "x", "op": "upsert", "version": "12a", "text": "t"}',
    b'{"item_id": "x", "op": "merge", "version": 1}',
    b'{"op": "upsert", "version": 1, "text": "t"}',
    b'{"a":' * 1000 + b"1" + b"}" * 1000,
    b"[" * 1000 + b"]" * 1000,
    b'{"item_id": "x", "op": "upsert", "version": ' + b"9" * 5000 + b', "text": "t"}',
    b'{"item_id": "x", "op": "upsert", "version": 1, "text": "t", "extra": ' + b"7" * 5000 + b"}",
)


def event_script(n_items: int, n_valid: int, n_malformed: int, seed: int = 7) -> tuple[list[tuple[str, bytes]], dict]:
    """(key, value) messages with updates, deletes, re-creates, out-of-order versions, duplicates and
    poison pills, plus the expected final state: item_id -> ItemEvent of its highest version (None when deleted)."""
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
        else:  # a newer version: an update, a delete, or (after a delete) a re-create
            versions[item_id] += rng.randrange(1, 4)
            if rng.random() < 0.15:
                event = ItemEvent(item_id, "delete", versions[item_id])
            else:
                event = ItemEvent(item_id, "upsert", versions[item_id], f"Title {item_id}",
                                  f"Body of {item_id} at version {versions[item_id]}")
        if item_id not in latest or event.version > latest[item_id].version:
            latest[item_id] = event
        messages.append((item_id, event.to_json().encode()))
    for index in range(n_malformed):
        position = rng.randrange(len(messages) + 1)
        messages.insert(position, (f"bad-{index}", POISON[index % len(POISON)]))
    expected = {item_id: (None if event.is_delete else event) for item_id, event in latest.items()}
    return messages, expected


def produce_messages(bootstrap_servers: str, topic: str, messages, partitions: int = 3) -> None:
    """Send every message as it is (poison pills included), keyed by item_id where it has one."""
    from mixlm.pipelines.produce import ensure_topic, produce_lines

    ensure_topic(bootstrap_servers, topic, partitions)
    produce_lines(bootstrap_servers, topic, [value for _key, value in messages], raw=True, warn=lambda _line: None)


def _produce_steadily(bootstrap_servers: str, messages, seconds: float, chunks: int = 40) -> threading.Thread:
    """Send ``messages`` in order, in ``chunks`` spread over ``seconds``, from a background thread."""
    size = max(1, -(-len(messages) // chunks))

    def send() -> None:
        for start in range(0, len(messages), size):
            produce_messages(bootstrap_servers, TOPIC, messages[start:start + size])
            time.sleep(seconds / chunks)

    thread = threading.Thread(target=send, name="chaos-producer", daemon=True)
    thread.start()
    return thread


def store_mismatches(store, encoder_id: str, expected: dict) -> list[str]:
    """One line per item whose stored record differs from ``expected`` (item_id -> ItemEvent, None if deleted)."""
    problems = []
    for item_id, event in expected.items():
        record = store.get(encoder_id, item_id)
        if record is None:
            problems.append(f"{item_id}: never written")
        elif event is None:
            if not record.deleted:
                problems.append(f"{item_id}: should be deleted, holds version {record.item_version}")
        elif record.deleted or record.item_version != event.version:
            state = "deleted" if record.deleted else "live"
            problems.append(f"{item_id}: {state} at version {record.item_version}, expected live {event.version}")
        elif record.content_hash != event.content_hash():
            problems.append(f"{item_id}: content hash differs at version {record.item_version}")
        elif record.title != event.display_title():
            problems.append(f"{item_id}: display title {record.title!r} differs at version {record.item_version}")
    return problems


def _stream(bootstrap_servers: str, bundle_dir: str, store: Path, log_file, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-c", "from mixlm.cli import main; main()", "stream", "--bootstrap-servers",
               bootstrap_servers, "--topic", TOPIC, "--group", GROUP, "--bundle", bundle_dir, "--store", str(store),
               *extra]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log_file,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def _caught_up(bootstrap_servers: str) -> bool:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=GROUP, enable_auto_commit=False)
    try:
        tps = [TopicPartition(TOPIC, p) for p in sorted(consumer.partitions_for_topic(TOPIC) or [])]
        ends = consumer.end_offsets(tps)
        return all((consumer.committed(tp) or 0) >= ends[tp] for tp in tps)
    finally:
        consumer.close(autocommit=False)


def run_chaos(bundle_dir: str, *, n_events: int = 3000, n_items: int = 300, n_poison: int = 30, kills: int = 10,
              max_kill_delay_s: float = 1.5, produce_seconds: float | None = None, seed: int = 0,
              workdir: str | Path | None = None, log: Callable[[str], None] = print) -> dict:
    """Kill the consumer ``kills`` times at random moments, let a last run catch up, compare every item.

    The events arrive over ``produce_seconds`` (default: 6 s per kill). One kill in five lands as
    soon as the child has registered its job (during start-up); the others land up to
    ``max_kill_delay_s`` after it has started reading.
    """
    from mixlm.devbroker.broker import EmbeddedBroker
    from mixlm.store import EmbeddingStore

    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="mixlm-chaos-") as scratch:
        folder = Path(workdir or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        store_path = folder / "store"
        messages, expected = event_script(n_items, n_events, n_poison, seed=seed)
        with EmbeddedBroker(log_path=folder / "broker.log") as broker, open(folder / "stream.log", "ab") as stream_log:
            producer = _produce_steadily(broker.bootstrap_servers, messages, produce_seconds or 6.0 * kills)
            log(f"producing {len(messages):,} events ({n_poison} poison pills) for {n_items} items")
            for kill in range(1, kills + 1):
                process = _stream(broker.bootstrap_servers, bundle_dir, store_path, stream_log)
                during_start_up = rng.random() < 0.2
                _wait_for_a_job(store_path, jobs_before=kill - 1, process=process, reading=not during_start_up)
                if not during_start_up:
                    time.sleep(rng.uniform(0.0, max_kill_delay_s))
                process.send_signal(signal.SIGKILL)
                process.wait()
                read = _read_by_jobs(store_path)
                log(f"kill {kill}/{kills}: {sum(read):,} events read so far")
            producer.join()
            runs = 0
            while True:
                runs += 1
                process = _stream(broker.bootstrap_servers, bundle_dir, store_path, stream_log, "--max-seconds", "20")
                if process.wait() != 0:
                    raise RuntimeError(f"the final stream run failed (exit {process.returncode}); see {folder}")
                if _caught_up(broker.bootstrap_servers) or runs >= 5:
                    break
        store = EmbeddingStore.open(store_path)
        jobs = store.jobs.list()
        encoder_id = jobs[0].encoder_id
        mismatches = store_mismatches(store, encoder_id, expected)
        read = sum(job.counts.read for job in jobs)
        result = {
            "events": len(messages), "items_checked": len(expected), "mismatches": len(mismatches),
            "kills": kills, "killed_mid_stream": sum(1 for job in jobs if job.status == "running" and job.counts.read),
            "jobs": len(jobs), "events_read": read, "events_replayed": read - len(messages),
            "dead_lettered": sum(job.counts.dead_lettered for job in jobs), "poison_pills": n_poison,
            "first_mismatches": mismatches[:10],
        }
        store_path_shown = str(store_path) if workdir else "(removed)"
        log(f"store {store_path_shown}: {json.dumps({k: v for k, v in result.items() if k != 'first_mismatches'})}")
        return result


def _wait_for_a_job(store_path: Path, *, jobs_before: int, process: subprocess.Popen, reading: bool,
                    timeout: float = 120.0, reading_timeout: float = 15.0) -> None:
    """Until the child has registered its job (and, with ``reading``, has read an event or waited
    ``reading_timeout`` for one), or it exited."""
    from mixlm.store import EmbeddingStore

    deadline = registered = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if (store_path / "lmdb" / "data.mdb").exists():
            jobs = EmbeddingStore.open(store_path).jobs.list()
            if len(jobs) > jobs_before and (not reading or jobs[0].counts.read > 0
                                            or time.monotonic() > registered + reading_timeout):
                return
            if len(jobs) <= jobs_before:
                registered = time.monotonic()
        time.sleep(0.05)


def _read_by_jobs(store_path: Path) -> list[int]:
    from mixlm.store import EmbeddingStore

    if not (store_path / "lmdb" / "data.mdb").exists():
        return []
    return [job.counts.read for job in EmbeddingStore.open(store_path).jobs.list()]
