"""The final score: standardised first stages and scaled log-odds, weighted; MixLM alone without first-stage scores."""

import numpy as np
import pytest

from mixlm.encoders.config import BundleConfig, FusionConfig
from mixlm.ranker.fusion import fuse, standardise


def test_standardise_by_hand():
    np.testing.assert_allclose(standardise(np.array([1.0, 2.0, 3.0])), [-1.2247449, 0.0, 1.2247449], atol=1e-6)
    np.testing.assert_array_equal(standardise(np.array([5.0, 5.0])), [0.0, 0.0])  # no spread: no say
    assert standardise(np.array([])).size == 0


def test_fuse_on_known_inputs():
    fusion = FusionConfig(mixlm=1.0, first_stage=0.5, dense=2.0)
    log_odds, bm25, dense = np.array([3.0, 1.0, 2.0]), np.array([10.0, 30.0, 20.0]), np.array([0.1, 0.2, 0.9])
    expected = standardise(log_odds) + 0.5 * standardise(bm25) + 2.0 * standardise(dense)
    np.testing.assert_allclose(fuse(fusion, log_odds, first_stage=bm25, dense=dense), expected)
    # BM25 alone would put item 1 first, MixLM item 0: the weights decide, here dense carries item 2
    assert int(np.argmax(fuse(fusion, log_odds, first_stage=bm25, dense=dense))) == 2


def test_with_a_fitted_scale_mixlm_counts_by_how_sure_it_is():
    """Per-request z-scores give a request MixLM barely separates the same say as one it separates widely;
    divided by one fitted scale, the unsure request is left to the first stage."""
    bm25 = np.array([3.0, 1.0, 2.0])  # BM25 prefers item 0, MixLM item 1
    sure, unsure = np.array([-4.0, 4.0, 0.0]), np.array([-0.04, 0.04, 0.0])
    scaled, per_request = FusionConfig(first_stage=0.5, mixlm_scale=2.0), FusionConfig(first_stage=0.5)
    assert int(np.argmax(fuse(scaled, sure, first_stage=bm25))) == 1
    assert int(np.argmax(fuse(scaled, unsure, first_stage=bm25))) == 0
    assert int(np.argmax(fuse(per_request, unsure, first_stage=bm25))) == 1
    expected = (sure - sure.mean()) / 2.0 + 0.5 * standardise(bm25)
    np.testing.assert_allclose(fuse(scaled, sure, first_stage=bm25), expected)
    with pytest.raises(ValueError, match="mixlm_scale must be > 0"):
        FusionConfig(mixlm_scale=0.0)


def test_without_first_stage_scores_or_weights_it_is_mixlm_alone():
    log_odds = np.array([0.3, -1.0, 2.0])
    np.testing.assert_array_equal(fuse(FusionConfig(first_stage=1.0), log_odds), log_odds)
    np.testing.assert_array_equal(fuse(None, log_odds, first_stage=np.array([1.0, 2.0, 3.0])), log_odds)


def test_scores_of_the_wrong_length_and_negative_weights_are_refused():
    with pytest.raises(ValueError, match="2 scores for 3 candidates"):
        fuse(FusionConfig(first_stage=1.0), np.zeros(3), first_stage=np.zeros(2))
    with pytest.raises(ValueError, match=">= 0"):
        FusionConfig(first_stage=-1.0)


def test_fusion_weights_round_trip_through_the_bundle_config(tiny_bundle):
    config = BundleConfig.load(tiny_bundle)
    assert config.fusion is None
    data = config.to_dict()
    data["fusion"] = {"mixlm": 1.0, "first_stage": 0.3, "dense": 0.0, "fitted_on": "scifact/train-dev (98 queries)"}
    assert BundleConfig.from_dict(data).fusion == FusionConfig(1.0, 0.3, 0.0, "scifact/train-dev (98 queries)")
    assert BundleConfig.from_dict(data).fusion.mixlm_scale is None  # fitted before the scale: z-scores
    data["fusion"]["mixlm_scale"] = 1.9
    assert BundleConfig.from_dict(data).fusion.mixlm_scale == 1.9
    data["fusion"]["bogus"] = 1
    with pytest.raises(ValueError, match="fusion has unknown keys bogus"):
        BundleConfig.from_dict(data)
