"""The ranking service's HTTP app (Starlette): routes, bearer auth, errors as JSON, metrics.

``create_app(client_factory, ...)`` builds it; ``mixlm serve`` runs it under uvicorn, and a test or
a bench can run it in-process (``mixlm.ranker.serve_cli.ServerThread``) or as a subprocess.
Ranking never runs on the event loop: requests go to the ``RequestBatcher``'s worker thread and
the loop awaits their futures, so concurrent requests share forward passes.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mixlm.ranker.api import ApiError, RerankInput, parse_json, parse_rerank, parse_score, result_body
from mixlm.ranker.defaults import DEFAULT_BATCH_SIZE, DEFAULT_BATCH_WAIT_MS, DEFAULT_MAX_QUEUE
from mixlm.ranker.metrics import ServerMetrics
from mixlm.ranker.service import Admission, RankingService
from mixlm.schemas.errors import CorruptRecordError, InputError
from mixlm.store.errors import StoreError

log = logging.getLogger("mixlm.serve")

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
RETRY_AFTER_S = 1


class _ClientGone(Exception):
    """The caller disconnected before its answer was ready."""


def create_app(client_factory: Callable[[], object], *, auth_token: str | None = None,
               max_queue: int = DEFAULT_MAX_QUEUE, batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
               batch_size: int = DEFAULT_BATCH_SIZE,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Starlette:
    """The app; ``client_factory`` (e.g. ``service.bundle_client_factory``) runs on a thread at startup.

    ``auth_token``: every endpoint but ``/healthz`` wants ``Authorization: Bearer <token>``.
    ``max_queue``: ranking requests in flight or waiting before new ones get 429.
    ``batch_wait_ms`` / ``batch_size``: the ``RequestBatcher``'s wait for company and its cap.
    ``app.state`` holds ``service``, ``metrics`` and ``admission`` for tests and benches.
    """
    metrics = ServerMetrics()
    service = RankingService(client_factory, batch_wait_ms=batch_wait_ms, batch_size=batch_size,
                             on_batch=metrics.batch_size.observe)
    admission = Admission(max_queue)
    metrics.queue_depth.set_function(lambda: admission.depth)
    metrics.queue_limit.set(max_queue)
    token = auth_token.encode() if auth_token is not None else None

    def endpoint(name: str, handler: Callable[[Request], Awaitable[Response]], *, auth: bool = True):
        async def wrapped(request: Request) -> Response:
            started = time.perf_counter()
            try:
                if auth and token is not None:
                    _check_bearer(request, token)
                response = await handler(request)
            except ApiError as exc:
                response = JSONResponse(exc.body(), exc.status, headers=exc.headers)
                metrics.errors.labels(name, str(exc.status), exc.reason).inc()
            except _ClientGone:
                response = Response(status_code=499)  # nobody reads it; counted for the metrics
                metrics.errors.labels(name, "499", "client_disconnected").inc()
            except Exception:  # noqa: BLE001 - a bug answers 500 without details; its traceback goes to the log
                log.exception("%s failed", name)
                response = JSONResponse({"error": "internal error (see the server's log)", "field": None}, 500)
                metrics.errors.labels(name, "500", "internal").inc()
            metrics.requests.labels(name, str(response.status_code)).inc()
            metrics.latency.labels(name).observe(time.perf_counter() - started)
            return response

        return wrapped

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        ready, reason = await run_in_threadpool(service.readiness)
        metrics.ready.set(1 if ready else 0)
        if ready:
            return JSONResponse({"ready": True, "encoder_id": service.encoder_id})
        return JSONResponse({"ready": False, "reason": reason}, 503)

    async def metrics_page(request: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    async def rerank(request: Request) -> Response:
        client = _loaded(service)
        data = parse_json(await _body(request, max_body_bytes))
        (result,) = await _rank(request, [parse_rerank(data, client.max_candidates)])
        return JSONResponse({**result_body(result), "encoder_id": client.ranker.encoder_id})

    async def score(request: Request) -> Response:
        client = _loaded(service)
        data = parse_json(await _body(request, max_body_bytes))
        results = await _rank(request, parse_score(data, client.max_candidates, admission.limit))
        return JSONResponse({"results": [result_body(r) for r in results], "encoder_id": client.ranker.encoder_id})

    async def _rank(request: Request, inputs: list[RerankInput]) -> list:
        if not admission.try_acquire(len(inputs)):
            raise ApiError(429, f"the queue is full ({admission.limit} requests in flight or waiting): retry later",
                           reason="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)})
        try:
            futures = service.submit(inputs)
        except RuntimeError as exc:  # the batcher closed: the server is stopping
            admission.release(len(inputs))
            raise ApiError(503, "the server is shutting down", reason="shutting_down") from exc
        admission.hold_until_done(futures)
        try:
            results = await _gather_unless_disconnected(request, futures)
        except InputError as exc:
            raise ApiError(400, str(exc), reason="invalid_request") from exc
        except (StoreError, CorruptRecordError) as exc:
            log.error("store error: %s", exc)
            raise ApiError(500, f"store error: {exc}", reason="store_error") from exc
        found = [len(set(i.request.item_ids)) - len(r.missing) for i, r in zip(inputs, results, strict=True)]
        metrics.items_scored.inc(sum(found))  # every distinct id found was scored, whatever top_n kept
        metrics.store_misses.inc(sum(len(r.missing) for r in results))
        return results

    @asynccontextmanager
    async def lifespan(app: Starlette):
        service.start()
        try:
            yield
        finally:  # uvicorn sends shutdown after in-flight requests finished (or its graceful timeout)
            await run_in_threadpool(service.close)

    routes = [
        Route("/healthz", endpoint("healthz", healthz, auth=False), methods=["GET"]),
        Route("/readyz", endpoint("readyz", readyz), methods=["GET"]),
        Route("/metrics", endpoint("metrics", metrics_page), methods=["GET"]),
        Route("/v1/rerank", endpoint("rerank", rerank), methods=["POST"]),
        Route("/v1/score", endpoint("score", score), methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error})
    app.state.service = service
    app.state.metrics = metrics
    app.state.admission = admission
    return app


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own answers (404 unknown path, 405 wrong method) in the API's error shape."""
    return JSONResponse({"error": exc.detail, "field": None}, exc.status_code, headers=exc.headers)


def _check_bearer(request: Request, token: bytes) -> None:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
        raise ApiError(401, "missing or wrong bearer token (Authorization: Bearer <token>)", reason="unauthorized",
                       headers={"WWW-Authenticate": "Bearer"})


def _loaded(service: RankingService):
    client = service.client
    if client is None:
        reason = f"loading failed: {service.load_error}" if service.load_error else "the models are loading"
        raise ApiError(503, f"not ready: {reason}", reason="not_ready", headers={"Retry-After": str(RETRY_AFTER_S)})
    return client


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body is {declared} bytes, more than the limit of {limit}", reason="body_too_large")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"the body is more than the limit of {limit} bytes", reason="body_too_large")
            chunks.append(chunk)
    except ClientDisconnect:
        raise _ClientGone from None
    return b"".join(chunks)


async def _gather_unless_disconnected(request: Request, futures) -> list:
    """The futures' results; if the caller disconnects first, cancel what has not started and give up.

    Cancelling a future the batcher has not picked up makes it skip that request; one already in a
    forward pass finishes and its result is dropped. Other callers' requests are never touched.
    """
    results = asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({results, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not results.done():
            results.cancel()
        gone.cancel()
    if results.done() and not results.cancelled():
        return results.result()  # raises a request's error
    raise _ClientGone


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
