"""DeadLetter: an event that failed validation (or conversion, or encoding), with the reason and raw bytes."""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass


@dataclass
class DeadLetter:
    reason: str
    raw: bytes
    source: str  # where it came from: "topic/partition@offset" or "file:line"
    at: str = ""

    def to_dict(self) -> dict:
        data = asdict(self)
        try:
            data["raw"] = self.raw.decode("utf-8")
        except UnicodeDecodeError:
            data["raw"] = None
            data["raw_base64"] = base64.b64encode(self.raw).decode()
        return data
