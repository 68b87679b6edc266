"""The LMDB environment of a store directory: opened once per process, grown on demand.

LMDB forbids opening one environment twice in a process, and resizing the map while a
transaction of this process is open; ``LmdbEnvironment`` owns both rules. Readers in other
processes pick up a map grown by the writer through ``MapResizedError`` and retry.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import lmdb

T = TypeVar("T")

DEFAULT_MAP_SIZE = 1 << 30
MAX_READERS = 1024
DB_NAMES = (b"records", b"jobs", b"meta", b"dead_letters")


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
    def __init__(self, path: Path, map_size: int, sync: bool):
        self.path = path
        self.env = lmdb.open(
            str(path), map_size=map_size, max_dbs=len(DB_NAMES), max_readers=MAX_READERS,
            subdir=True, sync=sync, metasync=sync, readahead=False, lock=True,
        )
        self.dbs = {name.decode(): self.env.open_db(name) for name in DB_NAMES}
        self._guard = _SharedExclusiveLock()
        self._write_lock = threading.Lock()

    def write(self, apply: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``apply`` in one write transaction; grow the map and retry when it is full."""
        with self._write_lock:
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
        txn = self._begin(write=False)
        try:
            yield txn
        finally:
            txn.abort()
            self._guard.release_shared()

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


def open_environment(path: Path, *, map_size: int = DEFAULT_MAP_SIZE, sync: bool = True) -> LmdbEnvironment:
    """The process's one environment for ``path`` (keyed by pid too: never share across fork)."""
    key = (os.getpid(), str(path.resolve()))
    with _OPEN_LOCK:
        env = _OPEN.get(key)
        if env is None:
            env = LmdbEnvironment(path, map_size, sync)
            _OPEN[key] = env
        return env
