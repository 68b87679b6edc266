"""Backfill inputs: ItemEvent JSONL, a BEIR ``corpus.jsonl[.gz]``, or Parquet with ItemEvent columns.

The readers number what they read, so a dead letter's ``source`` says where it came from:
``path:LINE`` for JSONL (lines counted from 1, blank ones included) and ``path:row N`` for
Parquet (rows counted from 1 across the file's row groups). Every line and row becomes one
RawEvent; one the reader cannot convert carries the reason in ``error``. They stop early
when ``STOP`` is set.

A reader's element is a file path or a ``FileSplit``: split ``index`` of ``of`` reads the
whole file but turns only its own blocks of ``SPLIT_BLOCK`` lines or rows into events, so
that several workers share one file (a gzip file cannot be entered in the middle) while
every line keeps its number.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from mixlm.pipelines.elements import RawEvent
from mixlm.pipelines.stop import STOP
from mixlm.schemas import ValidationError
from mixlm.schemas.item_event import decode_json, one_line


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
        doc = decode_json(line)
    except ValidationError:
        return line
    if not isinstance(doc, dict) or "_id" not in doc:
        return line
    event = {"item_id": doc["_id"], "op": "upsert", "title": doc.get("title") or "", "text": doc.get("text")}
    return json.dumps(event, ensure_ascii=False).encode("utf-8")


def _match(pattern: str) -> list[str]:
    return sorted(metadata.path for metadata in FileSystems.match([pattern])[0].metadata_list)


SPLIT_BLOCK = 64  # lines or rows: the unit that splits of one file take turns on


class FileSplit(NamedTuple):
    """Split ``index`` of ``of`` of one file: blocks ``index``, ``index + of``, ... of ``SPLIT_BLOCK`` lines/rows."""

    path: str
    index: int = 0
    of: int = 1

    def owned_runs(self, first: int, n: int) -> Iterator[tuple[int, int]]:
        """The ``[start, stop)`` offsets, within ``n`` lines/rows numbered from ``first`` (from 1), this split owns."""
        if self.of == 1:
            if n:
                yield 0, n
            return
        offset = 0
        while offset < n:
            block = (first + offset - 1) // SPLIT_BLOCK
            stop = min(n, (block + 1) * SPLIT_BLOCK - first + 1)
            if block % self.of == self.index:
                yield offset, stop
            offset = stop

    def owns(self, number: int) -> bool:
        return self.of == 1 or (number - 1) // SPLIT_BLOCK % self.of == self.index


def plan_splits(pattern: str, splits: int) -> list[FileSplit]:
    """About ``splits`` splits over the files matching ``pattern``: whole files when there are enough of them."""
    files = _match(pattern)
    per_file = max(1, -(-splits // max(1, len(files))))
    return [FileSplit(path, index, per_file) for path in files for index in range(per_file)]


def _as_split(element: str | FileSplit) -> FileSplit:
    return element if isinstance(element, FileSplit) else FileSplit(element)


class _ReadLines(beam.DoFn):
    """A JSONL file (gzip and other compressions by extension) -> one RawEvent per line, as bytes.

    Bytes, not str: a line that is not UTF-8 must reach the validator, not crash the read.
    """

    def __init__(self, beir: bool, default_version: int):
        self.beir = beir
        self.default_version = default_version

    def process(self, element: str | FileSplit):
        split = _as_split(element)
        with closing(FileSystems.open(split.path)) as handle:
            for number, line in enumerate(iter(handle.readline, b""), start=1):
                if STOP.is_set():
                    return
                if split.owns(number):
                    yield self._event(line.removesuffix(b"\n").removesuffix(b"\r"), f"{split.path}:{number}")

    def _event(self, line: bytes, source: str) -> RawEvent:
        if not self.beir:
            return RawEvent(line, source)
        try:
            return RawEvent(beir_line_to_event(line), source, default_version=self.default_version)
        except Exception as exc:  # a BEIR document JSON cannot write back (nested too deeply)
            return RawEvent(line, source, error=f"cannot convert BEIR line: {one_line(exc)}")


class _ReadParquetRows(beam.DoFn):
    """A Parquet file -> one RawEvent per row of its ItemEvent columns (others are not read)."""

    def __init__(self, default_version: int):
        self.default_version = default_version

    def process(self, element: str | FileSplit):
        import pyarrow.parquet as pq

        from mixlm.schemas.arrow import ITEM_EVENT_SCHEMA

        split = _as_split(element)
        path = split.path
        with closing(FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)) as handle:
            parquet = pq.ParquetFile(handle)
            columns = [name for name in ITEM_EVENT_SCHEMA.names if name in parquet.schema_arrow.names]
            first = 1  # the number of the batch's first row
            for whole in parquet.iter_batches(columns=columns):
                for start, stop in split.owned_runs(first, whole.num_rows):
                    batch = whole.slice(start, stop - start)
                    try:
                        rows = batch.to_pylist()
                    except Exception:  # one value Python cannot hold fails the whole batch: convert row by row
                        rows = [None] * batch.num_rows
                    for index, row in enumerate(rows):
                        if STOP.is_set():
                            return
                        yield self._event(batch, index, row, f"{path}:row {first + start + index}")
                first += whole.num_rows

    def _event(self, batch, index: int, row: dict | None, source: str) -> RawEvent:
        try:
            if row is None:
                row = batch.slice(index, 1).to_pylist()[0]
            value = _row_json(row)
        except Exception as exc:  # the row is this row's dead letter, shown as Arrow prints it
            shown = batch.slice(index, 1).to_string(show_metadata=False, preview_cols=batch.num_columns)
            return RawEvent(shown.encode("utf-8"), source, error=f"cannot convert row: {one_line(exc)}")
        return RawEvent(value, source, default_version=self.default_version)


def _row_json(row: dict) -> bytes:
    """A Parquet row as ItemEvent JSON: map columns arrive as lists of pairs, JSON wants objects.

    Raises for what JSON cannot hold as it is: bytes or timestamp values, and map keys that
    are not strings (JSON would quietly turn 1 into "1").
    """
    fields = row.get("fields")
    if isinstance(fields, list):
        keys = [key for key, _value in fields if not isinstance(key, str)]
        if keys:
            raise TypeError(f"fields keys must be strings, got {type(keys[0]).__name__}")
        row = {**row, "fields": dict(fields)}
    return json.dumps({key: value for key, value in row.items() if value is not None}, ensure_ascii=False).encode()


class ReadCatalog(beam.PTransform):
    """Read a catalog as RawEvents; rows without a version get ``default_version``.

    By default the files are matched when the job runs and each is read whole by one worker.
    With ``splits`` they are matched now, while the pipeline is built, into about that many
    ``FileSplit`` elements of a ``Create``: for runners that spread a ``Create``'s elements
    but not a ``Reshuffle``'s (Beam's Dask runner turns Reshuffle into a no-op).
    """

    def __init__(self, path: str, fmt: str, default_version: int, *, splits: int | None = None):
        super().__init__()
        self.path = path
        self.fmt = detect_format(path) if fmt == "auto" else fmt
        self.default_version = default_version
        self.splits = splits

    def expand(self, pbegin):
        pattern = self.path
        if self.fmt == "parquet":
            pattern = str(Path(pattern) / "*.parquet") if Path(pattern).is_dir() else pattern
            read = _ReadParquetRows(self.default_version)
        else:
            read = _ReadLines(self.fmt == "beir", self.default_version)
        if self.splits is not None:
            return (pbegin
                    | "Splits" >> beam.Create(plan_splits(pattern, self.splits))
                    | "SpreadSplits" >> beam.Reshuffle()
                    | "ReadFiles" >> beam.ParDo(read))
        return (pbegin
                | "Pattern" >> beam.Create([pattern])
                | "MatchFiles" >> beam.FlatMap(_match)
                | "SpreadFiles" >> beam.Reshuffle()  # on a distributed runner, files are read by many workers
                | "ReadFiles" >> beam.ParDo(read))
