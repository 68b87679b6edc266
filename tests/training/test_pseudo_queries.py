"""Pseudo-queries: the pairs they make, the BEIR folder they write, and the refusal of evaluation corpora."""

import gzip
import json
import random
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mixlm.cli import main
from mixlm.schemas.beir import BeirDataset, Document
from mixlm.training.pseudo_queries import EvaluationCorpusError, pseudo_pair, write_pseudo_queries

BODY = " ".join(f"word{n}" for n in range(40))


def _corpus(folder: Path, docs: list[dict]) -> Path:
    folder.mkdir(parents=True)
    with gzip.open(folder / "corpus.jsonl.gz", "wt", encoding="utf-8") as lines:
        lines.writelines(json.dumps(doc) + "\n" for doc in docs)
    return folder


def test_a_title_becomes_the_query_of_its_text_without_the_title():
    pair = pseudo_pair(Document("d1", "Wing flutter at high Mach", BODY), random.Random(0))
    assert pair.query == "Wing flutter at high Mach"
    assert pair.document == Document("d1", "", BODY) and pair.query_id == "pq-d1"


def test_without_a_usable_title_a_sentence_is_the_query_of_the_rest():
    text = "Short. The boundary layer separates near the trailing edge. " + BODY + "."
    pair = pseudo_pair(Document("d2", "X", text), random.Random(0))
    assert pair.query == "The boundary layer separates near the trailing edge."
    assert pair.query not in pair.document.text and BODY in pair.document.text


def test_a_document_too_short_to_split_gives_no_pair():
    assert pseudo_pair(Document("d3", "A title of words", "too short"), random.Random(0)) is None


def test_the_output_is_a_beir_training_collection(tmp_path):
    docs = [{"_id": f"d{n}", "title": f"Topic number {n} explained", "text": BODY} for n in range(5)]
    docs.append({"_id": "short", "title": "", "text": "nothing to split"})
    summary = write_pseudo_queries(_corpus(tmp_path / "src", docs), tmp_path / "pq", seed=1)
    assert summary["documents"] == 6 and summary["queries"] == 5 and summary["from_titles"] == 5
    dataset = BeirDataset.load(tmp_path / "pq", "train")
    assert len(dataset.corpus) == 6 and len(dataset.queries) == 5
    for query_id, judged in dataset.qrels.items():
        (doc_id,) = judged
        assert dataset.queries[query_id] == f"Topic number {doc_id[1:]} explained"
        assert dataset.corpus[doc_id].title == ""  # the query's words were taken out
    assert (tmp_path / "pq" / "SOURCE.md").is_file()


def test_an_evaluation_corpus_is_refused(tmp_path):
    collection = tmp_path / "scifact"
    shutil.copytree(Path("data/scifact"), collection)  # judged by qrels/test.tsv
    with pytest.raises(EvaluationCorpusError, match="is an evaluation corpus"):
        write_pseudo_queries(collection, tmp_path / "pq")
    assert not (tmp_path / "pq").exists()
    result = CliRunner().invoke(main, ["train", "pseudo-queries", "--corpus", str(collection), "--out",
                                       str(tmp_path / "pq")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("mixlm: error: ")
    assert "evaluation corpus" in result.output and not (tmp_path / "pq").exists()
