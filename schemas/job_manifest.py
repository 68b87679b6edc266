"""JobManifest: what one backfill, stream or load run did, kept in the store's job registry."""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

from mixlm.schemas.errors import ValidationError
from mixlm.schemas.timefmt import format_rfc3339, utc_now

JOB_KINDS = ("backfill", "stream", "load")
JOB_STATUSES = ("running", "succeeded", "failed", "cancelled")
_ID_PREFIX = {"backfill": "bf", "stream": "st", "load": "ld"}
# The order of keys in JSON/YAML output; scripts may rely on it.
MANIFEST_KEYS = ("job_id", "kind", "status", "encoder_id", "started", "finished", "updated",
                 "counts", "offsets", "outputs", "params", "errors")


@dataclass
class JobCounts:
    """Every event read ends in one outcome: ``read = dead_lettered + written + deleted + stale +
    skipped_unchanged``. ``encoded`` and ``corrupt_replaced`` count within those: the upserts that
    went through the encoder, and the writes (or deletes) that replaced a stored record failing
    its checksum."""

    read: int = 0
    encoded: int = 0
    skipped_unchanged: int = 0
    written: int = 0
    deleted: int = 0
    stale: int = 0
    dead_lettered: int = 0
    corrupt_replaced: int = 0

    def add(self, other: JobCounts | dict[str, int]) -> None:
        values = asdict(other) if isinstance(other, JobCounts) else other
        for name, value in values.items():
            if name not in _COUNT_NAMES:
                raise ValidationError("counts", f"unknown count {name!r}")
            setattr(self, name, getattr(self, name) + int(value))


_COUNT_NAMES = tuple(f.name for f in fields(JobCounts))


def new_job_id(kind: str, now: datetime | None = None) -> str:
    """Ids sort by start time within a kind: ``bf-20261122T103000Z-7f3a``."""
    if kind not in JOB_KINDS:
        raise ValidationError("kind", f"must be one of {', '.join(JOB_KINDS)}, got {kind!r}")
    moment = now or utc_now()
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)  # the id says Z: it must be UTC wall time
    return f"{_ID_PREFIX[kind]}-{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


@dataclass
class JobManifest:
    job_id: str
    kind: str
    encoder_id: str
    status: str = "running"
    started: str = field(default_factory=lambda: format_rfc3339(utc_now()))
    finished: str | None = None
    updated: str | None = None
    counts: JobCounts = field(default_factory=JobCounts)
    # topic -> partition (as a string) -> next offset to read
    offsets: dict[str, dict[str, int]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in JOB_KINDS:
            raise ValidationError("kind", f"must be one of {', '.join(JOB_KINDS)}, got {self.kind!r}")
        if self.status not in JOB_STATUSES:
            raise ValidationError("status", f"must be one of {', '.join(JOB_STATUSES)}, got {self.status!r}")
        if isinstance(self.counts, dict):
            counts = JobCounts()
            counts.add(self.counts)
            self.counts = counts

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {key: data[key] for key in MANIFEST_KEYS}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobManifest:
        known = {key: data[key] for key in MANIFEST_KEYS if key in data}
        return cls(**known)

    @classmethod
    def from_json(cls, text: str | bytes) -> JobManifest:
        return cls.from_dict(json.loads(text))
