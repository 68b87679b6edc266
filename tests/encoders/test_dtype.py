"""The compute dtype follows the CPU's capability; bfloat16 scores agree with float32."""

import numpy as np
import pytest
import torch

from mixlm.encoders import hf_models


def test_bfloat16_where_the_cpu_has_units_for_it_else_float32(monkeypatch):
    monkeypatch.delenv("MIXLM_DTYPE", raising=False)
    cpu = torch.device("cpu")
    monkeypatch.setattr(hf_models, "cpu_has_fast_bfloat16", lambda: True)
    assert hf_models.pick_dtype(cpu) == torch.bfloat16
    monkeypatch.setattr(hf_models, "cpu_has_fast_bfloat16", lambda: False)
    assert hf_models.pick_dtype(cpu) == torch.float32
    assert hf_models.pick_dtype(torch.device("cuda")) == torch.bfloat16
    monkeypatch.setenv("MIXLM_DTYPE", "float32")
    monkeypatch.setattr(hf_models, "cpu_has_fast_bfloat16", lambda: True)
    assert hf_models.pick_dtype(cpu) == torch.float32
    assert hf_models.pick_dtype(cpu, "bfloat16") == torch.bfloat16  # an explicit choice wins
    monkeypatch.setenv("MIXLM_DTYPE", "float8")
    with pytest.raises(ValueError, match="dtype must be one of"):
        hf_models.pick_dtype(cpu)


def test_the_capability_probe_answers_on_this_machine():
    assert isinstance(hf_models.cpu_has_fast_bfloat16(), bool)


def test_bfloat16_ranker_scores_agree_with_float32(tiny_bundle):
    """Same bundle, same items: bfloat16 log-odds track float32's (rank correlation and top item)."""
    from mixlm.ranker.model import MixedInputRanker

    rankers = {dtype: MixedInputRanker.from_bundle(tiny_bundle, dtype=dtype) for dtype in ("float32", "bfloat16")}
    generator = torch.Generator().manual_seed(0)
    hidden = rankers["float32"].hidden_size
    items = [torch.randn(1, hidden, generator=generator) * 3 for _ in range(40)]
    scores = {dtype: r.score("streaming data engineer", items).log_odds for dtype, r in rankers.items()}
    assert rankers["bfloat16"].dtype == torch.bfloat16
    ranks = [np.argsort(np.argsort(scores[d])) for d in ("float32", "bfloat16")]
    assert np.corrcoef(*ranks)[0, 1] > 0.9  # Spearman's rho
    assert np.abs(scores["float32"] - scores["bfloat16"]).max() < 0.25 * np.ptp(scores["float32"]) + 0.05


def test_bfloat16_shared_prefix_agrees_with_the_other_paths(tiny_bundle):
    """In bfloat16, the shared-prefix backend (several queries per forward) tracks the copying backend
    and naive scoring of the same dtype, and float32's shared-prefix scores."""
    from mixlm.ranker.model import MixedInputRanker

    rankers = {dtype: MixedInputRanker.from_bundle(tiny_bundle, dtype=dtype) for dtype in ("float32", "bfloat16")}
    generator = torch.Generator().manual_seed(1)
    hidden = rankers["float32"].hidden_size
    items = [torch.randn(2, hidden, generator=generator) * 3 for _ in range(30)]
    requests = [("streaming data engineer", items), ("nurse", items[:12])]
    reference = rankers["float32"].score_batch(requests)
    bf16 = rankers["bfloat16"]
    shared, copied = bf16.score_batch(requests), bf16.score_batch(requests, backend="amortized-copy")
    for (query, candidates), expected, one, other in zip(requests, reference, shared, copied, strict=True):
        naive = bf16.score(query, candidates, backend="naive").log_odds
        tolerance = 0.25 * np.ptp(expected.log_odds) + 0.01
        for scores in (other.log_odds, naive, expected.log_odds):
            assert np.abs(one.log_odds - scores).max() < tolerance
        assert np.corrcoef(np.argsort(np.argsort(one.log_odds)), np.argsort(np.argsort(expected.log_odds)))[0, 1] > 0.9
