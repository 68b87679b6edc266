"""Pseudo-queries: training queries made from a corpus that has none, written as a BEIR folder.

A document with a title of a few words gives the pair (title -> its text without the title);
one without gives (a sentence of its text -> the rest of the text). The query's words are
taken out of the document, so the pair cannot be matched by copying. The output is an ordinary
BEIR folder with ``qrels/train.tsv``: any training stage reads it with ``--dataset``.

An evaluation corpus is refused: one whose folder holds judgments of a test split. Training on
queries made from the documents a test collection ranks would leak that collection.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from mixlm.schemas.beir import Document, read_corpus
from mixlm.schemas.errors import InputError, PathNotFoundError

MIN_TITLE_WORDS = 3
MAX_TITLE_WORDS = 20
MIN_REST_WORDS = 30
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


class EvaluationCorpusError(InputError):
    """Pseudo-queries were asked of a corpus that a test collection evaluates on."""


@dataclass(frozen=True)
class PseudoPair:
    query_id: str
    query: str
    document: Document  # the document the query was taken out of, without the query's words


def refuse_evaluation_corpus(corpus_dir: Path) -> None:
    tests = sorted((corpus_dir / "qrels").glob("test*.tsv")) if (corpus_dir / "qrels").is_dir() else []
    if tests:
        raise EvaluationCorpusError(f"{corpus_dir} is an evaluation corpus ({tests[0].relative_to(corpus_dir)} "
                                    "judges it): pseudo-queries from it would leak the test collection")


def pseudo_pair(document: Document, rng: random.Random) -> PseudoPair | None:
    """The title as the query of the text, else one sentence as the query of the rest; None if too short."""
    title_words = document.title.split()
    text = document.text.strip()
    if MIN_TITLE_WORDS <= len(title_words) <= MAX_TITLE_WORDS and len(text.split()) >= MIN_REST_WORDS:
        return PseudoPair(f"pq-{document.doc_id}", " ".join(title_words), Document(document.doc_id, "", text))
    sentences = [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]
    candidates = [i for i, s in enumerate(sentences) if MIN_TITLE_WORDS <= len(s.split()) <= MAX_TITLE_WORDS]
    if not candidates:
        return None
    chosen = rng.choice(candidates)
    rest = " ".join(s for i, s in enumerate(sentences) if i != chosen)
    if len(rest.split()) < MIN_REST_WORDS:
        return None
    return PseudoPair(f"pq-{document.doc_id}", sentences[chosen], Document(document.doc_id, document.title, rest))


def write_pseudo_queries(corpus_dir: str | Path, out_dir: str | Path, *, max_queries: int | None = None,
                         seed: int = 0) -> dict:
    """Write ``out_dir`` as a BEIR folder of pseudo-queries over ``corpus_dir``'s documents; a summary back.

    Every document stays in the corpus (those without a pair are negatives); a paired document
    is stored without its query's words.
    """
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    if not corpus_dir.is_dir():
        raise PathNotFoundError(f"corpus folder {corpus_dir} does not exist")
    refuse_evaluation_corpus(corpus_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InputError(f"{out_dir} already exists and is not empty")
    rng = random.Random(seed)
    documents = list(read_corpus(corpus_dir))
    pairs = [pair for pair in (pseudo_pair(doc, rng) for doc in documents) if pair is not None]
    rng.shuffle(pairs)
    pairs = pairs[:max_queries]
    rewritten = {pair.document.doc_id: pair.document for pair in pairs}
    (out_dir / "qrels").mkdir(parents=True, exist_ok=True)
    with open(out_dir / "corpus.jsonl", "w", encoding="utf-8") as corpus:
        for doc in documents:
            doc = rewritten.get(doc.doc_id, doc)
            corpus.write(json.dumps({"_id": doc.doc_id, "title": doc.title, "text": doc.text}, ensure_ascii=False)
                         + "\n")
    with open(out_dir / "queries.jsonl", "w", encoding="utf-8") as queries:
        for pair in pairs:
            queries.write(json.dumps({"_id": pair.query_id, "text": pair.query}, ensure_ascii=False) + "\n")
    with open(out_dir / "qrels" / "train.tsv", "w", encoding="utf-8") as qrels:
        qrels.write("query-id\tcorpus-id\tscore\n")
        for pair in pairs:
            qrels.write(f"{pair.query_id}\t{pair.document.doc_id}\t1\n")
    titles = sum(1 for pair in pairs if not pair.document.title)
    summary = {"corpus": str(corpus_dir), "out": str(out_dir), "documents": len(documents), "queries": len(pairs),
               "from_titles": titles, "from_sentences": len(pairs) - titles, "seed": seed}
    (out_dir / "SOURCE.md").write_text(
        f"# Pseudo-queries over {corpus_dir.name}\n\nMade by `mixlm train pseudo-queries` from `{corpus_dir}` "
        f"(seed {seed}): {summary['queries']} queries, {titles} of them titles and the rest sentences taken out "
        "of their documents. The documents and their licence are those of the source corpus; see its "
        "SOURCE.md.\n", encoding="utf-8")
    return summary
