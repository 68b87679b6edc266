"""Job registry: the manifests of backfill, stream and load runs, kept in the store's LMDB."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lmdb

from mixlm.schemas import JobCounts, JobManifest, new_job_id
from mixlm.schemas.timefmt import format_rfc3339, utc_now
from mixlm.store.environment import LmdbEnvironment
from mixlm.store.errors import JobNotFoundError


class JobRegistry:
    def __init__(self, env: LmdbEnvironment):
        self._env = env
        self._db = env.dbs["jobs"]

    def create(self, kind: str, encoder_id: str, *, params: Mapping[str, Any] | None = None,
               outputs: Mapping[str, str] | None = None) -> JobManifest:
        manifest = JobManifest(job_id=new_job_id(kind), kind=kind, encoder_id=encoder_id,
                               params=dict(params or {}), outputs=dict(outputs or {}))
        manifest.updated = manifest.started

        def apply(txn: lmdb.Transaction) -> None:
            if not txn.put(manifest.job_id.encode(), manifest.to_json().encode(), db=self._db,
                           overwrite=False):
                raise RuntimeError(f"job id collision: {manifest.job_id}")

        self._env.write(apply)
        return manifest

    def get(self, job_id: str) -> JobManifest:
        with self._env.read() as txn:
            raw = txn.get(job_id.encode(), db=self._db)
            if raw is None:
                raise JobNotFoundError(job_id, str(self._env.path.parent))
            return JobManifest.from_json(bytes(raw))

    def list(self) -> list[JobManifest]:
        """All manifests, newest first."""
        with self._env.read() as txn:
            jobs = [JobManifest.from_json(bytes(value)) for _, value in txn.cursor(db=self._db)]
        return sorted(jobs, key=lambda job: (job.started, job.job_id), reverse=True)

    def update(self, job_id: str, *, counts: JobCounts | Mapping[str, int] | None = None,
               offsets: Mapping[str, Mapping[str, int]] | None = None,
               outputs: Mapping[str, str] | None = None, errors: Sequence[str] = ()) -> JobManifest:
        """Add ``counts`` to the job's, replace the given offsets and outputs, append ``errors``; atomic."""
        return self._env.write(lambda txn: self.update_in(txn, job_id, counts=counts,
                                                          offsets=offsets, outputs=outputs, errors=errors))

    def finish(self, job_id: str, *, status: str = "succeeded", error: str | None = None) -> JobManifest:
        def apply(txn: lmdb.Transaction) -> JobManifest:
            manifest = self._load(txn, job_id)
            manifest.status = status
            manifest.finished = format_rfc3339(utc_now())
            manifest.updated = manifest.finished
            if error:
                manifest.errors.append(error)
            self._save(txn, manifest)
            return manifest

        return self._env.write(apply)

    def update_in(self, txn: lmdb.Transaction, job_id: str, *, counts=None, offsets=None,
                  outputs=None, errors: Sequence[str] = ()) -> JobManifest:
        """``update`` inside a caller's write transaction (records and counts commit together)."""
        manifest = self._load(txn, job_id)
        if counts:
            manifest.counts.add(counts)
        for topic, partitions in (offsets or {}).items():
            manifest.offsets.setdefault(topic, {}).update(
                {str(partition): int(offset) for partition, offset in partitions.items()}
            )
        manifest.outputs.update(outputs or {})
        manifest.errors.extend(errors)
        manifest.updated = format_rfc3339(utc_now())
        self._save(txn, manifest)
        return manifest

    def _load(self, txn: lmdb.Transaction, job_id: str) -> JobManifest:
        raw = txn.get(job_id.encode(), db=self._db)
        if raw is None:
            raise JobNotFoundError(job_id, str(self._env.path.parent))
        return JobManifest.from_json(bytes(raw))

    def _save(self, txn: lmdb.Transaction, manifest: JobManifest) -> None:
        txn.put(manifest.job_id.encode(), manifest.to_json().encode(), db=self._db)
