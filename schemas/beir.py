"""Reading BEIR-layout collections: ``corpus.jsonl[.gz]``, ``queries.jsonl``, ``qrels/<split>.tsv``.

The data contract of judged collections, shared by training, evaluation, ``mixlm search`` and the
benchmarks. (The backfill reads a BEIR corpus too, line by line, in ``mixlm.pipelines.sources``.)
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mixlm.schemas.errors import InputError, PathNotFoundError
from mixlm.schemas.item_event import DEFAULT_ITEM_TEMPLATE, render_item


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    text: str

    def full_text(self, template: str = DEFAULT_ITEM_TEMPLATE) -> str:
        """Title and text as one text: what BM25 indexes and text rankers read (a bundle's own
        ``item_template`` where one is given, as the encoder renders a backfilled item)."""
        return render_item(self.title, self.text, template)


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


def read_queries(path: str | Path) -> dict[str, str]:
    """``queries.jsonl`` of a BEIR folder (or the file itself): query id -> text."""
    path = Path(path)
    path = path / "queries.jsonl" if path.is_dir() else path
    with open(path, encoding="utf-8") as lines:
        return {str(q["_id"]): q["text"] for q in map(json.loads, lines) if q.get("text")}


def read_qrels(dataset_dir: str | Path, split: str) -> dict[str, dict[str, int]]:
    """``qrels/<split>.tsv``: query id -> {doc id: grade}; the header line is skipped."""
    path = Path(dataset_dir) / "qrels" / f"{split}.tsv"
    if not path.is_file():
        available = sorted(p.stem for p in (Path(dataset_dir) / "qrels").glob("*.tsv"))
        raise PathNotFoundError(f"{dataset_dir} has no {split} judgments (qrels/{split}.tsv); "
                                f"splits there: {', '.join(available) or 'none'}")
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines):
            cells = line.rstrip("\n").split("\t")
            if number == 0 and not cells[-1].lstrip("-").isdigit():
                continue  # header
            if len(cells) != 3:
                raise InputError(f"{path}:{number + 1}: expected 3 tab-separated columns, got {len(cells)}")
            qrels.setdefault(cells[0], {})[cells[1]] = int(cells[2])
    return qrels


@dataclass
class BeirDataset:
    """A collection with the judgments of one split, restricted to queries that have text and judgments."""

    name: str
    split: str
    corpus: dict[str, Document]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    @classmethod
    def load(cls, dataset_dir: str | Path, split: str) -> BeirDataset:
        dataset_dir = Path(dataset_dir)
        if not dataset_dir.is_dir():
            raise PathNotFoundError(f"dataset folder {dataset_dir} does not exist")
        qrels = read_qrels(dataset_dir, split)
        queries = read_queries(dataset_dir)
        judged = {q: docs for q, docs in qrels.items() if q in queries and docs}
        corpus = {doc.doc_id: doc for doc in read_corpus(dataset_dir)}
        return cls(dataset_dir.name, split, corpus, {q: queries[q] for q in judged}, judged)

    def limit(self, max_queries: int | None) -> BeirDataset:
        """The first ``max_queries`` judged queries in qrels order (all of them for None)."""
        if max_queries is None or max_queries >= len(self.qrels):
            return self
        kept = list(self.qrels)[:max_queries]
        return BeirDataset(self.name, self.split, self.corpus, {q: self.queries[q] for q in kept},
                           {q: self.qrels[q] for q in kept})

    def holdout(self, every: int) -> tuple[BeirDataset, BeirDataset]:
        """``(rest, dev)``: every ``every``-th query by a hash of its id goes to ``dev``.

        The assignment depends on the query id alone, so it is stable across runs, machines and
        ``limit``; training stages learn on ``rest`` and make their choices on ``dev``.
        """
        if every < 2:
            raise InputError(f"holdout needs every >= 2, got {every}")
        dev = {q for q in self.qrels if int(hashlib.sha256(q.encode()).hexdigest(), 16) % every == 0}

        def part(keep: set[str], suffix: str) -> BeirDataset:
            return BeirDataset(self.name, f"{self.split}{suffix}", self.corpus,
                               {q: t for q, t in self.queries.items() if q in keep},
                               {q: j for q, j in self.qrels.items() if q in keep})

        return part(set(self.qrels) - dev, "-rest"), part(dev, "-dev")
