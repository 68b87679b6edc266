"""The HTTP API's bodies: parsing and checking requests, shaping responses (no HTTP, no torch).

A bad request is an ``ApiError`` whose ``field`` names the offending field (``requests[2].item_ids``
inside ``/v1/score``), so a caller can tell which part of a large body to fix.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mixlm.ranker.results import RankRequest, RankResult

RERANK_FIELDS = ("query", "item_ids", "top_n", "first_stage_scores")


class ApiError(Exception):
    """An answer other than 200: its status, a message, the field at fault and the metrics' reason."""

    def __init__(self, status: int, message: str, *, reason: str, field: str | None = None,
                 headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.field = field
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field}


@dataclass(frozen=True)
class RerankInput:
    request: RankRequest
    top_n: int | None = None


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except RecursionError:
        raise ApiError(400, "the body is not valid JSON: it is nested too deeply", reason="bad_json") from None
    except ValueError as exc:  # bad syntax, bad UTF-8, an integer literal past Python's digit limit
        raise ApiError(400, f"the body is not valid JSON: {exc}", reason="bad_json") from None


def parse_rerank(data: Any, max_candidates: int, prefix: str = "") -> RerankInput:
    """One ``/v1/rerank`` body (or one entry of ``/v1/score``'s ``requests``)."""
    where = prefix.rstrip(".") or "the body"
    if not isinstance(data, dict):
        raise ApiError(400, f"{where} must be a JSON object", reason="invalid_field", field=prefix.rstrip(".") or None)
    for key in data:
        if key not in RERANK_FIELDS:
            raise _invalid(prefix + str(key), f"is not a field of a request (known: {', '.join(RERANK_FIELDS)})")
    query = _required(data, "query", prefix)
    if not isinstance(query, str):
        raise _invalid(prefix + "query", f"must be a string, not {_kind(query)}")
    if not query.strip():
        raise _invalid(prefix + "query", "is empty")
    item_ids = _required(data, "item_ids", prefix)
    if not isinstance(item_ids, list):
        raise _invalid(prefix + "item_ids", f"must be an array of strings, not {_kind(item_ids)}")
    for n, item_id in enumerate(item_ids):
        if not isinstance(item_id, str):
            raise _invalid(prefix + "item_ids", f"must hold strings only: [{n}] is {_kind(item_id)}")
    unique = len(dict.fromkeys(item_ids))
    if unique > max_candidates:
        raise ApiError(413, f"{unique} candidates, more than the cap of {max_candidates} per request",
                       reason="too_many_candidates", field=prefix + "item_ids")
    top_n = data.get("top_n")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise _invalid(prefix + "top_n", f"must be a positive integer, not {top_n!r}")
    scores = data.get("first_stage_scores")
    if scores is not None:
        scores = _first_stage_scores(scores, item_ids, prefix + "first_stage_scores")
    return RerankInput(RankRequest(query, item_ids, scores), top_n)


def parse_score(data: Any, max_candidates: int, max_requests: int) -> list[RerankInput]:
    """A ``/v1/score`` body: ``{"requests": [<rerank body>, ...]}``."""
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object", reason="invalid_field")
    for key in data:
        if key != "requests":
            raise _invalid(str(key), "is not a field here (known: requests)")
    requests = _required(data, "requests", "")
    if not isinstance(requests, list):
        raise _invalid("requests", f"must be an array of request objects, not {_kind(requests)}")
    if not requests:
        raise _invalid("requests", "is empty")
    if len(requests) > max_requests:
        raise ApiError(413, f"{len(requests)} requests, more than the {max_requests} the server's queue holds",
                       reason="too_many_requests", field="requests")
    return [parse_rerank(entry, max_candidates, f"requests[{n}].") for n, entry in enumerate(requests)]


def result_body(result: RankResult) -> dict[str, Any]:
    """``{"results": [...], "missing": [...]}``, results best first as the batcher ranked them, each
    with the item's display title."""
    return {"results": [{"item_id": item.item_id, "title": item.title, "score": item.score, "p_yes": item.p_yes,
                         "log_odds": item.log_odds} for item in result.items],
            "missing": list(result.missing)}


def _first_stage_scores(scores: Any, item_ids: list[str], field: str) -> dict[str, float]:
    if not isinstance(scores, dict):
        raise _invalid(field, f"must be an object of item id -> number, not {_kind(scores)}")
    for item_id, value in scores.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _invalid(field, f"the score of {item_id!r} is {value!r}, not a finite number")
    absent = [item_id for item_id in dict.fromkeys(item_ids) if item_id not in scores]
    if absent:
        raise _invalid(field, f"lacks {len(absent)} of the item ids, e.g. {absent[0]!r}")
    return {item_id: float(value) for item_id, value in scores.items()}


def _required(data: dict, key: str, prefix: str) -> Any:
    if key not in data:
        raise _invalid(prefix + key, "is required")
    return data[key]


def _invalid(field: str, problem: str) -> ApiError:
    return ApiError(400, f"{field} {problem}", reason="invalid_field", field=field)


_JSON_KINDS = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
               dict: "an object"}


def _kind(value: Any) -> str:
    """``value``'s JSON type, as a caller wrote it."""
    return "null" if value is None else _JSON_KINDS.get(type(value), type(value).__name__)
