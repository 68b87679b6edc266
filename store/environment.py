"""The LMDB environment of a store directory: opened once per process, grown on demand.

LMDB forbids opening one environment twice in a process, and resizing the map while a
transaction of this process is open; ``LmdbEnvironment`` owns both rules. Readers in other
processes pick up a map grown by the writer through ``MapResizedError`` and retry.

LMDB's failures become the store's errors, one line each: a damaged file is
``StoreCorruptError``, a file that is not LMDB's ``StoreNotFoundError``, a full or read-only
disk ``UnavailableError``. The data file is checked against its own header before LMDB maps it.
"""

from __future__ import annotations

import errno
import os
import resource
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import lmdb

from mixlm.schemas.errors import UnavailableError
from mixlm.store.errors import DISK_FULL, StoreCorruptError, StoreNotFoundError

T = TypeVar("T")

DEFAULT_MAP_SIZE = 1 << 30
MAX_READERS = 1024
DB_NAMES = (b"records", b"jobs", b"meta", b"dead_letters")

# The start of an LMDB meta page (mdb.c, 64-bit): the 16-byte page header (mp_flags at byte 10),
# then MDB_meta: mm_magic, mm_version, mm_address, mm_mapsize, mm_dbs[2] (the free DB's md_pad
# holds the page size), mm_last_pg, mm_txnid. A data file starts with two meta pages.
_META = struct.Struct("=10xH4xI4x16xI92xQQ")  # mp_flags, mm_magic, page size, mm_last_pg, mm_txnid
_MAGIC = 0xBEEFC0DE
_P_META = 0x08
_PAGE_SIZES = frozenset(1 << n for n in range(9, 17))
# LMDB's errors for a damaged data file (a page of garbage, a broken tree).
_CORRUPT = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.PanicError, lmdb.BadValsizeError,
            lmdb.IncompatibleError, lmdb.PageFullError)
# LMDB reports a write the disk cut short as EIO; a filesystem with less free space is full.
_NEARLY_FULL_BYTES = 1 << 20


def check_data_file(data_file: Path) -> None:
    """Refuse a data file smaller than its header says, or one that is not LMDB's.

    LMDB maps the file without checking: reading a page past the end of a truncated file
    kills the process with SIGBUS, and opening an empty one writes a new environment into it.
    """
    with open(data_file, "rb") as file:
        metas, offset = [], 0
        for number in range(2):
            file.seek(offset)
            raw = file.read(_META.size)
            if len(raw) < _META.size:
                raise StoreCorruptError(f"{data_file} is truncated: {os.fstat(file.fileno()).st_size} bytes, "
                                        "less than LMDB's two meta pages")
            flags, magic, page_size, last_page, txnid = _META.unpack(raw)
            if number == 0 and magic != _MAGIC:
                raise StoreNotFoundError(f"{data_file} is not an LMDB data file")
            if magic != _MAGIC or not flags & _P_META or page_size not in _PAGE_SIZES:
                raise StoreCorruptError(f"{data_file} is corrupt: its meta page {number} is damaged")
            metas.append((txnid, last_page, page_size))
            offset = page_size
        _, last_page, page_size = max(metas)
        size = os.fstat(file.fileno()).st_size  # after the header: a writer only grows the file
    if size < (last_page + 1) * page_size:
        raise StoreCorruptError(f"{data_file} is truncated: {size} bytes, its header says at least "
                                f"{(last_page + 1) * page_size}")


def _short_write_cause(data_file: Path) -> int:
    """The errno behind LMDB's EIO for a write cut short: the file size limit, a full disk, or EIO."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and data_file.exists() and data_file.stat().st_size >= limit:
        return errno.EFBIG
    fs = os.statvfs(data_file.parent)
    return errno.ENOSPC if fs.f_bavail * fs.f_frsize < _NEARLY_FULL_BYTES else errno.EIO


class _SharedExclusiveLock:
    """Many transactions at once, or one map resize alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._exclusive = False

    def acquire_shared(self) -> None:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._active += 1

    def release_shared(self) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._active:
                self._cond.wait()
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class LmdbEnvironment:
    def __init__(self, path: Path, map_size: int, sync: bool, *, readonly: bool = False):
        self.path = path
        self.readonly = readonly
        if (path / "data.mdb").exists():  # an environment being created has no data file yet
            check_data_file(path / "data.mdb")
        with self._store_errors(opening=True):
            # Read-only, LMDB changes nothing but its lock file (none on a read-only filesystem).
            self.env = lmdb.open(
                str(path), map_size=map_size, max_dbs=len(DB_NAMES), max_readers=MAX_READERS,
                subdir=True, readonly=readonly, sync=sync, metasync=sync, readahead=False, lock=True,
            )
            try:
                self.dbs = {name.decode(): self.env.open_db(name, create=not readonly) for name in DB_NAMES}
            except BaseException:
                self.env.close()
                raise
        self._guard = _SharedExclusiveLock()
        self._write_lock = threading.Lock()

    def write(self, apply: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``apply`` in one write transaction; grow the map and retry when it is full."""
        with self._write_lock, self._store_errors():
            while True:
                txn = self._begin(write=True)
                try:
                    with txn:
                        return apply(txn)
                except lmdb.MapFullError:
                    pass
                finally:
                    self._guard.release_shared()
                with self._guard.exclusive():
                    self.env.set_mapsize(self.env.info()["map_size"] * 2)

    @contextmanager
    def read(self) -> Iterator[lmdb.Transaction]:
        """One read transaction with zero-copy buffers (valid only inside the block)."""
        with self._store_errors():
            txn = self._begin(write=False)
            try:
                yield txn
            finally:
                txn.abort()
                self._guard.release_shared()

    def close(self) -> None:
        """Close the environment once no transaction of this process is open."""
        with self._guard.exclusive():
            self.env.close()

    @contextmanager
    def _store_errors(self, *, opening: bool = False) -> Iterator[None]:
        """Raise LMDB's errors of a damaged file or an unavailable disk as the store's."""
        try:
            yield
        except lmdb.Error as exc:
            mapped = self._store_error(exc, opening)
            if mapped is None:
                raise
            raise mapped from exc

    def _store_error(self, exc: lmdb.Error, opening: bool) -> Exception | None:
        root, data_file = self.path.parent, self.path / "data.mdb"
        if isinstance(exc, _CORRUPT):
            return StoreCorruptError(f"{data_file} is corrupt ({exc})")
        if isinstance(exc, (lmdb.InvalidError, lmdb.VersionMismatchError)):
            return StoreNotFoundError(f"{data_file} is not an LMDB data file this mixlm reads ({exc})")
        if opening and isinstance(exc, lmdb.NotFoundError):
            return StoreNotFoundError(f"{root} is not a mixlm store (its LMDB file lacks the store's databases)")
        code = _short_write_cause(data_file) if exc.code == errno.EIO else exc.code
        if code in DISK_FULL:
            return UnavailableError(f"disk full writing the store at {root} ({os.strerror(code)})")
        if code == errno.EROFS:
            return UnavailableError(f"store {root} is on a read-only filesystem")
        if opening and code in (errno.EACCES, errno.EPERM):
            return UnavailableError(f"permission denied opening the store at {root}"
                                    f"{'' if self.readonly else ' for writing'}")
        if code == errno.EIO:
            return UnavailableError(f"I/O error on the store at {root} ({exc})")
        return None  # anything else is a bug here, not a failure of the disk: keep its traceback

    def _begin(self, write: bool) -> lmdb.Transaction:
        """Begin a transaction holding the shared guard; adopt a map grown by another process."""
        while True:
            self._guard.acquire_shared()
            try:
                return self.env.begin(write=write, buffers=not write)
            except lmdb.MapResizedError:
                self._guard.release_shared()
                self._adopt_grown_map()
            except BaseException:
                self._guard.release_shared()
                raise

    def _adopt_grown_map(self) -> None:
        with self._guard.exclusive():
            self.env.set_mapsize(0)

    def map_size(self) -> int:
        return self.env.info()["map_size"]


_OPEN: dict[tuple[int, str], LmdbEnvironment] = {}
_OPEN_LOCK = threading.Lock()


def open_environment(path: Path, *, map_size: int = DEFAULT_MAP_SIZE, sync: bool = True,
                     readonly: bool = False) -> LmdbEnvironment:
    """The process's one environment for ``path`` (keyed by pid too: never share across fork).

    A writable environment serves read-only requests too; a cached read-only one is closed and
    replaced when a writable one is asked for (stores opened on it must be opened again).
    """
    key = (os.getpid(), str(path.resolve()))
    with _OPEN_LOCK:
        env = _OPEN.get(key)
        if env is not None and env.readonly and not readonly:
            del _OPEN[key]
            env.close()
            env = None
        if env is None:
            env = LmdbEnvironment(path, map_size, sync, readonly=readonly)
            _OPEN[key] = env
        return env
