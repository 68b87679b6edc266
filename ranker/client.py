"""``RankerClient``: score a query against candidate item ids using the store's embedding tokens."""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from mixlm.encoders.config import FusionConfig
from mixlm.ranker.defaults import DEFAULT_MAX_CANDIDATES
from mixlm.ranker.fusion import fuse
from mixlm.ranker.model import MixedInputRanker
from mixlm.ranker.results import RankRequest, RankResult, ScoredItem, ranked
from mixlm.schemas.errors import InputError
from mixlm.store import EmbeddingStore
from mixlm.store.errors import StoreError


class EncoderMismatchError(StoreError):
    pass


def missing_encoder(encoder_id: str, held: Sequence[str], root) -> str:
    """Why a bundle cannot rank over a store that has no records of its encoder, and what to do."""
    backfill = f"backfill the store with this bundle ('mixlm backfill --input PATH --bundle DIR --store {root}')"
    if not held:
        return f"the store {root} holds no records, so none of the bundle's encoder {encoder_id}: {backfill}"
    which = "that encoder" if len(held) == 1 else "one of them"
    return (f"the bundle's encoder {encoder_id} has no records in the store {root}, which holds encoder "
            f"{', '.join(held)}: {backfill}, or use the bundle of {which}")


class RankerClient:
    def __init__(self, ranker: MixedInputRanker, store: EmbeddingStore, *, query_encoder=None,
                 fusion: FusionConfig | None = None, encoder_id: str | None = None,
                 max_candidates: int = DEFAULT_MAX_CANDIDATES, backend: str = "amortized"):
        """``encoder_id`` defaults to the bundle's; embeddings of any other encoder are refused, and so,
        unless ``encoder_id`` is given, is a store without records of the bundle's encoder.

        ``query_encoder`` (the bundle's ``ItemEncoder``) is needed when the ranker reads the query's
        vectors (``RankerInputs``) or the fusion weighs dense scores; ``fusion`` gives the final
        score when first-stage scores come.
        """
        if encoder_id and encoder_id != ranker.encoder_id:
            raise EncoderMismatchError(f"embeddings of encoder {encoder_id} cannot feed this ranker, whose bundle "
                                       f"was trained with encoder {ranker.encoder_id}")
        if not encoder_id:
            held = store.encoders()
            if ranker.encoder_id not in held:
                raise EncoderMismatchError(missing_encoder(ranker.encoder_id, held, store.root))
        self.uses_dense = bool(fusion and fusion.dense)
        needs_query = ranker.inputs.query_vector or ranker.inputs.interaction or self.uses_dense
        if needs_query and query_encoder is None:
            raise InputError("this ranker reads the query's vectors: pass the bundle's encoder as query_encoder "
                             "(RankerClient.open does)")
        self.ranker = ranker
        self.store = store
        self.query_encoder = query_encoder if needs_query else None
        self.needs_retrieval = ranker.inputs.interaction or self.uses_dense
        self.fusion = fusion
        self.max_candidates = max_candidates
        self.backend = backend

    @classmethod
    def open(cls, bundle_dir: str | Path, store_path: str | Path, **kwargs) -> RankerClient:
        """The bundle's ranker (and encoder, for query tokens) over the store at ``store_path``."""
        from mixlm.encoders import ItemEncoder
        from mixlm.encoders.bundle import load_bundle

        bundle = load_bundle(bundle_dir)
        inputs, fusion = bundle.config.inputs, bundle.config.fusion
        needs_encoder = inputs.query_vector or inputs.interaction or bool(fusion and fusion.dense)
        encoder = ItemEncoder.from_bundle(bundle) if needs_encoder else None
        return cls(MixedInputRanker.from_bundle(bundle), EmbeddingStore.open(store_path, readonly=True),
                   query_encoder=encoder, fusion=bundle.config.fusion, **kwargs)

    def score(self, query: str, item_ids: Sequence[str],
              first_stage_scores: Mapping[str, float] | None = None) -> RankResult:
        """Scores per item id, in request order; duplicate ids are scored once.

        With ``first_stage_scores`` (one per item id, e.g. BM25) ``score`` is the bundle's fused
        final score; without, it is MixLM's log-odds.
        """
        return self.score_many([RankRequest(query, item_ids, first_stage_scores)])[0]

    def rank(self, query: str, item_ids: Sequence[str], top_k: int | None = None,
             first_stage_scores: Mapping[str, float] | None = None) -> RankResult:
        """The ``top_k`` best items by final score, best first (the shape of ``CrossEncoder.rank``)."""
        return ranked(self.score(query, item_ids, first_stage_scores), top_k)

    def score_many(self, requests: Sequence[RankRequest | tuple[str, Sequence[str]]]) -> list[RankResult]:
        """Several requests in shared forward passes (one prefill of all queries); results in order."""
        requests = [r if isinstance(r, RankRequest) else RankRequest(*r) for r in requests]
        lookups = []
        for request in requests:
            unique = list(dict.fromkeys(request.item_ids))
            if len(unique) > self.max_candidates:
                raise InputError(f"{len(unique)} candidates, more than the cap of {self.max_candidates} per request")
            if not request.query.strip():
                raise InputError("the query is empty")
            if request.first_stage_scores is not None:
                absent = [i for i in unique if i not in request.first_stage_scores]
                if absent:
                    raise InputError(f"first_stage_scores lacks {len(absent)} of the item ids, e.g. {absent[0]!r}")
            lookups.append(self.store.get_many(self.ranker.encoder_id, unique, retrieval=self.needs_retrieval,
                                               titles=True))
        queries = self._query_embeddings([r.query for r in requests])
        if self.backend == "naive":
            scores = [self.ranker.score(r.query, list(lookup.vectors), backend="naive", query_embedding=query,
                                        item_retrieval=lookup.retrieval_vectors)
                      for r, lookup, query in zip(requests, lookups, queries, strict=True)]
        else:
            scores = self.ranker.score_batch([(r.query, list(lookup.vectors))
                                              for r, lookup in zip(requests, lookups, strict=True)],
                                             query_embeddings=queries,
                                             item_retrievals=[lookup.retrieval_vectors for lookup in lookups])
        results = []
        for request, lookup, score, query in zip(requests, lookups, scores, queries, strict=True):
            first_stage = dense = None
            if request.first_stage_scores is not None:
                first_stage = np.array([float(request.first_stage_scores[i]) for i in lookup.item_ids])
                if self.uses_dense and lookup.item_ids:
                    dense = lookup.retrieval_vectors.astype(np.float64) @ query.retrieval_vector.astype(np.float64)
            final = fuse(self.fusion, score.log_odds, first_stage=first_stage, dense=dense)
            results.append(RankResult([ScoredItem(item_id, float(f), float(p), float(lo), title)
                                       for item_id, f, p, lo, title in
                                       zip(lookup.item_ids, final, score.p_yes, score.log_odds, lookup.titles,
                                           strict=True)],
                                      lookup.missing))
        return results

    def _query_embeddings(self, queries: Sequence[str]) -> list:
        if self.query_encoder is None:
            return [None] * len(queries)
        return self.query_encoder.encode_queries(queries)


class RequestBatcher:
    """Batches concurrent ``rank`` calls: requests that arrive within ``max_wait_ms`` of each other
    (up to ``max_requests``) share one prefill and one set of candidate passes.

    Callers on any thread call ``rank`` (or ``submit``, for a future); one worker thread owns the
    model. A caller that cancels its future before its batch starts is skipped. Each batch's size
    goes to ``on_batch`` (called on the worker thread) when given, else to ``batch_sizes``.
    """

    def __init__(self, client: RankerClient, *, max_wait_ms: float = 5.0, max_requests: int = 16,
                 on_batch: Callable[[int], None] | None = None):
        self.client = client
        self.max_wait = max_wait_ms / 1000
        self.max_requests = max_requests
        self.batch_sizes: list[int] = []
        self._on_batch = on_batch or self.batch_sizes.append
        self._closed = False
        self._queue: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="mixlm-ranker-batcher", daemon=True)
        self._worker.start()

    def submit(self, query: str, item_ids: Sequence[str], top_k: int | None = None,
               first_stage_scores: Mapping[str, float] | None = None) -> Future:
        """Queue one request; the future holds its ``RankResult`` (best first) or its error."""
        if self._closed:
            raise RuntimeError("the request batcher is closed")
        done: Future = Future()
        self._queue.put((RankRequest(query, list(item_ids), first_stage_scores), top_k, done))
        return done

    def rank(self, query: str, item_ids: Sequence[str], top_k: int | None = None,
             first_stage_scores: Mapping[str, float] | None = None) -> RankResult:
        return self.submit(query, item_ids, top_k, first_stage_scores).result()

    def close(self) -> None:
        """Serve what is queued, then stop the worker."""
        self._closed = True
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
            batch = [entry for entry in batch if entry[2].set_running_or_notify_cancel()]  # skip cancelled
            if batch:
                self._on_batch(len(batch))
                self._serve(batch)

    def _serve(self, batch) -> None:
        try:
            results = self.client.score_many([request for request, _, _ in batch])
        except Exception:  # noqa: BLE001 - one bad request must not fail the others: serve them alone
            if len(batch) > 1:
                for request in batch:
                    self._serve([request])
                return
            batch[0][2].set_exception(sys.exc_info()[1])
            return
        for (_, top_k, done), result in zip(batch, results, strict=True):
            done.set_result(ranked(result, top_k))
