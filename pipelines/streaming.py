"""The streaming consumer: Kafka item events -> encoder -> the store, until stopped.

Each run is one member of the consumer group ``group_id``: runs of one group share the topic's
partitions and rebalance as members come and go. It resumes from the group's committed
offsets; offsets are committed only after the sink's write is durable, so a crash re-reads
(harmlessly: versions decide) rather than loses. SIGTERM/SIGINT or the bounds end it cleanly
with the manifest marked, and leave the group so the others take its partitions over at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import apache_beam as beam
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from mixlm.encoders.config import BundleConfig
from mixlm.pipelines.composite import EncodeToStore
from mixlm.pipelines.kafka_options import KafkaOptions
from mixlm.pipelines.kafka_source import (
    BROKER,
    DEFAULT_BROKER_TIMEOUT_S,
    GROUP,
    GroupMember,
    PartitionStart,
    ReadKafkaGroup,
)
from mixlm.pipelines.runner import pipeline_options, run_job
from mixlm.pipelines.stop import STOP
from mixlm.schemas import DEFAULT_MAX_TEXT_BYTES, JobManifest, UnavailableError
from mixlm.store import EmbeddingStore
from mixlm.store.errors import StoreError

SNAPSHOT_SECONDS = 60.0


def partition_starts(bootstrap_servers: str, topic: str, group_id: str, *,
                     timeout_s: float = DEFAULT_BROKER_TIMEOUT_S, options: KafkaOptions | None = None,
                     ) -> list[PartitionStart]:
    """Every partition of ``topic`` with the group's committed offset (else the earliest); joins no group."""
    config = (options or KafkaOptions()).for_client("consumer", bootstrap_timeout_ms=int(timeout_s * 1000))
    try:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=group_id, enable_auto_commit=False,
                                 **config)
    except KafkaError as exc:
        protocol = config.get("security_protocol", "PLAINTEXT")
        hint = f"; security_protocol {protocol}: check the broker's listener and the credentials" \
            if protocol != "PLAINTEXT" else ""
        raise UnavailableError(f"no Kafka broker answered on {bootstrap_servers} within {timeout_s:g} s "
                               f"({type(exc).__name__}){hint}") from None
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
               kafka_options: KafkaOptions | None = None, log: Callable[[str], None] = print) -> JobManifest:
    """Run until stopped; a broker that stays away longer than ``broker_timeout_s`` fails the job.

    ``kafka_options`` (security, tuning) go to every Kafka client of the job; the manifest
    and the log show them redacted.
    """
    options = kafka_options or KafkaOptions()
    encoder_id = BundleConfig.load(bundle_dir).encoder_id
    starts = partition_starts(bootstrap_servers, topic, group_id, timeout_s=broker_timeout_s, options=options)
    store = EmbeddingStore.open(store_path, create=True)
    params = {
        "bootstrap_servers": bootstrap_servers, "topic": topic, "group": group_id, "bundle": bundle_dir,
        "max_seconds": max_seconds, "max_records": max_records, "dead_letter_topic": dead_letter_topic,
        "start_offsets": {str(s.partition): s.offset for s in starts}}
    if options:
        params["kafka_options"] = options.redacted()
    job = store.jobs.create("stream", encoder_id, params=params,
                            outputs={"lmdb": str((store.root / "lmdb").resolve())})
    log(f"stream {job.job_id}: {topic} ({len(starts)} partitions, group {group_id}) -> {store.root}")
    STOP.configure(max_seconds=max_seconds, max_records=max_records)
    STOP.install_signal_handlers()
    BROKER.configure(bootstrap_servers, broker_timeout_s)

    def assigned(partitions: list[int]) -> None:
        shown = ",".join(str(p) for p in partitions) or "none"
        log(f"[{job.job_id}] group {group_id}: this consumer reads {topic} partitions {shown}")
        store.jobs.update(job.job_id, outputs={"partitions": shown, "assignments": str(GROUP.assignments)})

    GROUP.configure(assigned)
    member = GroupMember(topic, tuple(s.partition for s in starts))

    def run() -> None:
        with beam.Pipeline(options=pipeline_options(beam_args, streaming=True)) as pipeline:
            (pipeline
             | "Member" >> beam.Create([member])
             | "ReadKafka" >> beam.ParDo(ReadKafkaGroup(bootstrap_servers, group_id, options=options))
             | "EncodeToStore" >> EncodeToStore(
                        store_path=str(store.root), bundle_dir=bundle_dir, encoder_id=encoder_id, job_id=job.job_id,
                        max_text_bytes=max_text_bytes, device=device,
                        sink_options={"snapshot_dtype": snapshot_dtype, "snapshot_seconds": SNAPSHOT_SECONDS,
                                      "stop_aware": True, "dead_letter_topic": dead_letter_topic,
                                      "bootstrap_servers": bootstrap_servers, "kafka_options": options}))
        if BROKER.outages:
            store.jobs.update(job.job_id, errors=BROKER.outages)
        if BROKER.fatal:
            raise UnavailableError(BROKER.fatal)

    try:
        return run_job(store, job, run, log, stop_reason=lambda: STOP.reason)
    finally:
        GROUP.configure(None)
