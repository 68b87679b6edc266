import json

import numpy as np
import pytest
from click.testing import CliRunner

from mixlm.cli import main
from mixlm.encoders import ItemEncoder
from mixlm.ranker.retrieval import BM25Index
from mixlm.schemas import ItemEvent
from mixlm.schemas.beir import read_corpus
from mixlm.schemas.errors import EXIT_USAGE
from mixlm.schemas.item_event import display_title
from mixlm.store import EmbeddingStore, StoreError
from mixlm.store.cli import main as store_main
from mixlm.store.index import VectorIndex, build_vector_index

CORPUS = "data/adi/corpus.jsonl.gz"


@pytest.fixture(scope="module")
def searchable(tiny_bundle, tmp_path_factory):
    """A store holding the ADI corpus encoded with the tiny bundle, promoted, with its FAISS index."""
    path = tmp_path_factory.mktemp("search") / "store"
    encoder = ItemEncoder.from_bundle(tiny_bundle)
    docs = list(read_corpus(CORPUS))
    store = EmbeddingStore.open(path, create=True)
    store.put_many(encoder.encode_events([ItemEvent(d.doc_id, "upsert", 1, d.title, d.text) for d in docs]))
    store.promote(encoder.encoder_id)
    built = CliRunner().invoke(store_main, ["--store", str(path), "index", "build", "-o", "json"])
    assert built.exit_code == 0, built.output
    assert json.loads(built.stdout)["items"] == len(docs)
    return path, encoder, docs


def test_vector_index_finds_an_item_by_its_own_vector(searchable):
    path, encoder, docs = searchable
    store = EmbeddingStore.open(path)
    index = VectorIndex.load(store, encoder.encoder_id)
    record = store.get(encoder.encoder_id, docs[7].doc_id)
    hits = index.search(record.retrieval_vector, 5)
    assert hits[0].item_id == docs[7].doc_id and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_index_is_missing_until_built(tiny_bundle, tmp_path):
    store = EmbeddingStore.open(tmp_path / "s", create=True)
    with pytest.raises(StoreError, match="index build"):
        VectorIndex.load(store, "enc-x")
    with pytest.raises(StoreError, match="no records"):
        build_vector_index(store, "enc-x")


def test_bm25_ranks_the_matching_document_first():
    docs = list(read_corpus(CORPUS))
    index = BM25Index([d.doc_id for d in docs], [d.full_text() for d in docs])
    target = docs[12]
    hits = index.search(target.title, 3)
    assert hits[0].item_id == target.doc_id
    assert index.search("zzzqqq nonexistentword", 5) == []


@pytest.mark.parametrize("retriever", ["faiss", "bm25"])
def test_search_cli_retrieves_and_reranks(tiny_bundle, searchable, retriever):
    path, _, docs = searchable
    args = ["search", docs[3].title, "--bundle", str(tiny_bundle), "--store", str(path), "--k", "8", "--rerank", "3",
            "--retriever", retriever, "--corpus", CORPUS, "-o", "json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["results"]
    assert len(rows) == 8 and [r["rank"] for r in rows] == list(range(1, 9))
    reranked = [r["p_yes"] for r in rows[:3]]
    assert all(p is not None for p in reranked) and reranked == sorted(reranked, reverse=True)
    assert all(r["p_yes"] is None for r in rows[3:])
    if retriever == "bm25":
        assert docs[3].doc_id in {r["item_id"] for r in rows}
    assert np.isfinite([r["first_stage"] for r in rows]).all()
    by_id = {d.doc_id: d for d in docs}
    assert all(r["title"] == display_title(by_id[r["item_id"]].title, by_id[r["item_id"]].text) for r in rows)
    table = CliRunner().invoke(main, args[:-2])
    assert table.stdout.splitlines()[0].split() == ["RANK", "ITEM_ID", "SCORE", "P_YES", "FIRST_STAGE", "TITLE"]
    assert all(len(line) < 150 for line in table.stdout.splitlines())  # titles cut to fit a table


def test_search_cli_errors(tiny_bundle, searchable):
    path, _, _ = searchable
    result = CliRunner().invoke(main, ["search", "q", "--bundle", str(tiny_bundle), "--store", str(path),
                                       "--retriever", "bm25"])
    assert result.exit_code == EXIT_USAGE and "--corpus" in result.stderr


def test_search_checks_its_options_before_loading_any_model(tmp_path):
    not_a_bundle = tmp_path / "empty"
    not_a_bundle.mkdir()
    result = CliRunner().invoke(main, ["search", "q", "--bundle", str(not_a_bundle), "--store", str(tmp_path / "s"),
                                       "--retriever", "bm25"])
    assert result.exit_code == EXIT_USAGE and "--retriever bm25 needs --corpus" in result.stderr


def test_bm25_scores_any_indexed_item_as_search_does():
    docs = list(read_corpus(CORPUS))
    index = BM25Index([d.doc_id for d in docs], [d.full_text() for d in docs])
    hits = index.search(docs[5].title, len(docs))
    unmatched = sorted({d.doc_id for d in docs} - {h.item_id for h in hits})
    assert unmatched  # some documents share no term with the title
    ids = [hits[2].item_id, hits[0].item_id, unmatched[0]]
    scores = index.scores(docs[5].title, ids)
    assert scores[:2] == pytest.approx([hits[2].score, hits[0].score], rel=1e-5)
    assert scores[2] == 0.0
    assert not index.scores("the of and", ids).any()  # nothing but stopwords: no terms at all
