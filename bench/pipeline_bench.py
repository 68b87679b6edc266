"""Pipeline benchmarks: backfill overhead against the raw encoder loop, and streaming freshness."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mixlm.schemas import ItemEvent
from mixlm.schemas.beir import read_corpus


def corpus_events(corpus: Path, limit: int) -> list[ItemEvent]:
    return [ItemEvent(doc.doc_id, "upsert", 1, doc.title, doc.text) for doc in read_corpus(corpus, limit)]


def write_catalog(events: list[ItemEvent], path: Path) -> Path:
    """``events`` as a JSON-lines catalog that ``run_backfill`` reads."""
    path.write_text("".join(e.to_json() + "\n" for e in events))
    return path


def run_backfill_bench(bundle_dir: str, corpus: Path, *, n_items: int = 2_000,
                       log: Callable[[str], None] = print) -> dict:
    """Items/s of the raw encoder loop and of the Beam backfill on the same items, one run."""
    from mixlm.pipelines.backfill import run_backfill
    from mixlm.pipelines.encode import load_encoder

    events = corpus_events(corpus, n_items)
    encoder = load_encoder(bundle_dir, None)
    encoder.encode_events(events[:32], job_id="warmup")
    began = time.perf_counter()
    encoder.encode_events(events, job_id="bench")
    raw_seconds = time.perf_counter() - began
    log(f"  raw encoder: {len(events) / raw_seconds:,.1f} items/s")
    with tempfile.TemporaryDirectory(prefix="mixlm-backfill-bench-") as tmp:
        catalog = write_catalog(events, Path(tmp) / "items.jsonl")
        began = time.perf_counter()
        manifest = run_backfill(str(catalog), bundle_dir, str(Path(tmp) / "store"), log=lambda _line: None)
        pipeline_seconds = time.perf_counter() - began
    assert manifest.counts.encoded == len(events), manifest.counts
    log(f"  backfill:    {len(events) / pipeline_seconds:,.1f} items/s")
    return {
        "items": len(events),
        "raw_encoder_items_per_s": round(len(events) / raw_seconds, 1),
        "backfill_items_per_s": round(len(events) / pipeline_seconds, 1),
        "backfill_over_raw": round(raw_seconds / pipeline_seconds, 3),
    }


def run_freshness_bench(bundle_dir: str, corpus: Path, *, rate_per_s: float = 20.0, seconds: float = 20.0,
                        log: Callable[[str], None] = print) -> dict:
    """Produce at a fixed rate; time from produce to the record being readable in LMDB."""
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    from mixlm.devbroker.broker import EmbeddedBroker
    from mixlm.encoders.config import BundleConfig
    from mixlm.pipelines.streaming import run_stream
    from mixlm.store import EmbeddingStore

    n_events = int(rate_per_s * seconds)
    events = corpus_events(corpus, n_events)
    with tempfile.TemporaryDirectory(prefix="mixlm-freshness-") as tmp, EmbeddedBroker() as broker:
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
        admin.create_topics([NewTopic("items", 1, 1)])
        admin.close()
        store_path = str(Path(tmp) / "store")
        EmbeddingStore.open(store_path, create=True)
        encoder_id = BundleConfig.load(bundle_dir).encoder_id
        job = threading.Thread(target=run_stream, kwargs=dict(
            bootstrap_servers=broker.bootstrap_servers, topic="items", group_id="freshness", bundle_dir=bundle_dir,
            store_path=store_path, max_seconds=seconds + 15, log=lambda _line: None), daemon=True)
        job.start()
        time.sleep(3.0)  # let the pipeline start and load the encoder before the clock runs
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=0)
        store = EmbeddingStore.open(store_path)
        produced: dict[str, float] = {}
        seen: dict[str, float] = {}
        start = time.perf_counter()
        for index, event in enumerate(events):
            due = start + index / rate_per_s
            while time.perf_counter() < due:
                _poll(store, encoder_id, produced, seen)
                time.sleep(0.002)
            producer.send("items", key=event.item_id.encode(), value=event.to_json().encode())
            producer.flush()
            produced[event.item_id] = time.perf_counter()
        deadline = time.perf_counter() + 15
        while len(seen) < len(produced) and time.perf_counter() < deadline:
            _poll(store, encoder_id, produced, seen)
            time.sleep(0.002)
        job.join()
    latencies = np.array([seen[i] - produced[i] for i in seen]) * 1e3
    result = {
        "rate_per_s": rate_per_s,
        "events": len(produced),
        "readable": len(seen),
        "freshness_p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "freshness_p99_ms": round(float(np.percentile(latencies, 99)), 1),
    }
    log(f"  freshness p50 {result['freshness_p50_ms']} ms, p99 {result['freshness_p99_ms']} ms")
    return result


def _poll(store, encoder_id: str, produced: dict[str, float], seen: dict[str, float]) -> None:
    pending = [item_id for item_id in produced if item_id not in seen]
    if pending:
        now = time.perf_counter()
        for item_id in store.get_many(encoder_id, pending).item_ids:
            seen[item_id] = now
