"""The MixLM training losses, on yes/no log-odds.

A ranker's answer is a Bernoulli ``p = sigmoid(log_odds)``; labels are soft ``p*`` in [0, 1].

    L = KL(p* || p) + λ_d KL(p_teacher || p)
        + λ_a (α KL(p_fulltext_same_ranker || p) + β (1 - cos(h_last, h_last_fulltext)))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def bernoulli_kl(target: torch.Tensor, log_odds: torch.Tensor) -> torch.Tensor:
    """Mean ``KL(Bernoulli(target) || Bernoulli(sigmoid(log_odds)))``; 0 log 0 counts as 0."""
    target = target.to(log_odds.dtype)
    log_p, log_q = F.logsigmoid(log_odds), F.logsigmoid(-log_odds)
    entropy = torch.xlogy(target, target) + torch.xlogy(1 - target, 1 - target)
    cross = -(target * log_p + (1 - target) * log_q)
    return (entropy + cross).mean()


def alignment_loss(hidden: torch.Tensor, hidden_fulltext: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cos`` between the mixed-input and the full-text last hidden states."""
    return (1 - F.cosine_similarity(hidden.float(), hidden_fulltext.float(), dim=-1)).mean()


@dataclass(frozen=True)
class LossWeights:
    task: float = 1.0  # the weight of KL(p* || p); the curriculum's phases trade it against alignment
    distill: float = 1.0  # λ_d
    align: float = 1.0  # λ_a
    align_kl: float = 1.0  # α
    align_cos: float = 1.0  # β


def mixlm_loss(labels: torch.Tensor, log_odds: torch.Tensor, *, teacher_log_odds: torch.Tensor | None = None,
               fulltext_log_odds: torch.Tensor | None = None, hidden: torch.Tensor | None = None,
               hidden_fulltext: torch.Tensor | None = None, weights: LossWeights = LossWeights()) -> dict:
    """The stage-3 loss and its parts (each a scalar tensor); absent signals contribute nothing."""
    parts = {"task": bernoulli_kl(labels, log_odds)}
    if teacher_log_odds is not None:
        parts["distill"] = bernoulli_kl(torch.sigmoid(teacher_log_odds.detach()), log_odds)
    if fulltext_log_odds is not None:
        parts["align_kl"] = bernoulli_kl(torch.sigmoid(fulltext_log_odds.detach()), log_odds)
    if hidden is not None and hidden_fulltext is not None:
        parts["align_cos"] = alignment_loss(hidden, hidden_fulltext.detach())
    total = weights.task * parts["task"] + weights.distill * parts.get("distill", 0.0) + weights.align * (
        weights.align_kl * parts.get("align_kl", 0.0) + weights.align_cos * parts.get("align_cos", 0.0))
    return {"total": total, **parts}
