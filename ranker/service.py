"""The ranker behind the HTTP API: loaded off the event loop, one ``RequestBatcher``, a bounded queue.

Models load on a background thread so that ``/healthz`` answers (and ``/readyz`` says "loading")
while they do; a load failure is reported by ``/readyz`` rather than killing the process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path

from mixlm.ranker.api import RerankInput
from mixlm.ranker.defaults import DEFAULT_BATCH_SIZE, DEFAULT_BATCH_WAIT_MS
from mixlm.schemas.errors import MixlmError

log = logging.getLogger("mixlm.serve")


class RankingService:
    def __init__(self, client_factory: Callable[[], object], *, batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
                 batch_size: int = DEFAULT_BATCH_SIZE,
                 on_batch: Callable[[int], None] | None = None):
        """``client_factory`` returns a ``RankerClient`` (or anything with its ``score_many``,
        ``max_candidates``, ``ranker.encoder_id`` and ``store``); it runs once, on the loader thread."""
        self._factory = client_factory
        self._batch_wait_ms = batch_wait_ms
        self._batch_size = batch_size
        self._on_batch = on_batch
        self._lock = threading.Lock()
        self._closed = False
        self.client = None
        self.batcher = None
        self.load_error: str | None = None

    def start(self) -> None:
        threading.Thread(target=self._load, name="mixlm-serve-loader", daemon=True).start()

    def _load(self) -> None:
        from mixlm.ranker.client import RequestBatcher

        started = time.monotonic()
        log.info("loading the models")
        try:
            client = self._factory()
        except Exception as exc:  # noqa: BLE001 - reported by /readyz and the log; the process keeps serving
            self.load_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.error("loading failed: %s", self.load_error, exc_info=not _is_user_error(exc))
            return
        with self._lock:
            if self._closed:
                return
            self.batcher = RequestBatcher(client, max_wait_ms=self._batch_wait_ms, max_requests=self._batch_size,
                                          on_batch=self._on_batch)
            self.client = client
        log.info("models loaded in %.1f s: encoder %s, up to %d candidates per request",
                 time.monotonic() - started, client.ranker.encoder_id, client.max_candidates)

    @property
    def encoder_id(self) -> str | None:
        return self.client.ranker.encoder_id if self.client is not None else None

    def readiness(self) -> tuple[bool, str]:
        """(ready, why): models loaded, the store readable and holding the bundle's encoder's records."""
        if self.load_error is not None:
            return False, f"loading failed: {self.load_error}"
        client = self.client
        if client is None:
            return False, "loading the models"
        try:
            encoders = client.store.encoders()
        except Exception as exc:  # noqa: BLE001 - any failure to read is "not ready", with its reason
            return False, f"the store is not readable: {exc}"
        if client.ranker.encoder_id not in encoders:
            others = f" (it holds {', '.join(encoders)})" if encoders else " (it is empty)"
            return False, (f"the store has no records of the bundle's encoder {client.ranker.encoder_id}{others}: "
                           "backfill with this bundle")
        return True, "ready"

    def submit(self, inputs: Sequence[RerankInput]) -> list[Future]:
        """One future per request, each holding its ``RankResult`` best first (cut to ``top_n``)."""
        return [self.batcher.submit(i.request.query, i.request.item_ids, i.top_n, i.request.first_stage_scores)
                for i in inputs]

    def close(self) -> None:
        """Serve what the batcher holds, then stop it (after the HTTP server drained its requests)."""
        with self._lock:
            self._closed = True
            batcher = self.batcher
        if batcher is not None:
            batcher.close()


class Admission:
    """Counts ranking requests in flight or waiting (each of ``/v1/score``'s counts); refuses past ``limit``.

    Slots are released when a request's future completes or is cancelled, not when its HTTP
    caller leaves, so a caller that disconnects frees nothing the batcher is still working on.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.depth = 0
        self._lock = threading.Lock()

    def try_acquire(self, n: int) -> bool:
        with self._lock:
            if self.depth + n > self.limit:
                return False
            self.depth += n
            return True

    def release(self, n: int = 1) -> None:
        with self._lock:
            self.depth -= n

    def hold_until_done(self, futures: Sequence[Future]) -> None:
        for future in futures:
            future.add_done_callback(lambda _: self.release(1))


def bundle_client_factory(bundle_dir: str | Path, store_path: str | Path, *, max_candidates: int,
                          backend: str = "amortized") -> Callable[[], object]:
    """What ``mixlm serve`` loads: the bundle's ranker over the store, for the bundle's own encoder.

    The encoder id is given explicitly, so a store whose active encoder is another one is not an
    error at load: ``/readyz`` says the bundle's records are missing until a backfill writes them.
    """
    from mixlm.encoders.bundle import load_bundle

    encoder_id = load_bundle(bundle_dir).encoder_id

    def factory():
        from mixlm.ranker.client import RankerClient

        return RankerClient.open(bundle_dir, store_path, encoder_id=encoder_id, max_candidates=max_candidates,
                                 backend=backend)

    return factory


def _is_user_error(exc: BaseException) -> bool:
    """A bad bundle, store or setting (one line says it all), not a bug (whose traceback is logged)."""
    return isinstance(exc, MixlmError)
