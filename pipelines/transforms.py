"""The transforms both jobs share: parse + validate, classify against the store, sink.

They form one linear chain. An element is either a ``ParsedEvent`` still to be decided or an
``Outcome`` already decided, which later steps pass through: tagged outputs joined again by
a Flatten would split the fused stage on Beam's local runner, and then the sink of an
unbounded stream would run only when the stream ends.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import replace
from pathlib import Path

import apache_beam as beam

from mixlm.pipelines.elements import (
    DEAD,
    RECORD,
    STALE,
    UNCHANGED,
    Outcome,
    ParsedEvent,
    RawEvent,
)
from mixlm.pipelines.stop import STOP
from mixlm.schemas import DEFAULT_MAX_TEXT_BYTES, EmbeddingRecord, ValidationError, parse_item_event
from mixlm.schemas.dead_letter import DeadLetter
from mixlm.schemas.item_event import decode_json, rejection_reason
from mixlm.schemas.timefmt import format_rfc3339, utc_now
from mixlm.store import EmbeddingStore, SnapshotWriter

METRICS_NAMESPACE = "mixlm"


def dead_outcome(raw: RawEvent, reason: str) -> Outcome:
    letter = DeadLetter(reason=reason, raw=raw.value, source=raw.source, at=format_rfc3339(utc_now()))
    return Outcome(DEAD, raw.source, raw.position, dead_letter=letter)


class ParseEvents(beam.DoFn):
    """RawEvent -> ParsedEvent; anything else -> a dead-letter Outcome, whatever went wrong.

    Every input a reader hands over is accounted for: a reader's conversion error, a blank
    line or empty message, and any error while parsing one event are that event's dead
    letter, so one poison pill never fails the job.
    """

    def __init__(self, max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES):
        self.max_text_bytes = max_text_bytes

    def process(self, raw: RawEvent):
        if raw.error is not None:
            yield dead_outcome(raw, raw.error)
            return
        if not raw.value.strip():
            yield dead_outcome(raw, "blank line" if raw.position is None else "empty message")  # Kafka has positions
            return
        try:
            data = raw.value
            if raw.default_version is not None:
                data = _with_default_version(raw.value, raw.default_version)
            event = parse_item_event(data, max_text_bytes=self.max_text_bytes)
            auto_version = raw.default_version is not None and event.version == raw.default_version
            if raw.key is not None and raw.key != event.item_id.encode("utf-8"):
                raise ValidationError("key", f"Kafka key {raw.key[:60]!r} does not match item_id {event.item_id!r}")
        except Exception as exc:  # one event's failure, of whatever kind, is that event's dead letter
            yield dead_outcome(raw, rejection_reason(exc))
            return
        yield ParsedEvent(event, raw.source, raw.position, auto_version)


def _with_default_version(value: bytes, version: int) -> dict | bytes:
    """A catalog row without a version gets ``version``; anything undecodable is left to the validator."""
    try:
        data = decode_json(value)
    except ValidationError:
        return value
    if isinstance(data, dict) and data.get("version") is None:
        data = {**data, "version": version}
    return data


class ClassifyAgainstStore(beam.DoFn):
    """Decide per event: encode it, write it without encoding, or count it as stale/unchanged.

    Deletes become tombstones. An upsert whose content hash equals the stored record's is not
    encoded: with a newer version its stored vectors are rewritten under that version (so a
    late, older event cannot win), otherwise it is ``unchanged``. Events older than or equal
    to the stored version are ``stale`` before any encoding is spent on them. Catalog rows
    without versions (``auto_version``) are compared by content alone, except that a record
    stored without a display title gets one (a newer version of the same vectors). A stored
    record that fails its checksum counts as absent (``get_headers`` leaves it out): its version
    cannot be trusted, so the event is encoded and the sink's write replaces the record.
    """

    def __init__(self, store_path: str, encoder_id: str, job_id: str):
        self.store_path = store_path
        self.encoder_id = encoder_id
        self.job_id = job_id

    def setup(self):
        self.store = EmbeddingStore.open(self.store_path)

    def process(self, parsed: ParsedEvent | Outcome):
        if isinstance(parsed, Outcome):
            yield parsed
            return
        event = parsed.event
        header = self.store.get_headers(self.encoder_id, [event.item_id]).get(event.item_id)
        outcome = Outcome(RECORD, parsed.source, parsed.position)
        if event.is_delete:
            if header is not None and header.item_version >= event.version:
                yield replace(outcome, kind=STALE)
            else:
                yield replace(outcome, record=EmbeddingRecord.tombstone(
                    event.item_id, event.version, self.encoder_id, job_id=self.job_id, encoded_at=time.time()))
            return
        same_content = header is not None and not header.deleted and header.content_hash == event.content_hash()
        if parsed.auto_version and header is not None:
            if same_content and (header.title_len or not event.display_title()):
                yield replace(outcome, kind=UNCHANGED)
                return
            if header.item_version >= event.version:  # a clock behind the stored version: still newer
                parsed = replace(parsed, event=replace(event, version=header.item_version + 1))
                event = parsed.event
        if header is not None and header.item_version >= event.version:
            yield replace(outcome, kind=UNCHANGED if same_content else STALE)
        elif same_content:
            stored = self.store.get(self.encoder_id, event.item_id)
            yield replace(outcome, record=replace(stored, item_version=event.version, job_id=self.job_id,
                                                  encoded_at=time.time(), title=event.display_title()))
        else:
            yield parsed  # to the encoder


def outcome_counts(outcomes: list[Outcome]) -> dict[str, int]:
    """The counts a sink adds itself; written/deleted/stale-on-write come from the store write."""
    return {
        "read": len(outcomes),
        "encoded": sum(o.encoded for o in outcomes),
        "skipped_unchanged": sum(o.kind == UNCHANGED for o in outcomes),
        "stale": sum(o.kind == STALE for o in outcomes),
    }


class WriteOutcomes(beam.DoFn):
    """The one sink: records, counts, offsets and dead letters commit in one LMDB transaction.

    Buffers are flushed by ``finish_bundle`` at the latest, so everything a bundle read is
    durable before the runner finalizes the bundle (and the Kafka source commits offsets).
    Written records also go to a Parquet snapshot of the job; a streaming job writes a part
    file every ``snapshot_rows`` records, every ``snapshot_seconds``, and when it stops.
    """

    def __init__(self, store_path: str, job_id: str, encoder_id: str, *, snapshot_dtype: str = "float32",
                 snapshot_rows: int = 50_000, snapshot_seconds: float | None = None, flush_size: int = 512,
                 stop_aware: bool = False, dead_letter_topic: str | None = None, bootstrap_servers: str | None = None,
                 kafka_options=None):
        self.store_path = store_path
        self.job_id = job_id
        self.encoder_id = encoder_id
        self.snapshot_dtype = snapshot_dtype
        self.snapshot_rows = snapshot_rows
        self.snapshot_seconds = snapshot_seconds
        self.flush_size = flush_size
        self.stop_aware = stop_aware
        self.dead_letter_topic = dead_letter_topic
        self.bootstrap_servers = bootstrap_servers
        self.kafka_options = kafka_options  # a KafkaOptions: secret references resolved in setup

    def setup(self):
        self.store = EmbeddingStore.open(self.store_path)
        self.writer = SnapshotWriter(self.store.snapshots_dir, self.encoder_id, self.job_id,
                                     dtype=self.snapshot_dtype, rows_per_file=self.snapshot_rows)
        self.last_snapshot = time.monotonic()
        self.buffer: list[Outcome] = []
        self.producer = None
        if self.dead_letter_topic:
            from kafka import KafkaProducer

            from mixlm.pipelines.kafka_options import KafkaOptions

            config = (self.kafka_options or KafkaOptions()).for_client("producer", linger_ms=0)
            self.producer = KafkaProducer(bootstrap_servers=self.bootstrap_servers, **config)

    def process(self, outcome: Outcome):
        self.buffer.append(outcome)
        if len(self.buffer) >= self.flush_size:
            self._flush()

    def finish_bundle(self):
        self._flush()
        stopping = self.stop_aware and STOP.is_set()
        due = self.snapshot_seconds is None or time.monotonic() - self.last_snapshot >= self.snapshot_seconds
        if stopping or due:
            if self.writer.flush() is not None:
                self.store.jobs.update(self.job_id, outputs={"snapshot": str(self.writer.directory.resolve())})
            self.last_snapshot = time.monotonic()

    def teardown(self):
        if getattr(self, "writer", None) is not None:
            self.writer.flush()
        if getattr(self, "producer", None) is not None:
            self.producer.close()

    def _flush(self) -> None:
        if not self.buffer:
            return
        outcomes, self.buffer = self.buffer, []
        records = [o.record for o in outcomes if o.kind == RECORD]
        offsets: dict[str, dict[str, int]] = {}
        for o in outcomes:
            if o.position is not None:
                partitions = offsets.setdefault(o.position.topic, {})
                partitions[str(o.position.partition)] = max(partitions.get(str(o.position.partition), 0),
                                                             o.position.offset + 1)
        counts = outcome_counts(outcomes)
        dead_letters = [o.dead_letter for o in outcomes if o.kind == DEAD]
        self.store.put_many(records, job_id=self.job_id, counts=counts, offsets=offsets, dead_letters=dead_letters)
        self.writer.write(records)
        if self.producer is not None and dead_letters:
            # After the commit: the store holds every dead letter, the topic gets them at least once.
            for letter in dead_letters:
                self.producer.send(self.dead_letter_topic, key=letter.source.encode(),
                                   value=json.dumps({**letter.to_dict(), "job_id": self.job_id}).encode())
            self.producer.flush()


class ClassifyWithoutStore(beam.DoFn):
    """Snapshot-only jobs cannot read LMDB: deletes become tombstones, every upsert is encoded."""

    def __init__(self, encoder_id: str, job_id: str):
        self.encoder_id = encoder_id
        self.job_id = job_id

    def process(self, parsed: ParsedEvent | Outcome):
        if isinstance(parsed, Outcome) or not parsed.event.is_delete:
            yield parsed  # decided already, or to the encoder
            return
        event = parsed.event
        yield Outcome(RECORD, parsed.source, parsed.position, record=EmbeddingRecord.tombstone(
            event.item_id, event.version, self.encoder_id, job_id=self.job_id, encoded_at=time.time()))


SNAPSHOT_COUNTS = ("read", "encoded", "skipped_unchanged", "stale", "written", "deleted", "dead_lettered")


class WriteSnapshotOnly(beam.DoFn):
    """The sink of a distributed backfill: Parquet parts and dead-letter JSONL, counts as Beam metrics.

    ``snapshot_root`` must be a path every worker reaches; ``mixlm-store load`` then builds LMDB.
    The counts also go beside the parts, one small JSON file per bundle written after that
    bundle's parts and dead letters (``counts_dir``), for runners that report no Beam metrics
    (Beam's Dask runner); ``snapshot_counts`` sums them.
    """

    def __init__(self, snapshot_root: str, job_id: str, encoder_id: str, *, snapshot_dtype: str = "float32",
                 snapshot_rows: int = 50_000):
        self.snapshot_root = snapshot_root
        self.job_id = job_id
        self.encoder_id = encoder_id
        self.snapshot_dtype = snapshot_dtype
        self.snapshot_rows = snapshot_rows

    def setup(self):
        self.writer = SnapshotWriter(self.snapshot_root, self.encoder_id, self.job_id, dtype=self.snapshot_dtype,
                                     rows_per_file=self.snapshot_rows)
        self.counters = {name: beam.metrics.Metrics.counter(METRICS_NAMESPACE, name) for name in SNAPSHOT_COUNTS}
        self.dead_letter_file = None
        self.bundle_counts: dict[str, int] = dict.fromkeys(SNAPSHOT_COUNTS, 0)
        self.bundles = 0

    def process(self, outcome: Outcome):
        counts = outcome_counts([outcome])
        if outcome.kind == RECORD:
            counts["deleted" if outcome.record.deleted else "written"] = 1
            self.writer.write([outcome.record])
        elif outcome.kind == DEAD:
            counts["dead_lettered"] = 1
            self._dead_letters().write(json.dumps(outcome.dead_letter.to_dict()) + "\n")
        for name, value in counts.items():
            self.counters[name].inc(value)
            self.bundle_counts[name] += value

    def _dead_letters(self):
        if self.dead_letter_file is None:
            directory = Path(self.snapshot_root) / "dead_letters" / f"job={self.job_id}"
            directory.mkdir(parents=True, exist_ok=True)
            self.dead_letter_file = open(directory / f"part-{self.writer.writer_token}.jsonl", "a")  # noqa: SIM115
        return self.dead_letter_file

    def finish_bundle(self):
        self.writer.flush()
        if self.dead_letter_file is not None:
            self.dead_letter_file.flush()
        if self.bundle_counts["read"]:
            self._write_counts()

    def _write_counts(self) -> None:
        """This bundle's counts, once its parts and dead letters are written (atomically: a reader sees all or none)."""
        directory = counts_dir(self.snapshot_root, self.job_id)
        directory.mkdir(parents=True, exist_ok=True)
        name = f"counts-{self.writer.writer_token}-{self.bundles:05d}.json"
        temporary = directory / f".{name}.tmp"
        temporary.write_text(json.dumps({"job_id": self.job_id, "worker": f"{socket.gethostname()}:{os.getpid()}",
                                         "counts": self.bundle_counts}))
        os.replace(temporary, directory / name)
        self.bundles += 1
        self.bundle_counts = dict.fromkeys(SNAPSHOT_COUNTS, 0)

    def teardown(self):
        if self.dead_letter_file is not None:
            self.dead_letter_file.close()


def counts_dir(snapshot_root: str | Path, job_id: str) -> Path:
    return Path(snapshot_root) / "counts" / f"job={job_id}"


def snapshot_counts(snapshot_root: str | Path, job_id: str) -> tuple[dict[str, int], set[str]]:
    """The sum of a snapshot-only job's per-bundle counts files, and the workers (``host:pid``) that wrote them."""
    totals = dict.fromkeys(SNAPSHOT_COUNTS, 0)
    workers: set[str] = set()
    for file in sorted(counts_dir(snapshot_root, job_id).glob("counts-*.json")):
        written = json.loads(file.read_text())
        workers.add(written["worker"])
        for name, value in written["counts"].items():
            totals[name] = totals.get(name, 0) + value
    return totals, workers
