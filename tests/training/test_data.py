import pytest

from mixlm.schemas.beir import BeirDataset, read_qrels
from mixlm.training.candidates import GroupSampler, bm25_candidates, max_grade, soft_label

from .conftest import SCIFACT

CRANFIELD = SCIFACT.parent / "cranfield"


def test_graded_judgments_map_to_soft_labels():
    cranfield = read_qrels(CRANFIELD, "test")
    top = max_grade(cranfield)
    assert top == 4
    assert [soft_label(g, top) for g in (4, 3, 2, 1, 0, None)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    assert soft_label(1, max_grade(read_qrels(SCIFACT, "train"))) == 1.0


def test_a_missing_split_names_the_available_ones():
    with pytest.raises(FileNotFoundError, match="splits there: test, train"):
        BeirDataset.load(SCIFACT, "dev")


def test_groups_hold_judged_positives_and_bm25_negatives_and_repeat_per_step():
    dataset = BeirDataset.load(SCIFACT, "train").limit(10)
    candidates = bm25_candidates(dataset, 30)
    sampler = GroupSampler(dataset, candidates, size=4, positives=1, seed=7)
    groups = sampler.groups(3, 5)
    assert groups == GroupSampler(dataset, candidates, size=4, positives=1, seed=7).groups(3, 5)
    assert groups != sampler.groups(4, 5)
    for group in groups:
        judged = dataset.qrels[group.query_id]
        bm25 = {d for d, _ in candidates[group.query_id]}
        assert len(group.doc_ids) == 4 and group.labels[0] == 1.0 and judged[group.doc_ids[0]] > 0
        assert all(d in bm25 and judged.get(d, 0) == 0 for d in group.doc_ids[1:])
        assert group.labels[1:] == (0.0, 0.0, 0.0)


def test_evaluation_candidates_never_add_the_judged_documents():
    dataset = BeirDataset.load(SCIFACT, "test").limit(20)
    candidates = bm25_candidates(dataset, 5)
    assert all(len(hits) <= 5 for hits in candidates.values())
    missed = sum(1 for q, hits in candidates.items() if not set(dataset.qrels[q]) & {d for d, _ in hits})
    assert missed > 0  # BM25 misses some: the positives were not slipped in


def test_the_dev_holdout_is_stable_disjoint_and_complete():
    dataset = BeirDataset.load(SCIFACT, "train")
    rest, dev = dataset.holdout(8)
    assert set(rest.qrels).isdisjoint(dev.qrels) and set(rest.qrels) | set(dev.qrels) == set(dataset.qrels)
    assert 0.08 < len(dev.qrels) / len(dataset.qrels) < 0.17
    first = dataset.limit(400)
    assert set(first.holdout(8)[1].qrels) == set(dev.qrels) & set(first.qrels)  # depends on the query id alone
    assert (rest.split, dev.split) == ("train-rest", "train-dev")
    with pytest.raises(ValueError, match="every >= 2"):
        dataset.holdout(1)


def test_merged_candidates_interleave_without_repeats():
    from mixlm.training.candidates import merged_candidates

    bm25 = {"q": [("a", 9.0), ("b", 8.0), ("c", 7.0)]}
    dense = {"q": [("c", 0.9), ("d", 0.8)]}
    assert merged_candidates(bm25, dense) == {"q": [("a", 9.0), ("c", 0.9), ("b", 8.0), ("d", 0.8)]}


def test_fixed_negatives_come_first_in_every_group_and_are_what_the_teacher_scores():
    dataset = BeirDataset.load(SCIFACT, "train").limit(10)
    candidates = bm25_candidates(dataset, 30)
    sampler = GroupSampler(dataset, candidates, size=6, positives=1, seed=3, fixed_negatives=2)
    pairs = {g.query_id: g for g in sampler.fixed_pairs()}
    for step in range(3):
        for group in sampler.groups(step, 4):
            hardest = [d for d, _ in candidates[group.query_id] if dataset.qrels[group.query_id].get(d, 0) <= 0][:2]
            assert list(group.doc_ids[1:3]) == hardest and len(set(group.doc_ids)) == 6
            assert set(group.doc_ids[:3]) <= set(pairs[group.query_id].doc_ids)
    with pytest.raises(ValueError, match="leave no room"):
        GroupSampler(dataset, candidates, size=3, positives=1, fixed_negatives=2)
