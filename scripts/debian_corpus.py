"""Builds data/debian-descriptions: Debian package descriptions as a BEIR corpus (title + text).

A general-purpose corpus outside every evaluation domain, for pseudo-query training
(`mixlm train pseudo-queries`): each package's one-line synopsis is a short, query-like title
of its long description. The input is the archive's English description index, e.g.
http://deb.debian.org/debian/dists/bookworm/main/i18n/Translation-en.xz (uncompressed).

    python scripts/debian_corpus.py Translation-en data/debian-descriptions [--docs 6000]

Kept: one package per description (sibling packages such as -data/-dev share it, and would be
false negatives of each other), synopses of 3 to 20 words, descriptions of 40 words or more,
no transitional, dummy, metapackage or debug-symbol packages. The sample is the first N
packages by a hash of their name, so it does not depend on the index's order.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

SKIP = re.compile(r"transitional|dummy package|metapackage|debug symbols", re.IGNORECASE)
QUALIFIER = re.compile(r"\s*\(.*\)\s*$")  # "foo library (development files)" -> "foo library"


def descriptions(index: Path) -> Iterator[tuple[str, str, list[str]]]:
    """(package, synopsis, paragraphs of the long description, some maybe empty) for each entry of a
    Translation file."""
    package = synopsis = None
    paragraphs: list[str] = []
    lines: list[str] = []

    def entry():
        return package, synopsis, paragraphs + [" ".join(lines)]

    for raw in index.open(encoding="utf-8"):
        line = raw.rstrip("\n")
        if line.startswith("Package: "):
            if package and synopsis:
                yield entry()
            package, synopsis, paragraphs, lines = line[len("Package: "):], None, [], []
        elif line.startswith("Description-en: "):
            synopsis = line[len("Description-en: "):].strip()
        elif line.startswith(" ") and synopsis is not None:
            if line.strip() == ".":  # a paragraph break in Debian's description format
                paragraphs.append(" ".join(lines))
                lines = []
            else:
                lines.append(line.strip())
    if package and synopsis:
        yield entry()


def select(index: Path, docs: int) -> list[dict]:
    seen_texts: set[str] = set()
    seen_titles: set[str] = set()
    kept = []
    for package, synopsis, paragraphs in descriptions(index):
        text = "\n".join(p for p in paragraphs if p)
        text_key = paragraphs[0][:200].lower()
        title_key = QUALIFIER.sub("", synopsis).lower()
        if not 3 <= len(synopsis.split()) <= 20 or len(text.split()) < 40 or SKIP.search(synopsis + " " + text):
            continue
        if text_key in seen_texts or title_key in seen_titles:
            continue
        seen_texts.add(text_key)
        seen_titles.add(title_key)
        kept.append({"_id": f"deb-{package}", "title": synopsis, "text": text})
    kept.sort(key=lambda doc: hashlib.sha1(doc["_id"].encode()).hexdigest())
    return sorted(kept[:docs], key=lambda doc: doc["_id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index", type=Path, help="an uncompressed Translation-en file")
    parser.add_argument("out", type=Path, help="the folder to write corpus.jsonl.gz into")
    parser.add_argument("--docs", type=int, default=6000, help="documents to keep")
    args = parser.parse_args()
    chosen = select(args.index, args.docs)
    args.out.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(args.out / "corpus.jsonl.gz", "wb", mtime=0) as raw:
        raw.write("".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in chosen).encode("utf-8"))
    print(f"{len(chosen)} documents -> {args.out / 'corpus.jsonl.gz'}")


if __name__ == "__main__":
    main()
