import math

import pytest
import torch

from mixlm.schemas.errors import InputError
from mixlm.training.config import LossWeights
from mixlm.training.evaluation import SplitLeakError, guard_training_split, ndcg_at_10
from mixlm.training.losses import alignment_loss, bernoulli_kl, mixlm_loss


def kl_by_hand(p_star: float, p: float) -> float:
    terms = 0.0
    for a, b in ((p_star, p), (1 - p_star, 1 - p)):
        if a > 0:
            terms += a * math.log(a / b)
    return terms


@pytest.mark.parametrize(("p_star", "log_odds"), [(1.0, 2.0), (0.0, -1.0), (0.3, 0.5), (0.5, 0.0), (1.0, -3.0)])
def test_bernoulli_kl_matches_hand_computation(p_star, log_odds):
    p = 1 / (1 + math.exp(-log_odds))
    got = bernoulli_kl(torch.tensor([p_star]), torch.tensor([log_odds])).item()
    assert got == pytest.approx(kl_by_hand(p_star, p), abs=1e-6)


def test_kl_is_zero_only_at_the_target_and_has_the_right_gradient():
    log_odds = torch.tensor([0.7], requires_grad=True)
    target = torch.sigmoid(torch.tensor([0.7]))
    loss = bernoulli_kl(target, log_odds)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-7) and log_odds.grad.abs().item() < 1e-6
    moved = torch.tensor([0.0], requires_grad=True)
    bernoulli_kl(torch.tensor([1.0]), moved).backward()
    assert moved.grad.item() == pytest.approx(-0.5)  # d/dx KL(1 || σ(x)) = σ(x) - 1


def test_alignment_loss_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    assert alignment_loss(a, b).item() == pytest.approx((0.0 + 1.0) / 2)


def test_mixlm_loss_combines_its_parts():
    labels, log_odds = torch.tensor([1.0, 0.0]), torch.tensor([0.5, -0.5])
    teacher, fulltext = torch.tensor([2.0, -2.0]), torch.tensor([1.0, -1.0])
    hidden, hidden_full = torch.randn(2, 8), torch.randn(2, 8)
    weights = LossWeights(distill=0.5, align=2.0, align_kl=0.3, align_cos=0.7)
    parts = mixlm_loss(labels, log_odds, teacher_log_odds=teacher, fulltext_log_odds=fulltext, hidden=hidden,
                       hidden_fulltext=hidden_full, weights=weights)
    expected = (bernoulli_kl(labels, log_odds) + 0.5 * bernoulli_kl(torch.sigmoid(teacher), log_odds)
                + 2.0 * (0.3 * bernoulli_kl(torch.sigmoid(fulltext), log_odds)
                         + 0.7 * alignment_loss(hidden, hidden_full)))
    assert parts["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(mixlm_loss(labels, log_odds)) == {"total", "task"}


def _dcg(gains):
    return sum(g / math.log2(rank + 2) for rank, g in enumerate(gains))


def test_ndcg_agrees_with_a_hand_computation():
    qrels = {"q1": {"d1": 2, "d2": 1, "d9": 1}, "q2": {"d5": 1}, "q3": {}}
    run = {"q1": {"d2": 0.9, "d1": 0.8, "d3": 0.7}, "q2": {"d4": 0.5, "d6": 0.4}}
    result = ndcg_at_10(qrels, run)
    q1 = _dcg([1, 2, 0]) / _dcg([2, 1, 1])
    assert result["queries"] == 2  # q3 is unjudged: skipped
    assert result["per_query"]["q1"] == pytest.approx(q1, abs=1e-6)
    assert result["per_query"]["q2"] == 0.0
    assert result["ndcg@10"] == pytest.approx(q1 / 2, abs=1e-6)
    perfect = ndcg_at_10(qrels, {"q1": {"d1": 3, "d2": 2, "d9": 1}, "q2": {"d5": 1}})
    assert perfect["ndcg@10"] == pytest.approx(1.0)


def test_split_guard_refuses_test_splits():
    assert guard_training_split("train") == "train"
    for split in ("test", "Test", "eval"):
        with pytest.raises(SplitLeakError, match="final evaluation"):
            guard_training_split(split)


def test_the_task_weight_scales_only_the_task_term():
    labels, log_odds, teacher = torch.tensor([1.0, 0.0]), torch.tensor([0.2, 0.1]), torch.tensor([1.5, -1.0])
    full = mixlm_loss(labels, log_odds, teacher_log_odds=teacher, weights=LossWeights(task=1.0, distill=0.5))
    muted = mixlm_loss(labels, log_odds, teacher_log_odds=teacher, weights=LossWeights(task=0.0, distill=0.5))
    assert muted["total"].item() == pytest.approx(0.5 * full["distill"].item(), rel=1e-6)
    assert full["total"].item() == pytest.approx(full["task"].item() + 0.5 * full["distill"].item(), rel=1e-6)


def test_listwise_loss_by_hand():
    from mixlm.training.losses import listwise_loss

    log_odds = torch.tensor([2.0, 0.0, -1.0])
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + 1.0 + math.exp(-1.0)))
    assert listwise_loss(torch.tensor([1.0, 0.0, 0.0]), log_odds).item() == pytest.approx(expected, abs=1e-6)
    # two equally relevant candidates share the target mass
    both = listwise_loss(torch.tensor([1.0, 1.0, 0.0]), log_odds).item()
    assert both == pytest.approx(-0.5 * (math.log(torch.softmax(log_odds, 0)[0].item())
                                         + math.log(torch.softmax(log_odds, 0)[1].item())), abs=1e-6)
    assert listwise_loss(torch.zeros(3), log_odds).item() == 0.0  # no positive: nothing to rank


def test_teacher_targets_that_cover_part_of_a_group_count_only_there():
    labels, log_odds = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.5, -0.2, 1.0])
    teacher = torch.tensor([1.5, float("nan"), -2.0])
    hidden, teacher_hidden = torch.randn(3, 4), torch.randn(3, 4)
    teacher_hidden[1] = float("nan")
    parts = mixlm_loss(labels, log_odds, teacher_log_odds=teacher, fulltext_log_odds=teacher, hidden=hidden,
                       hidden_fulltext=teacher_hidden, weights=LossWeights(listwise=1.0))
    covered = torch.tensor([True, False, True])
    assert parts["distill"].item() == pytest.approx(
        bernoulli_kl(torch.sigmoid(teacher[covered]), log_odds[covered]).item())
    assert parts["align_cos"].item() == pytest.approx(alignment_loss(hidden[covered], teacher_hidden[covered]).item())
    assert not any(torch.isnan(v).any() for v in parts.values())
    uncovered = mixlm_loss(labels, log_odds, teacher_log_odds=torch.full((3,), float("nan")))
    assert "distill" not in uncovered


def test_encoder_prior_by_hand_and_zero_when_the_ranker_keeps_the_cosine_order():
    from mixlm.training.losses import encoder_prior_loss

    cosines, log_odds = torch.tensor([0.6, 0.5, 0.3]), torch.tensor([0.0, 1.0, -1.0])
    prior = [math.exp(c / 0.1) for c in cosines.tolist()]
    prior = [p / sum(prior) for p in prior]
    model = torch.softmax(log_odds, 0).tolist()
    expected = sum(p * math.log(p / q) for p, q in zip(prior, model, strict=True))
    assert encoder_prior_loss(cosines, log_odds, 0.1).item() == pytest.approx(expected, abs=1e-6)
    # log-odds that are the cosines over the temperature (plus any shift) are what the prior asks for
    assert encoder_prior_loss(cosines, cosines / 0.1 + 3.0, 0.1).item() == pytest.approx(0.0, abs=1e-6)
    labels = torch.tensor([1.0, 0.0, 0.0])
    weighted = mixlm_loss(labels, log_odds, prior_scores=cosines,
                          weights=LossWeights(encoder_prior=0.5, encoder_prior_temperature=0.1))
    assert weighted["total"].item() == pytest.approx(bernoulli_kl(labels, log_odds).item() + 0.5 * expected, rel=1e-6)
    assert "encoder_prior" not in mixlm_loss(labels, log_odds, prior_scores=cosines)  # off by default


def test_a_prior_over_the_negatives_leaves_the_relevant_candidates_to_the_labels():
    from mixlm.training.losses import encoder_prior_loss

    labels, log_odds = torch.tensor([0.0, 1.0, 0.0, 0.0]), torch.tensor([0.2, 1.0, -1.0, 0.5])
    scope = LossWeights(encoder_prior=1.0, encoder_prior_temperature=0.1, encoder_prior_scope="negatives")
    negatives = torch.tensor([True, False, True, True])
    for positive_score in (0.9, -0.9):  # where the cosine puts the relevant item does not matter
        scores = torch.tensor([0.6, positive_score, 0.3, 0.5])
        part = mixlm_loss(labels, log_odds, prior_scores=scores, weights=scope)["encoder_prior"]
        assert part.item() == pytest.approx(encoder_prior_loss(scores[negatives], log_odds[negatives], 0.1).item())
    whole = mixlm_loss(labels, log_odds, prior_scores=torch.tensor([0.6, -0.9, 0.3, 0.5]),
                       weights=LossWeights(encoder_prior=1.0, encoder_prior_temperature=0.1))["encoder_prior"]
    assert whole.item() != pytest.approx(part.item())
    # one negative has no order to follow
    assert "encoder_prior" not in mixlm_loss(torch.tensor([1.0, 0.0]), log_odds[:2], prior_scores=scores[:2],
                                             weights=scope)


@pytest.mark.parametrize("bad", [{"encoder_prior_source": "bm25"}, {"encoder_prior_temperature": 0.0},
                                 {"encoder_prior_scope": "positives"}])
def test_the_prior_refuses_an_unknown_source_scope_or_a_non_positive_temperature(bad):
    with pytest.raises(InputError, match="encoder_prior"):
        LossWeights(**bad)


def test_the_residual_term_is_listwise_on_the_log_odds_plus_the_first_stages_by_hand():
    labels, log_odds = torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.5, 0.0, -0.5])
    first_stage = torch.tensor([1.0, -1.0, 0.0])  # BM25+dense put the relevant candidate last
    logits = [lo + f / 0.5 for lo, f in zip(log_odds.tolist(), first_stage.tolist(), strict=True)]
    expected = -(logits[1] - math.log(sum(math.exp(x) for x in logits)))
    weights = LossWeights(residual_listwise=2.0, residual_temperature=0.5)
    parts = mixlm_loss(labels, log_odds, first_stage_scores=first_stage, weights=weights)
    assert parts["residual_listwise"].item() == pytest.approx(expected, abs=1e-6)
    assert parts["total"].item() == pytest.approx(bernoulli_kl(labels, log_odds).item() + 2.0 * expected, rel=1e-6)
    assert "residual_listwise" not in mixlm_loss(labels, log_odds, first_stage_scores=first_stage)  # off by default


def test_the_residual_term_asks_less_where_the_first_stages_already_rank_the_relevant_candidate_first():
    labels = torch.tensor([1.0, 0.0, 0.0, 0.0])
    weights = LossWeights(residual_listwise=1.0)
    pushes = {}
    for name, first_stage in (("found", [2.0, 0.0, -1.0, -1.0]), ("missed", [-2.0, 0.0, 1.0, 1.0])):
        log_odds = torch.zeros(4, requires_grad=True)
        mixlm_loss(labels, log_odds, first_stage_scores=torch.tensor(first_stage), weights=weights)[
            "residual_listwise"].backward()
        pushes[name] = -log_odds.grad[0].item()  # how hard the gradient lifts the relevant candidate
        assert log_odds.grad.sum().item() == pytest.approx(0.0, abs=1e-6)  # a shift of every log-odds costs nothing
    assert 0 < pushes["found"] < 0.1 < pushes["missed"]


def test_the_residual_term_refuses_a_non_positive_temperature():
    with pytest.raises(InputError, match="residual_temperature"):
        LossWeights(residual_temperature=0.0)
