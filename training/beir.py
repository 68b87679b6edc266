"""Reading BEIR-layout collections: ``corpus.jsonl[.gz]``, ``queries.jsonl``, ``qrels/<split>.tsv``."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    text: str


def read_corpus(path: str | Path, limit: int | None = None) -> Iterator[Document]:
    """Documents of a BEIR corpus file, or of a folder holding ``corpus.jsonl[.gz]``."""
    path = Path(path)
    if path.is_dir():
        path = next((path / name for name in ("corpus.jsonl.gz", "corpus.jsonl") if (path / name).is_file()), path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as lines:
        for count, line in enumerate(lines):
            if limit is not None and count >= limit:
                return
            doc = json.loads(line)
            yield Document(str(doc["_id"]), doc.get("title") or "", doc.get("text") or "")
