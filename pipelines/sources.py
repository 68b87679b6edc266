"""Backfill inputs: ItemEvent JSONL, a BEIR ``corpus.jsonl[.gz]``, or Parquet with ItemEvent columns."""

from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
from apache_beam import coders

from mixlm.pipelines.elements import RawEvent


def detect_format(path: str) -> str:
    name = Path(path).name
    if name.endswith(".parquet") or (Path(path).is_dir() and any(Path(path).glob("*.parquet"))):
        return "parquet"
    if name.startswith("corpus.jsonl"):
        return "beir"
    return "events"


def beir_line_to_event(line: bytes) -> bytes:
    """``{"_id","title","text"}`` -> an upsert ItemEvent; anything else passes through unchanged."""
    try:
        doc = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return line
    if not isinstance(doc, dict) or "_id" not in doc:
        return line
    event = {"item_id": doc["_id"], "op": "upsert", "title": doc.get("title") or "", "text": doc.get("text")}
    return json.dumps(event, ensure_ascii=False).encode("utf-8")


class ReadCatalog(beam.PTransform):
    """Read a catalog as RawEvents; rows without a version get ``default_version``."""

    def __init__(self, path: str, fmt: str, default_version: int):
        super().__init__()
        self.path = path
        self.fmt = detect_format(path) if fmt == "auto" else fmt
        self.default_version = default_version

    def expand(self, pbegin):
        source, version = self.path, self.default_version
        if self.fmt == "parquet":
            pattern = str(Path(source) / "*.parquet") if Path(source).is_dir() else source
            rows = pbegin | "ReadParquet" >> beam.io.ReadFromParquet(pattern)
            return rows | "ToRawEvents" >> beam.Map(lambda row: RawEvent(
                json.dumps(_plain(row), ensure_ascii=False).encode(), source, default_version=version))
        # Bytes, not str: a line that is not UTF-8 must reach the validator, not crash the read.
        lines = (pbegin | "ReadLines" >> beam.io.ReadFromText(source, coder=coders.BytesCoder())
                 | "DropBlankLines" >> beam.Filter(lambda line: line.strip()))
        if self.fmt == "beir":
            return lines | "BeirToRawEvents" >> beam.Map(
                lambda line: RawEvent(beir_line_to_event(line), source, default_version=version))
        return lines | "ToRawEvents" >> beam.Map(lambda line: RawEvent(line, source))


def _plain(row: dict) -> dict:
    """Parquet map columns arrive as lists of pairs; JSON wants objects."""
    fields = row.get("fields")
    if isinstance(fields, list):
        row = {**row, "fields": dict(fields)}
    return {key: value for key, value in row.items() if value is not None}
