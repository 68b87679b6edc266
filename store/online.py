"""The online embedding store: versioned records in LMDB, keyed ``encoder_id \\x00 item_id``."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lmdb
import numpy as np

from mixlm.schemas import CorruptRecordError, EmbeddingRecord, JobCounts, UnavailableError, check_encoder_id
from mixlm.schemas.dead_letter import DeadLetter
from mixlm.schemas.lmdb_value import KEY_SEP as _SEP
from mixlm.schemas.lmdb_value import (
    PAYLOAD_OFFSET,
    ValueHeader,
    decode_header,
    decode_title,
    decode_value,
    encode_value,
    lookup_fields,
    lookup_title,
    record_key,
)
from mixlm.store.dead_letters import DeadLetterLog
from mixlm.store.environment import DEFAULT_MAP_SIZE, LmdbEnvironment, open_environment
from mixlm.store.errors import DISK_FULL, CorruptItemError, EncoderNotFoundError, StoreNotFoundError
from mixlm.store.jobs import JobRegistry

STORE_FORMAT = b"1"
_ACTIVE = b"active_encoder"
_PREVIOUS = b"previous_encoder"
_FORMAT = b"store_format"
logger = logging.getLogger(__name__)


@dataclass
class WriteResult:
    written: int = 0
    deleted: int = 0
    stale: int = 0
    corrupt_replaced: int = 0  # of the written and deleted: they replaced a value that failed its check

    def as_counts(self) -> dict[str, int]:
        return {"written": self.written, "deleted": self.deleted, "stale": self.stale,
                "corrupt_replaced": self.corrupt_replaced}


@dataclass
class Lookup:
    """Vectors of the found ids, in request order, and the ids that were not found."""

    item_ids: list[str]
    vectors: np.ndarray  # [len(item_ids), T_S, dim]
    missing: list[str] = field(default_factory=list)
    retrieval_vectors: np.ndarray | None = None  # [len(item_ids), d], when asked for
    titles: list[str] | None = None  # display titles in item_ids' order, when asked for


@dataclass
class EncoderStats:
    encoder_id: str
    live: int = 0
    deleted: int = 0
    n_tokens: int = 0
    dim: int = 0
    dtype: str = ""
    value_bytes: int = 0


class EmbeddingStore:
    """A store directory: ``lmdb/`` (online records, jobs, meta) and ``snapshots/`` (Parquet)."""

    def __init__(self, root: Path, env: LmdbEnvironment):
        self.root = root
        self._env = env
        self._records = env.dbs["records"]
        self._meta = env.dbs["meta"]
        self.jobs = JobRegistry(env)
        self.dead_letters = DeadLetterLog(env)

    @classmethod
    def open(cls, root: str | Path, *, create: bool = False, readonly: bool = False,
             map_size: int = DEFAULT_MAP_SIZE, sync: bool = True) -> EmbeddingStore:
        """The store at ``root``, created first with ``create``.

        ``readonly`` opens LMDB read-only: nothing in the store is created or changed, and a
        store on a read-only filesystem can be read. Writing through such a store is a bug.
        """
        root = Path(root).expanduser()
        if root.is_file():
            raise StoreNotFoundError(f"{root} is a file, not a store directory")
        lmdb_dir = root / "lmdb"
        if not (lmdb_dir / "data.mdb").is_file():
            if not create:
                if not root.is_dir():
                    raise StoreNotFoundError(f"store directory {root} does not exist")
                raise StoreNotFoundError(f"{root} is not a mixlm store (no lmdb/data.mdb)")
            _create_atomically(lmdb_dir, map_size)
        store = cls(root, open_environment(lmdb_dir, map_size=map_size, sync=sync, readonly=readonly))
        with store._env.read() as txn:
            found = txn.get(_FORMAT, db=store._meta)
            found = None if found is None else bytes(found)
        if found is None:
            if not create:
                raise StoreNotFoundError(f"{root} is not a mixlm store (no format marker)")
            store._env.write(lambda txn: txn.put(_FORMAT, STORE_FORMAT, db=store._meta))
        elif found != STORE_FORMAT:
            raise StoreNotFoundError(
                f"{root} has store format {found.decode()!r}, this mixlm reads {STORE_FORMAT.decode()!r}"
            )
        return store

    @property
    def snapshots_dir(self) -> Path:
        return self.root / "snapshots"

    # -- writes ---------------------------------------------------------------------------

    def put_many(self, records: Iterable[EmbeddingRecord], *, job_id: str | None = None,
                 counts: JobCounts | Mapping[str, int] | None = None,
                 offsets: Mapping[str, Mapping[str, int]] | None = None,
                 dead_letters: Sequence[DeadLetter] = ()) -> WriteResult:
        """Write records in one transaction, keeping the newest ``item_version`` of each item.

        A record whose version is older than or equal to the stored one is a no-op and is
        counted as stale. A stored value that fails its checksum counts as absent (its version
        cannot be trusted): the record replaces it, counted in ``corrupt_replaced`` and logged
        as a warning. With ``job_id`` the job's counts (the write's own, ``counts`` and
        the dead letters), ``offsets`` and ``dead_letters`` commit in the same transaction.
        """
        if dead_letters and job_id is None:
            raise ValueError("dead letters belong to a job: pass job_id")
        encoded = [(r, record_key(r.encoder_id, r.item_id), encode_value(r)) for r in records]
        replaced: list[tuple[EmbeddingRecord, str]] = []  # (record, what was wrong with the stored value)

        def apply(txn: lmdb.Transaction) -> WriteResult:
            result = WriteResult()
            replaced.clear()  # a retry after growing the map starts over
            for record, key, value in encoded:
                existing = txn.get(key, db=self._records)
                if existing is not None:
                    try:
                        stored_version = decode_header(existing, key).item_version
                    except CorruptRecordError as exc:  # a version that cannot be trusted: absent
                        replaced.append((record, str(exc)))
                    else:
                        if stored_version >= record.item_version:
                            result.stale += 1
                            continue
                txn.put(key, value, db=self._records)
                if record.deleted:
                    result.deleted += 1
                else:
                    result.written += 1
            result.corrupt_replaced = len(replaced)
            if job_id is not None:
                total = JobCounts(**result.as_counts(), dead_lettered=len(dead_letters))
                if counts:
                    total.add(counts)
                manifest = self.jobs.update_in(txn, job_id, counts=total, offsets=offsets)
                if dead_letters:
                    first_seq = manifest.counts.dead_lettered - len(dead_letters)
                    self.dead_letters.append_in(txn, job_id, first_seq, list(dead_letters))
            return result

        result = self._env.write(apply)
        for record, reason in replaced:
            logger.warning("replaced a corrupt record of item %r (encoder %s) with version %d: %s",
                           record.item_id, record.encoder_id, record.item_version, reason)
        return result

    def promote(self, encoder_id: str, *, require_records: bool = True) -> str | None:
        """Make ``encoder_id`` the active encoder in one transaction; return the previous one."""
        check_encoder_id(encoder_id)
        if require_records and not self._has_records(encoder_id):
            raise EncoderNotFoundError(f"encoder {encoder_id!r} has no records in {self.root}; backfill it first")

        def apply(txn: lmdb.Transaction) -> str | None:
            previous = txn.get(_ACTIVE, db=self._meta)
            if previous is not None:
                txn.put(_PREVIOUS, previous, db=self._meta)
            txn.put(_ACTIVE, encoder_id.encode(), db=self._meta)
            return None if previous is None else previous.decode()

        return self._env.write(apply)

    # -- reads ----------------------------------------------------------------------------

    def active_encoder(self) -> str | None:
        with self._env.read() as txn:
            value = txn.get(_ACTIVE, db=self._meta)
            return None if value is None else bytes(value).decode()

    def resolve_encoder(self, encoder_id: str | None) -> str:
        """The given encoder id, which must have records here; else the active encoder; else, when the
        store holds records of one encoder only, that one. A clear error when there is none of these."""
        if encoder_id:
            check_encoder_id(encoder_id)
            if not self._has_records(encoder_id):  # reads only the way to its first key
                known = ", ".join(self.encoders()) or "none"
                raise EncoderNotFoundError(f"unknown encoder {encoder_id!r}: {self.root} has no records of it "
                                           f"(encoders in store: {known})")
            return encoder_id
        active = self.active_encoder()
        if active is not None:
            return active
        held = self.encoders()
        if len(held) == 1:
            return held[0]
        raise EncoderNotFoundError(
            f"no active encoder in {self.root}; pass --encoder (encoders in store: {', '.join(held) or 'none'}) "
            "or run 'mixlm-store promote <encoder_id>'"
        )

    def get(self, encoder_id: str, item_id: str) -> EmbeddingRecord | None:
        """The stored record, tombstones included; None when the item was never written."""
        with self._env.read() as txn:
            value = txn.get(record_key(encoder_id, item_id), db=self._records)
            if value is None:
                return None
            return _decode(value, encoder_id, item_id)

    def get_headers(self, encoder_id: str, item_ids: Sequence[str]) -> dict[str, ValueHeader]:
        """Verified headers (version, content hash, tombstone flag) of the stored items, one transaction.

        For writers deciding what is stale: a value that fails its checksum is left out, so it
        counts as absent and the next write replaces it (``put_many`` counts and logs that).
        """
        out: dict[str, ValueHeader] = {}
        with self._env.read() as txn:
            for item_id in item_ids:
                key = record_key(encoder_id, item_id)
                value = txn.get(key, db=self._records)
                if value is not None:
                    with contextlib.suppress(CorruptRecordError):
                        out[item_id] = decode_header(value, key)
        return out

    def titles(self, encoder_id: str, item_ids: Sequence[str]) -> dict[str, str]:
        """The display titles of the live items among ``item_ids``, verified, in one read transaction.

        Records written before titles were kept (value schema 1 and 2) have an empty title.
        """
        out: dict[str, str] = {}
        prefix = encoder_id.encode() + _SEP
        with self._env.read() as txn:
            for item_id in item_ids:
                key = prefix + item_id.encode("utf-8")
                value = txn.get(key, db=self._records)
                if value is None:
                    continue
                try:
                    deleted, title = decode_title(value, key)
                except CorruptRecordError as exc:
                    raise CorruptItemError(encoder_id, item_id, str(exc)) from None
                if not deleted:
                    out[item_id] = title
        return out

    def get_many(self, encoder_id: str, item_ids: Sequence[str], *, dtype: str | None = None,
                 retrieval: bool = False, titles: bool = False) -> Lookup:
        """Vectors ``[n, T_S, dim]`` of the live items among ``item_ids`` in one read transaction.

        Missing and deleted ids are listed in ``missing``; checksums are verified. With
        ``retrieval`` the items' retrieval vectors ``[n, d]`` come too (an item stored without
        one is an error: the caller's ranker needs it); with ``titles`` their display titles,
        from the same versions as the vectors.
        """
        found: list[str] = []
        found_titles: list[str] | None = [] if titles else None
        missing: list[str] = []
        prefix = encoder_id.encode() + _SEP
        out: np.ndarray | None = None
        retrieval_out: np.ndarray | None = None
        with self._env.read() as txn:
            for item_id in item_ids:
                key = prefix + item_id.encode("utf-8")
                value = txn.get(key, db=self._records)
                if value is None:
                    missing.append(item_id)
                    continue
                try:
                    deleted, value_dtype, n_tokens, dim, retrieval_dim = lookup_fields(value, key)
                except CorruptRecordError as exc:
                    raise CorruptItemError(encoder_id, item_id, str(exc)) from None
                if deleted:
                    missing.append(item_id)
                    continue
                if out is None:
                    layout = (value_dtype, n_tokens, dim)
                    row_bytes = n_tokens * dim * value_dtype.itemsize
                    out = np.empty((len(item_ids), n_tokens, dim), dtype=value_dtype.newbyteorder("<"))
                    raw = memoryview(out).cast("B")
                    if retrieval:
                        retrieval_width = retrieval_dim
                        retrieval_out = np.empty((len(item_ids), retrieval_dim), dtype=value_dtype.newbyteorder("<"))
                        retrieval_raw = memoryview(retrieval_out).cast("B")
                elif layout != (value_dtype, n_tokens, dim):
                    raise CorruptItemError(encoder_id, item_id, f"layout {(value_dtype.name, n_tokens, dim)} "
                                           f"differs from the batch's {(layout[0].name, *layout[1:])}")
                start = len(found) * row_bytes
                raw[start:start + row_bytes] = value[PAYLOAD_OFFSET:PAYLOAD_OFFSET + row_bytes]
                if retrieval:
                    if not retrieval_dim or retrieval_dim != retrieval_width:
                        raise CorruptItemError(encoder_id, item_id, f"retrieval vector of width {retrieval_dim}, "
                                               f"expected {retrieval_width or 'one'}")
                    size = retrieval_dim * value_dtype.itemsize
                    begin = PAYLOAD_OFFSET + row_bytes
                    retrieval_raw[len(found) * size:(len(found) + 1) * size] = value[begin:begin + size]
                if found_titles is not None:
                    try:
                        found_titles.append(lookup_title(value))
                    except CorruptRecordError as exc:
                        raise CorruptItemError(encoder_id, item_id, str(exc)) from None
                found.append(item_id)
        if out is None:
            return Lookup(found, np.empty((0, 0, 0), dtype=dtype or "float32"), missing,
                          np.empty((0, 0), dtype=dtype or "float32") if retrieval else None, found_titles)
        vectors = out[: len(found)]
        kept = None if retrieval_out is None else retrieval_out[: len(found)]
        if dtype is not None:
            vectors = vectors.astype(dtype)
            kept = None if kept is None else kept.astype(dtype)
        return Lookup(found, vectors, missing, kept, found_titles)

    def iter_records(self, encoder_id: str, *, include_deleted: bool = False) -> Iterator[EmbeddingRecord]:
        """Every record of one encoder in key order, in one read transaction."""
        prefix = encoder_id.encode() + _SEP
        with self._env.read() as txn:
            cursor = txn.cursor(db=self._records)
            if not cursor.set_range(prefix):
                return
            for key, value in cursor:
                key = bytes(key)
                if not key.startswith(prefix):
                    break
                record = _decode(value, encoder_id, _item_id(key, prefix, encoder_id))
                if include_deleted or not record.deleted:
                    yield record

    def encoders(self) -> list[str]:
        """Encoder ids that have records, found by skipping from one key prefix to the next."""
        found = []
        with self._env.read() as txn:
            cursor = txn.cursor(db=self._records)
            position = cursor.first()
            while position:
                key = bytes(cursor.key())
                encoder_id = key[: key.index(_SEP)]
                found.append(encoder_id.decode())
                position = cursor.set_range(encoder_id + b"\x01")
        return found

    def encoder_stats(self, encoder_id: str) -> EncoderStats:
        stats = EncoderStats(encoder_id)
        prefix = encoder_id.encode() + _SEP
        with self._env.read() as txn:
            cursor = txn.cursor(db=self._records)
            if cursor.set_range(prefix):
                for key, value in cursor:
                    key = bytes(key)
                    if not key.startswith(prefix):
                        break
                    header = _header(value, key, encoder_id, _item_id(key, prefix, encoder_id))
                    stats.value_bytes += len(value)
                    if header.deleted:
                        stats.deleted += 1
                        continue
                    stats.live += 1
                    stats.n_tokens, stats.dim, stats.dtype = header.n_tokens, header.dim, header.dtype.name
        return stats

    def stats(self) -> dict:
        info = self._env.env.info()
        stat = self._env.env.stat()
        return {
            "store": str(self.root),
            "active_encoder": self.active_encoder(),
            "map_size": info["map_size"],
            "used_bytes": (info["last_pgno"] + 1) * stat["psize"],
            "jobs": len(self.jobs.list()),
            "encoders": [vars(self.encoder_stats(e)) for e in self.encoders()],
        }

    def _has_records(self, encoder_id: str) -> bool:
        prefix = encoder_id.encode() + _SEP
        with self._env.read() as txn:
            cursor = txn.cursor(db=self._records)
            return cursor.set_range(prefix) and bytes(cursor.key()).startswith(prefix)


def _create_atomically(lmdb_dir: Path, map_size: int) -> None:
    """Build a complete environment (data file, named databases, format marker) under a temporary
    name, then rename it into place: no reader ever sees a store without its format marker.

    When another process wins the race, its store is kept and ours is discarded.
    """
    try:
        lmdb_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".lmdb-creating-", dir=lmdb_dir.parent))
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, *DISK_FULL):
            raise UnavailableError(f"cannot create a store at {lmdb_dir.parent}: {exc.strerror}") from None
        raise
    try:
        env = LmdbEnvironment(staging, map_size, sync=True)
        try:
            env.write(lambda txn: txn.put(_FORMAT, STORE_FORMAT, db=env.dbs["meta"]))
        finally:
            env.close()
        with contextlib.suppress(OSError):
            lmdb_dir.rmdir()  # an empty leftover of an interrupted creation; a non-empty one stays
        with contextlib.suppress(OSError):  # the loser of a creation race keeps the winner's store
            os.rename(staging, lmdb_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not (lmdb_dir / "data.mdb").is_file():
        raise StoreNotFoundError(f"could not create a store at {lmdb_dir.parent}: {lmdb_dir} is in the way")


def _item_id(key: bytes, prefix: bytes, encoder_id: str) -> str:
    """The item id of a key found under ``prefix``; a key that is not UTF-8 is damaged."""
    try:
        return key[len(prefix):].decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptItemError(encoder_id, key[len(prefix):].decode("utf-8", "backslashreplace"),
                               "its key is not UTF-8") from None


def _header(value, key: bytes, encoder_id: str, item_id: str) -> ValueHeader:
    try:
        return decode_header(value, key)
    except CorruptRecordError as exc:
        raise CorruptItemError(encoder_id, item_id, str(exc)) from None


def _decode(value, encoder_id: str, item_id: str) -> EmbeddingRecord:
    try:
        return decode_value(value, item_id, encoder_id)
    except CorruptRecordError as exc:
        raise CorruptItemError(encoder_id, item_id, str(exc)) from None
