"""Training on several collections at once: ``--dataset A --dataset B``."""

import json

import pytest

from mixlm.schemas.errors import InputError
from mixlm.training.pseudo_queries import write_pseudo_queries
from mixlm.training.stages import combined, training_data

from .conftest import SCIFACT, small_data


def _pseudo_collection(tmp_path, ids):
    corpus = tmp_path / f"corpus-{ids[0]}"
    corpus.mkdir()
    words = " ".join(f"word{i}" for i in range(40))
    with open(corpus / "corpus.jsonl", "w") as out:
        for doc_id in ids:
            out.write(json.dumps({"_id": doc_id, "title": f"a title for {doc_id} here", "text": words}) + "\n")
    out = tmp_path / f"pq-{ids[0]}"
    write_pseudo_queries(corpus, out, seed=0)
    return out


def test_two_collections_train_together_and_keep_their_dev_split(tmp_path):
    pseudo = _pseudo_collection(tmp_path, [f"deb-{i}" for i in range(16)])
    alone_train, (alone_dev,) = training_data(small_data(max_queries=None), log=lambda line: None)
    both = small_data(datasets=(str(SCIFACT), str(pseudo)), max_queries=None)
    train, devs = training_data(both, log=lambda line: None)
    # each collection's dev queries over its own corpus
    assert [d.name for d in devs] == ["scifact", pseudo.name] and devs[0].corpus.keys() == alone_train.corpus.keys()
    assert len(devs[1].corpus) == 16 and all(q.startswith("pq-") for q in devs[1].qrels)
    dev = combined(devs)
    assert train.name == f"scifact+{pseudo.name}"
    assert len(train.corpus) == len(alone_train.corpus) + 16
    assert len(train.qrels) + len(dev.qrels) == len(alone_train.qrels) + len(alone_dev.qrels) + 16
    # a query's dev assignment depends on its id alone, so SciFact's dev queries stay the same
    assert set(alone_dev.qrels) <= set(dev.qrels)
    assert set(dev.qrels) - set(alone_dev.qrels) <= {q for q in dev.qrels if q.startswith("pq-")}


def test_colliding_ids_are_refused(tmp_path):
    first = _pseudo_collection(tmp_path, ["a", "b", "c"])
    second = _pseudo_collection(tmp_path, ["c", "d", "e"])
    with pytest.raises(InputError, match="document id 'c' also appears in an earlier dataset"):
        training_data(small_data(datasets=(str(first), str(second)), max_queries=None), log=lambda line: None)
