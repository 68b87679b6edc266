"""``RankerClient``: score a query against candidate item ids using the store's embedding tokens."""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from mixlm.ranker.model import MixedInputRanker
from mixlm.store import EmbeddingStore
from mixlm.store.errors import StoreError

DEFAULT_MAX_CANDIDATES = 1_000


class EncoderMismatchError(StoreError):
    pass


@dataclass(frozen=True)
class ScoredItem:
    item_id: str
    score: float  # p(yes)
    log_odds: float


@dataclass
class RankResult:
    """Scored items (request order for ``score``, best first for ``rank``) and the ids not in the store."""

    items: list[ScoredItem]
    missing: list[str] = field(default_factory=list)


class RankerClient:
    def __init__(self, ranker: MixedInputRanker, store: EmbeddingStore, *, encoder_id: str | None = None,
                 max_candidates: int = DEFAULT_MAX_CANDIDATES, backend: str = "amortized"):
        """``encoder_id`` defaults to the bundle's; embeddings of any other encoder are refused."""
        if encoder_id and encoder_id != ranker.encoder_id:
            raise EncoderMismatchError(f"embeddings of encoder {encoder_id} cannot feed this ranker, whose bundle "
                                       f"was trained with encoder {ranker.encoder_id}")
        active = store.active_encoder()
        if not encoder_id and active and active != ranker.encoder_id and ranker.encoder_id not in store.encoders():
            raise EncoderMismatchError(f"the store's active encoder {active} is not the bundle's encoder "
                                       f"{ranker.encoder_id}; backfill with this bundle first")
        self.ranker = ranker
        self.store = store
        self.max_candidates = max_candidates
        self.backend = backend

    @classmethod
    def open(cls, bundle_dir: str | Path, store_path: str | Path, **kwargs) -> RankerClient:
        return cls(MixedInputRanker.from_bundle(bundle_dir), EmbeddingStore.open(store_path), **kwargs)

    def score(self, query: str, item_ids: Sequence[str]) -> RankResult:
        """p(yes) per item id, in request order; duplicate ids are scored once."""
        return self.score_many([(query, item_ids)])[0]

    def rank(self, query: str, item_ids: Sequence[str], top_k: int | None = None) -> RankResult:
        """The ``top_k`` best items by p(yes), best first (the shape of ``CrossEncoder.rank``)."""
        return _ranked(self.score(query, item_ids), top_k)

    def score_many(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[RankResult]:
        """Several requests in shared forward passes (one prefill of all queries); results in order."""
        lookups = []
        for query, item_ids in requests:
            unique = list(dict.fromkeys(item_ids))
            if len(unique) > self.max_candidates:
                raise ValueError(f"{len(unique)} candidates, more than the cap of {self.max_candidates} per request")
            if not query.strip():
                raise ValueError("the query is empty")
            lookups.append(self.store.get_many(self.ranker.encoder_id, unique))
        if self.backend == "naive":
            scores = [self.ranker.score(q, list(lookup.vectors), backend="naive")
                      for (q, _), lookup in zip(requests, lookups, strict=True)]
        else:
            scores = self.ranker.score_batch([(q, list(lookup.vectors))
                                              for (q, _), lookup in zip(requests, lookups, strict=True)])
        return [RankResult([ScoredItem(item_id, float(p), float(lo)) for item_id, p, lo in
                            zip(lookup.item_ids, score.p_yes, score.log_odds, strict=True)], lookup.missing)
                for lookup, score in zip(lookups, scores, strict=True)]


def _ranked(result: RankResult, top_k: int | None) -> RankResult:
    ordered = sorted(result.items, key=lambda item: item.log_odds, reverse=True)
    return RankResult(ordered[:top_k] if top_k else ordered, result.missing)


class RequestBatcher:
    """Batches concurrent ``rank`` calls: requests that arrive within ``max_wait_ms`` of each other
    (up to ``max_requests``) share one prefill and one set of candidate passes.

    Callers on any thread call ``rank``; one worker thread owns the model.
    """

    def __init__(self, client: RankerClient, *, max_wait_ms: float = 5.0, max_requests: int = 16):
        self.client = client
        self.max_wait = max_wait_ms / 1000
        self.max_requests = max_requests
        self.batch_sizes: list[int] = []
        self._queue: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="mixlm-ranker-batcher", daemon=True)
        self._worker.start()

    def rank(self, query: str, item_ids: Sequence[str], top_k: int | None = None) -> RankResult:
        done: Future = Future()
        self._queue.put((query, list(item_ids), top_k, done))
        return done.result()

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join()

    def __enter__(self) -> RequestBatcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_requests:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(item)
            self.batch_sizes.append(len(batch))
            self._serve(batch)

    def _serve(self, batch) -> None:
        try:
            results = self.client.score_many([(query, ids) for query, ids, _, _ in batch])
        except Exception:  # noqa: BLE001 - one bad request must not fail the others: serve them alone
            if len(batch) > 1:
                for request in batch:
                    self._serve([request])
                return
            batch[0][3].set_exception(sys.exc_info()[1])
            return
        for (_, _, top_k, done), result in zip(batch, results, strict=True):
            done.set_result(_ranked(result, top_k))
