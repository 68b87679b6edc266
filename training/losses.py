"""The MixLM training losses, on yes/no log-odds.

A ranker's answer is a Bernoulli ``p = sigmoid(log_odds)``; labels are soft ``p*`` in [0, 1].

    L = KL(p* || p) + λ_l CE(softmax(p*), softmax(log_odds)) + λ_d KL(p_teacher || p)
        + λ_a (α KL(p_fulltext_same_ranker || p) + β (1 - cos(h_last, h_last_fulltext)))
        + λ_e KL(softmax(s / τ) || softmax(log_odds)) + λ_f CE(softmax(p*), softmax(log_odds + f / τ_f))

The listwise term compares the candidates of one query with each other (a softmax over the
group), which is what NDCG rewards; the pointwise terms keep each ``p(yes)`` calibrated.
Teacher and full-text targets may cover only some candidates of a group (NaN elsewhere): their
terms average over the covered ones. The λ_e term is the first stages' prior: their order over
the group (``s``: the encoder's cosines, their z-score fusion with BM25's scores, or the MaxSim of
the encoder's token states), which holds on collections the gold labels never covered, as a soft
target for the candidates the labels say nothing about (over the whole group, or over its
negatives alone: ``LossWeights.encoder_prior_scope``). The residual term is listwise on the
log-odds added to the first stages' fused z-scores ``f``, as the final score adds them: a
candidate BM25 and dense already place well costs little, so the student spends itself on what
they miss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixlm.training.config import LossWeights


def bernoulli_kl(target: torch.Tensor, log_odds: torch.Tensor) -> torch.Tensor:
    """Mean ``KL(Bernoulli(target) || Bernoulli(sigmoid(log_odds)))``; 0 log 0 counts as 0."""
    target = target.to(log_odds.dtype)
    log_p, log_q = F.logsigmoid(log_odds), F.logsigmoid(-log_odds)
    entropy = torch.xlogy(target, target) + torch.xlogy(1 - target, 1 - target)
    cross = -(target * log_p + (1 - target) * log_q)
    return (entropy + cross).mean()


def listwise_loss(target: torch.Tensor, log_odds: torch.Tensor) -> torch.Tensor:
    """Cross-entropy between the labels normalised over the group and ``softmax(log_odds)``; 0 without positives."""
    target = target.to(log_odds.dtype)
    if target.sum() <= 0:
        return log_odds.sum() * 0.0
    return -(target / target.sum() * torch.log_softmax(log_odds, dim=-1)).sum()


def alignment_loss(hidden: torch.Tensor, hidden_fulltext: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cos`` between the mixed-input and the full-text last hidden states."""
    return (1 - F.cosine_similarity(hidden.float(), hidden_fulltext.float(), dim=-1)).mean()


def encoder_prior_loss(scores: torch.Tensor, log_odds: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL(softmax(scores / temperature) || softmax(log_odds))`` over the group."""
    prior = torch.log_softmax(scores.detach().to(log_odds) / temperature, dim=-1)  # log-odds' device and dtype
    return (prior.exp() * (prior - torch.log_softmax(log_odds, dim=-1))).sum()


def mixlm_loss(labels: torch.Tensor, log_odds: torch.Tensor, *, teacher_log_odds: torch.Tensor | None = None,
               fulltext_log_odds: torch.Tensor | None = None, hidden: torch.Tensor | None = None,
               hidden_fulltext: torch.Tensor | None = None, prior_scores: torch.Tensor | None = None,
               first_stage_scores: torch.Tensor | None = None, weights: LossWeights | None = None) -> dict:
    """The stage-3 loss and its parts (each a scalar tensor); absent signals contribute nothing."""
    weights = weights or LossWeights()
    parts = {"task": bernoulli_kl(labels, log_odds)}
    if weights.listwise:
        parts["listwise"] = listwise_loss(labels, log_odds)
    if weights.encoder_prior and prior_scores is not None:
        ordered = (labels <= 0).to(log_odds.device) if weights.encoder_prior_scope == "negatives" else \
            torch.ones_like(log_odds, dtype=torch.bool)
        if ordered.sum() >= 2:
            parts["encoder_prior"] = encoder_prior_loss(prior_scores.to(log_odds.device)[ordered], log_odds[ordered],
                                                        weights.encoder_prior_temperature)
    if weights.residual_listwise and first_stage_scores is not None:
        offset = first_stage_scores.detach().to(log_odds) / weights.residual_temperature
        parts["residual_listwise"] = listwise_loss(labels, log_odds + offset)
    if teacher_log_odds is not None and (covered := ~torch.isnan(teacher_log_odds)).any():
        parts["distill"] = bernoulli_kl(torch.sigmoid(teacher_log_odds[covered].detach()), log_odds[covered])
    if fulltext_log_odds is not None and (covered := ~torch.isnan(fulltext_log_odds)).any():
        parts["align_kl"] = bernoulli_kl(torch.sigmoid(fulltext_log_odds[covered].detach()), log_odds[covered])
    if hidden is not None and hidden_fulltext is not None:
        covered = ~torch.isnan(hidden_fulltext).any(dim=-1)
        if covered.any():
            parts["align_cos"] = alignment_loss(hidden[covered], hidden_fulltext[covered].detach())
    total = (weights.task * parts["task"] + weights.listwise * parts.get("listwise", 0.0)
             + weights.distill * parts.get("distill", 0.0)
             + weights.align * (weights.align_kl * parts.get("align_kl", 0.0)
                                + weights.align_cos * parts.get("align_cos", 0.0))
             + weights.encoder_prior * parts.get("encoder_prior", 0.0)
             + weights.residual_listwise * parts.get("residual_listwise", 0.0))
    return {"total": total, **parts}
