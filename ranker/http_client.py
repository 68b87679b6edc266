"""``RankerHTTPClient``: the ranking service's API from Python, on the standard library alone.

No torch, no models: ``mixlm rank --server URL`` and remote callers use this. Errors are one
line: an unreachable server is ``UnavailableError`` (exit 5 at the command line), an answer of
429 or 5xx ``ServerBusyError`` / ``ServerError`` (also unavailable), a rejected request (400,
401, 413) ``RequestRejected``, an ``InputError`` (exit 1).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mixlm.ranker.results import RankRequest, RankResult, ScoredItem
from mixlm.schemas.errors import InputError, UnavailableError


@dataclass
class RemoteRankResult(RankResult):
    """A ``RankResult`` (best first) with the ``encoder_id`` of the embeddings the server scored with."""

    encoder_id: str = ""


class ServerError(UnavailableError):
    """The server answered 5xx (or 429): the request was fine, the service was not."""

    def __init__(self, status: int, message: str, detail: str = "", retry_after: float | None = None):
        self.status = status
        self.detail = detail  # the server's own words (its "error", or /readyz's "reason")
        self.retry_after = retry_after
        super().__init__(message)


class ServerBusyError(ServerError):
    """429: the server's queue is full; ``retry_after`` says when to try again."""


class RequestRejected(InputError):
    """The server refused the request (400, 401, 413, ...); ``field`` names the culprit when it did."""

    def __init__(self, status: int, message: str, detail: str = "", field: str | None = None):
        self.status = status
        self.detail = detail
        self.field = field
        super().__init__(message)


class RankerHTTPClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0):
        """``url``: the server's base URL (``http://127.0.0.1:8080``); ``token``: its bearer token, if any."""
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def rerank(self, query: str, item_ids: Sequence[str], top_n: int | None = None,
               first_stage_scores: Mapping[str, float] | None = None) -> RemoteRankResult:
        """The best ``top_n`` (all without) of ``item_ids`` for ``query``, best first by final score."""
        body = _request_body(RankRequest(query, item_ids, first_stage_scores), top_n)
        data = self._call("POST", "/v1/rerank", body)
        return _result(data, data.get("encoder_id", ""))

    def score(self, requests: Sequence[RankRequest | tuple[str, Sequence[str]]],
              top_n: int | None = None) -> list[RemoteRankResult]:
        """Several requests in one call (they share forward passes on the server); results in order."""
        requests = [r if isinstance(r, RankRequest) else RankRequest(*r) for r in requests]
        data = self._call("POST", "/v1/score", {"requests": [_request_body(r, top_n) for r in requests]})
        return [_result(entry, data.get("encoder_id", "")) for entry in data["results"]]

    def ready(self) -> tuple[bool, str]:
        """(ready, why) from ``/readyz``."""
        try:
            data = self._call("GET", "/readyz")
        except ServerError as exc:
            if exc.status == 503:
                return False, exc.detail
            raise
        return True, data.get("encoder_id", "")

    def _call(self, method: str, path: str, body: Any = None) -> dict:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise _answer_error(self.url + path, exc) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise UnavailableError(f"ranking server {self.url} did not answer within {self.timeout:g} s") from None
            raise UnavailableError(f"ranking server {self.url} is unreachable: {_reason(exc.reason)}") from None
        except TimeoutError as exc:
            raise UnavailableError(f"ranking server {self.url} did not answer within {self.timeout:g} s") from exc
        except (ConnectionError, OSError) as exc:
            raise UnavailableError(f"ranking server {self.url} is unreachable: {_reason(exc)}") from None
        except json.JSONDecodeError as exc:
            raise UnavailableError(f"ranking server {self.url} answered {path} with something not JSON") from exc


def _request_body(request: RankRequest, top_n: int | None) -> dict:
    body: dict[str, Any] = {"query": request.query, "item_ids": list(request.item_ids)}
    if top_n is not None:
        body["top_n"] = top_n
    if request.first_stage_scores is not None:
        body["first_stage_scores"] = dict(request.first_stage_scores)
    return body


def _result(data: dict, encoder_id: str) -> RemoteRankResult:
    items = [ScoredItem(r["item_id"], float(r["score"]), float(r["p_yes"]), float(r["log_odds"]), r.get("title") or "")
             for r in data["results"]]
    return RemoteRankResult(items, list(data.get("missing", [])), encoder_id)


def _answer_error(url: str, exc: urllib.error.HTTPError) -> Exception:
    try:
        data = json.loads(exc.read())
    except (ValueError, OSError):
        data = {}
    finally:
        exc.close()
    if not isinstance(data, dict):
        data = {}
    detail = str(data.get("error") or data.get("reason") or exc.reason)
    text = f"ranking server answered {exc.code} for {url}: {detail}"
    if exc.code == 429 or exc.code >= 500:
        retry_after = exc.headers.get("Retry-After", "")
        retry = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else None
        return (ServerBusyError if exc.code == 429 else ServerError)(exc.code, text, detail, retry)
    return RequestRejected(exc.code, text, detail, data.get("field"))


def _reason(reason: Any) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason)
