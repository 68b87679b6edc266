import pytest

from mixlm.encoders.batching import token_budget_batches

LENGTHS = [5, 300, 40, 41, 7, 1000, 12, 12, 39, 2, 128, 64]


def test_batches_cover_every_item_once_and_respect_the_budget():
    batches = list(token_budget_batches(LENGTHS, budget=128))
    assert sorted(i for batch in batches for i in batch) == list(range(len(LENGTHS)))
    for batch in batches:
        assert max(LENGTHS[i] for i in batch) * len(batch) <= 128 or len(batch) == 1


def test_items_over_budget_go_alone():
    batches = list(token_budget_batches(LENGTHS, budget=128))
    assert [1] in batches and [5] in batches  # 300 and 1000 tokens


def test_length_buckets_do_not_interleave():
    batches = list(token_budget_batches(LENGTHS, budget=256))
    spans = [(min(LENGTHS[i] for i in b), max(LENGTHS[i] for i in b)) for b in batches]
    assert spans == sorted(spans)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))


def test_deterministic_with_ties_broken_by_index():
    assert list(token_budget_batches([3, 3, 3, 3], budget=6)) == [[0, 1], [2, 3]]
    assert list(token_budget_batches(LENGTHS, 200)) == list(token_budget_batches(list(LENGTHS), 200))


def test_edge_cases():
    assert list(token_budget_batches([], 10)) == []
    assert list(token_budget_batches([0, 0], 1)) == [[0], [1]]  # empty items still cost a position
    with pytest.raises(ValueError, match="positive"):
        list(token_budget_batches(LENGTHS, 0))
