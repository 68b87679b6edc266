"""ItemEvent: one item create/update/delete, as produced to Kafka or read from a catalog."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mixlm.schemas.errors import ValidationError
from mixlm.schemas.timefmt import parse_rfc3339

OPS = ("upsert", "delete")
MAX_VERSION = 2**63 - 1
# LMDB keys are at most 511 bytes and hold ``encoder_id \x00 item_id``.
MAX_ITEM_ID_BYTES = 400
DEFAULT_MAX_TEXT_BYTES = 1_000_000
# How an item's title and text become the one text the encoder (and any text ranker) reads; a
# bundle may set its own template (``EncodingConfig.item_template``).
DEFAULT_ITEM_TEMPLATE = "{title}\n{text}"

# A record keeps a short title to show with its item (``display_title``); at most 480 bytes in UTF-8.
MAX_TITLE_CHARS = 120


def render_item(title: str, text: str, template: str = DEFAULT_ITEM_TEMPLATE) -> str:
    """An item's title and text as one text, by ``template`` (with ``{title}`` and ``{text}``)."""
    return template.format(title=title, text=text)


@dataclass(frozen=True)
class ItemEvent:
    item_id: str
    op: str
    version: int
    title: str = ""
    text: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    event_time: str | None = None

    @property
    def is_delete(self) -> bool:
        return self.op == "delete"

    def content_hash(self) -> str:
        """sha256 of the content the encoder sees; equal hashes mean nothing to re-encode."""
        canonical = json.dumps(
            {"title": self.title, "text": self.text, "fields": self.fields},
            sort_keys=True,
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def display_title(self) -> str:
        """The title a record keeps to show with this item (``display_title``)."""
        return display_title(self.title, self.text)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"item_id": self.item_id, "op": self.op, "version": self.version}
        if self.op == "upsert":
            out["title"] = self.title
            out["text"] = self.text
            if self.fields:
                out["fields"] = dict(self.fields)
        if self.event_time is not None:
            out["event_time"] = self.event_time
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


def display_title(title: str, text: str = "") -> str:
    """A one-line title to show with an item: its title or, when it has none, the start of its text.

    Whitespace runs (newlines included) become single spaces; a line longer than
    ``MAX_TITLE_CHARS`` characters is cut on a character (code point) boundary, never inside a
    UTF-8 sequence, and ends with "…" (within the limit).
    """
    return shorten(" ".join((title if title.strip() else text).split()), MAX_TITLE_CHARS)


def shorten(line: str, limit: int) -> str:
    """``line`` if it has at most ``limit`` characters, else its first ones and "…" (``limit`` in all)."""
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "\u2026"


def _show(value: Any, limit: int = 40) -> str:
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int past the int-string limit, a structure nested too deeply
        text = f"<{type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _require_str(data: Mapping[str, Any], name: str, default: str | None = None) -> str:
    if name not in data or data[name] is None:
        if default is None:
            raise ValidationError(name, "is required")
        return default
    value = data[name]
    if not isinstance(value, str):
        raise ValidationError(name, f"must be a string, got {type(value).__name__} {_show(value)}")
    _require_utf8(name, value)
    return value


def _require_utf8(name: str, value: str) -> None:
    """JSON escapes can smuggle in lone surrogates, which UTF-8 (keys, hashes) cannot encode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(name, f"holds an unpaired surrogate {value[exc.start]!r} at index {exc.start}") from None


def _validate_item_id(data: Mapping[str, Any]) -> str:
    item_id = _require_str(data, "item_id")
    if not item_id:
        raise ValidationError("item_id", "must not be empty")
    if "\x00" in item_id:
        raise ValidationError("item_id", "must not contain NUL characters")
    size = len(item_id.encode("utf-8"))
    if size > MAX_ITEM_ID_BYTES:
        raise ValidationError("item_id", f"is {size} bytes, the limit is {MAX_ITEM_ID_BYTES}")
    return item_id


def _validate_version(data: Mapping[str, Any]) -> int:
    if "version" not in data:
        raise ValidationError("version", "is required")
    version = data["version"]
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= MAX_VERSION:
        raise ValidationError("version", f"must be an integer >= 0, got {_show(version)}")
    return version


def _validate_fields(data: Mapping[str, Any]) -> dict[str, str]:
    fields = data.get("fields")
    if fields is None:
        return {}
    if not isinstance(fields, dict):
        raise ValidationError("fields", f"must be an object of strings, got {type(fields).__name__}")
    for key, value in fields.items():
        if not isinstance(key, str):
            raise ValidationError("fields", f"keys must be strings, got {type(key).__name__} {_show(key)}")
        _require_utf8("fields", key)
        if not isinstance(value, str):
            raise ValidationError(
                f"fields.{key}", f"must be a string, got {type(value).__name__} {_show(value)}"
            )
        _require_utf8(f"fields.{key}", value)
    return dict(fields)


def decode_json(raw: bytes | str) -> Any:
    """``json.loads`` for untrusted input: every way it can fail is a ValidationError on ``value``.

    Besides malformed JSON and bytes that are not UTF-8, the decoder refuses nesting deeper
    than the interpreter's recursion limit (``[`` * 1000, about 2 KB) and integer literals
    longer than Python's int-string limit (4,300 digits); one such line must not fail a job.
    """
    if isinstance(raw, (bytes, bytearray, memoryview)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValidationError(
                "value", f"is not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
            ) from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            "value", f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise ValidationError("value", "is nested too deeply to decode") from None
    except ValueError:  # the only other ValueError json raises: int() of a literal past the limit
        raise ValidationError(
            "value", f"holds an integer literal longer than {sys.get_int_max_str_digits():,} digits"
        ) from None


def _decode(raw: bytes | str | Mapping[str, Any]) -> Mapping[str, Any]:
    data = decode_json(raw) if isinstance(raw, (bytes, bytearray, memoryview, str)) else raw
    if not isinstance(data, Mapping):
        raise ValidationError("value", f"must be a JSON object, got {type(data).__name__}")
    return data


def parse_item_event(
    raw: bytes | str | Mapping[str, Any], *, max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
) -> ItemEvent:
    """Validate one event (raw Kafka bytes, a JSON line, or a decoded object).

    Raises ValidationError naming the first offending field. Unknown keys are ignored so
    that producers can add metadata without breaking consumers.
    """
    data = _decode(raw)
    item_id = _validate_item_id(data)
    op = data.get("op", None)
    if op not in OPS:
        raise ValidationError("op", f"must be one of {', '.join(OPS)}, got {_show(op)}")
    version = _validate_version(data)
    event_time = data.get("event_time")
    if event_time is not None:
        if not isinstance(event_time, str):
            raise ValidationError("event_time", f"must be an RFC 3339 string, got {_show(event_time)}")
        try:
            parse_rfc3339(event_time)
        except ValueError:
            raise ValidationError(
                "event_time", f"must be RFC 3339 with a zone (2026-11-22T10:30:00Z), got {_show(event_time)}"
            ) from None
    if op == "delete":
        return ItemEvent(item_id=item_id, op=op, version=version, event_time=event_time)
    title = _require_str(data, "title", default="")
    text = _require_str(data, "text")
    fields = _validate_fields(data)
    if not title.strip() and not text.strip():
        raise ValidationError("text", "title and text are both empty: nothing to encode")
    size = len(title.encode("utf-8")) + len(text.encode("utf-8")) + sum(
        len(k.encode("utf-8")) + len(v.encode("utf-8")) for k, v in fields.items()
    )
    if size > max_text_bytes:
        raise ValidationError("text", f"content is {size:,} bytes, the limit is {max_text_bytes:,}")
    return ItemEvent(item_id, op, version, title, text, fields, event_time)


def one_line(exc: BaseException) -> str:
    """``Type: first line of its message``: an unexpected error as a one-line reason."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def rejection_reason(exc: Exception) -> str:
    """Why an event was refused: a ValidationError as it reads, any other error as ``cannot parse: Type: ...``."""
    return str(exc) if isinstance(exc, ValidationError) else f"cannot parse: {one_line(exc)}"
