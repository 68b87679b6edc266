"""The streaming consumer: Kafka item events -> encoder -> the store, until stopped.

It resumes from the consumer group's committed offsets; offsets are committed only after
the sink's write is durable, so a crash re-reads (harmlessly: versions decide) rather than
loses. SIGTERM/SIGINT or the bounds end it cleanly with the manifest marked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import apache_beam as beam
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from mixlm.encoders.config import BundleConfig
from mixlm.pipelines.composite import EncodeToStore
from mixlm.pipelines.kafka_source import BROKER, DEFAULT_BROKER_TIMEOUT_S, PartitionStart, ReadKafkaPartitions
from mixlm.pipelines.runner import pipeline_options, run_job
from mixlm.pipelines.stop import STOP
from mixlm.schemas import DEFAULT_MAX_TEXT_BYTES, JobManifest, UnavailableError
from mixlm.store import EmbeddingStore
from mixlm.store.errors import StoreError

SNAPSHOT_SECONDS = 60.0


def partition_starts(bootstrap_servers: str, topic: str, group_id: str, *,
                     timeout_s: float = DEFAULT_BROKER_TIMEOUT_S) -> list[PartitionStart]:
    """Every partition of ``topic`` with the group's committed offset (else the earliest)."""
    try:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=group_id, enable_auto_commit=False,
                                 bootstrap_timeout_ms=int(timeout_s * 1000))
    except KafkaError as exc:
        raise UnavailableError(f"no Kafka broker answered on {bootstrap_servers} within {timeout_s:g} s "
                               f"({type(exc).__name__})") from None
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise StoreError(f"topic {topic!r} does not exist on {bootstrap_servers}; create it or produce to it first")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        earliest = consumer.beginning_offsets(tps)
        return [PartitionStart(topic, tp.partition, consumer.committed(tp) or earliest[tp]) for tp in tps]
    finally:
        consumer.close(autocommit=False)


def run_stream(bootstrap_servers: str, topic: str, group_id: str, bundle_dir: str, store_path: str, *,
               max_seconds: float | None = None, max_records: int | None = None,
               dead_letter_topic: str | None = None, beam_args: Sequence[str] = (),
               snapshot_dtype: str = "float32", max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES,
               device: str | None = None, broker_timeout_s: float = DEFAULT_BROKER_TIMEOUT_S,
               log: Callable[[str], None] = print) -> JobManifest:
    """Run until stopped; a broker that stays away longer than ``broker_timeout_s`` fails the job."""
    encoder_id = BundleConfig.load(bundle_dir).encoder_id
    starts = partition_starts(bootstrap_servers, topic, group_id, timeout_s=broker_timeout_s)
    store = EmbeddingStore.open(store_path, create=True)
    job = store.jobs.create("stream", encoder_id, params={
        "bootstrap_servers": bootstrap_servers, "topic": topic, "group": group_id, "bundle": bundle_dir,
        "max_seconds": max_seconds, "max_records": max_records, "dead_letter_topic": dead_letter_topic,
        "start_offsets": {str(s.partition): s.offset for s in starts}},
        outputs={"lmdb": str((store.root / "lmdb").resolve())})
    log(f"stream {job.job_id}: {topic} ({len(starts)} partitions, group {group_id}) -> {store.root}")
    STOP.configure(max_seconds=max_seconds, max_records=max_records)
    STOP.install_signal_handlers()
    BROKER.configure(bootstrap_servers, broker_timeout_s)

    def run() -> None:
        with beam.Pipeline(options=pipeline_options(beam_args, streaming=True)) as pipeline:
            (pipeline
             | "Partitions" >> beam.Create(starts)
             | "ReadKafka" >> beam.ParDo(ReadKafkaPartitions(bootstrap_servers, group_id))
             | "EncodeToStore" >> EncodeToStore(
                        store_path=str(store.root), bundle_dir=bundle_dir, encoder_id=encoder_id, job_id=job.job_id,
                        max_text_bytes=max_text_bytes, device=device,
                        sink_options={"snapshot_dtype": snapshot_dtype, "snapshot_seconds": SNAPSHOT_SECONDS,
                                      "stop_aware": True, "dead_letter_topic": dead_letter_topic,
                                      "bootstrap_servers": bootstrap_servers}))
        if BROKER.outages:
            store.jobs.update(job.job_id, errors=BROKER.outages)
        if BROKER.fatal:
            raise UnavailableError(BROKER.fatal)

    return run_job(store, job, run, log, stop_reason=lambda: STOP.reason)
