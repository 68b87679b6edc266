"""MaxSim scores: the formula on vectors worked by hand, and the run's cache on a tiny real encoder."""

import json

import pytest
import torch

from mixlm.encoders import ItemEncoder
from mixlm.training.late_interaction import MaxSimScores, maxsim

QUERIES = {"q1": "protein folding in cells", "q2": "a vaccine trial"}
DOCS = {"d1": "Proteins fold in the cell.", "d2": "The trial tested a vaccine.", "d3": "Unrelated words here."}
PAIRS = {"q1": ["d1", "d2"], "q2": ["d2", "d3", "d1"]}


def test_maxsim_is_the_mean_over_query_tokens_of_the_best_match():
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    doc = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]])
    # token 1's best is 1.0 (doc token 1), token 2's best is 0.8 (doc token 2)
    assert maxsim(query, doc) == pytest.approx(0.9)


@torch.no_grad()
def _by_hand(encoder, query, document):
    states = [torch.nn.functional.normalize(encoder.token_states(encoder.tokenizer([text]))[0][0].float(), dim=-1)
              for text in (query, document)]
    return float((states[0] @ states[1].T).max(dim=1).values.mean())


class _NoEncoding:
    """Stands in for an encoder that must not be called (the cache must answer)."""

    def __getattr__(self, name):
        raise AssertionError(f"the cached scores were re-encoded ({name})")


def test_scores_cover_every_pair_and_are_cached_in_the_run(base_bundle, tmp_path):
    encoder = ItemEncoder.from_bundle(base_bundle)
    path = tmp_path / "maxsim.json"
    scores = MaxSimScores.build(path, encoder, QUERIES, DOCS, PAIRS, log=lambda line: None)
    for query_id, doc_ids in PAIRS.items():
        expected = [_by_hand(encoder, QUERIES[query_id], DOCS[d]) for d in doc_ids]
        assert scores.get(query_id, doc_ids).tolist() == pytest.approx(expected, abs=1e-3)
    assert len(json.loads(path.read_text())) == 5
    cached = MaxSimScores.build(path, _NoEncoding(), QUERIES, DOCS, {"q2": ["d3"]}, log=lambda line: None)
    assert cached.get("q2", ["d3"]).item() == pytest.approx(scores.get("q2", ["d3"]).item())
    with pytest.raises(AssertionError, match="re-encoded"):  # a pair the cache lacks is computed, not guessed
        MaxSimScores.build(path, _NoEncoding(), QUERIES, {**DOCS, "d4": "new"}, {"q1": ["d4"]}, log=lambda line: None)


def test_a_torn_cache_is_scored_again(base_bundle, tmp_path):
    """A run killed while writing the scores leaves at most a stray temporary file; a damaged cache is rebuilt."""
    encoder = ItemEncoder.from_bundle(base_bundle)
    path = tmp_path / "maxsim.json"
    whole = MaxSimScores.build(path, encoder, QUERIES, DOCS, PAIRS, log=lambda line: None)
    assert not path.with_suffix(".tmp").exists()
    path.write_text(path.read_text()[:20])
    again = MaxSimScores.build(path, encoder, QUERIES, DOCS, PAIRS, log=lambda line: None)
    assert again.scores == pytest.approx(whole.scores) and json.loads(path.read_text()) == pytest.approx(whole.scores)
