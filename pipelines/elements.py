"""What flows between the pipeline's transforms.

Every element read becomes exactly one ``Outcome`` at the sink, which is what makes the
job's counts add up: ``read = dead_lettered + written + deleted + stale + skipped_unchanged``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from mixlm.schemas import EmbeddingRecord, ItemEvent
from mixlm.schemas.dead_letter import DeadLetter


class KafkaPosition(NamedTuple):
    topic: str
    partition: int
    offset: int


@dataclass
class RawEvent:
    """One input as read: Kafka value bytes or a catalog line/row, and where it came from."""

    value: bytes
    source: str
    key: bytes | None = None
    position: KafkaPosition | None = None
    # Catalogs without versions (a BEIR corpus) get the job's start time as their version.
    default_version: int | None = None
    # Set by a reader that could not turn its input into an event: the dead letter's reason.
    error: str | None = None


@dataclass
class ParsedEvent:
    event: ItemEvent
    source: str
    position: KafkaPosition | None = None
    auto_version: bool = False  # the version is the job's, not the catalog's


# Outcome kinds
RECORD = "record"  # a record to write: encoded, a tombstone, or a version-only update
STALE = "stale"  # older than or equal to the stored version; nothing to write
UNCHANGED = "unchanged"  # same content and version as stored; nothing to write
DEAD = "dead"  # failed to read, parse, validate or encode: a dead letter


@dataclass
class Outcome:
    kind: str
    source: str
    position: KafkaPosition | None = None
    record: EmbeddingRecord | None = None
    dead_letter: DeadLetter | None = None
    encoded: bool = False
