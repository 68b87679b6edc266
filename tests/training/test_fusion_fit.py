"""The fusion fit on known inputs (the weights that hold on every case win, MixLM's scale by hand), and
``mixlm train fusion`` refitting a trained tiny bundle with a held-out case, refusing a student that saw
the collection or has no fitted scale."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from mixlm.cli import main
from mixlm.encoders.bundle import load_bundle
from mixlm.encoders.config import FusionConfig, LoraConfig
from mixlm.training.config import JointConfig, LoopConfig
from mixlm.training.fusion_fit import DENSE_GRID, FIRST_STAGE_GRID, FusionCase, fit_fusion, log_odds_scale
from mixlm.training.joint import train_joint
from mixlm.training.rerank_eval import fused_run

from .conftest import SCIFACT, small_data

DEBIAN = SCIFACT.parent / "debian-descriptions"


def _scores(docs, rank, salt):
    """The relevant document (``docs[0]``) gets the rank-th highest score; the others keep their order."""
    order = docs[1:rank] + [docs[0]] + docs[rank:]
    return {d: float(len(docs) - i) + 0.1 * ((salt * 7 + i * 3) % 5) * (d != docs[0]) for i, d in enumerate(order)}


def _case(name, relevant_rank_by_feature, queries=12, size=10):
    """Each query has one relevant document; each feature puts it at the given rank (1 = first)."""
    qrels, candidates, mixlm_run, dense_run = {}, {}, {}, {}
    for q in range(queries):
        qid, docs = f"{name}{q}", [f"{name}{q}-d{i}" for i in range(size)]
        qrels[qid] = {docs[0]: 1}
        bm25 = _scores(docs, relevant_rank_by_feature["bm25"], q)
        candidates[qid] = sorted(bm25.items(), key=lambda item: -item[1])
        mixlm_run[qid] = _scores(docs, relevant_rank_by_feature["mixlm"], q)
        dense_run[qid] = _scores(docs, relevant_rank_by_feature["dense"], q)
    return FusionCase(name, qrels, candidates, mixlm_run, dense_run, log_odds_scale([mixlm_run]))


# MixLM is right on the collection it learned and wrong on one it never saw, where the first stages are right.
TRAINED = _case("trained", {"mixlm": 1, "bm25": 6, "dense": 7})
UNSEEN = _case("unseen", {"mixlm": 10, "bm25": 2, "dense": 2})


def _final(case, config):
    """The case's NDCG@10 at ``config``'s weights, its log-odds over the case's own scale."""
    config = dataclasses.replace(config, mixlm_scale=case.mixlm_scale)
    return case.ndcg(fused_run(config, case.candidates, case.mixlm_run, case.dense_run))


def _gain(case, config):
    return _final(case, config) - max(case.first_stages(use_dense=True).values())


def test_on_the_trained_collection_alone_mixlm_keeps_all_the_say():
    fusion, report = fit_fusion([TRAINED], fitted_on="trained/dev", mixlm_scale=TRAINED.mixlm_scale)
    assert (fusion.first_stage, fusion.dense, fusion.mixlm_scale) == (0.0, 0.0, TRAINED.mixlm_scale)
    assert report["cases"]["trained"]["final"] == pytest.approx(1.0)


def test_with_an_unseen_case_the_weights_with_the_best_worst_gain_win():
    alone, _ = fit_fusion([TRAINED], fitted_on="trained/dev", mixlm_scale=TRAINED.mixlm_scale)
    fusion, report = fit_fusion([TRAINED, UNSEEN], fitted_on="both", mixlm_scale=TRAINED.mixlm_scale)
    assert fusion.first_stage + fusion.dense > 0
    worst = min(_gain(TRAINED, fusion), _gain(UNSEEN, fusion))
    assert report["worst_gain"] == pytest.approx(worst, abs=1e-5)
    assert worst > min(_gain(TRAINED, alone), _gain(UNSEEN, alone))
    every_point = [FusionConfig(1.0, row["first_stage"], row["dense"]) for row in report["grid"]]
    assert worst >= max(min(_gain(TRAINED, c), _gain(UNSEEN, c)) for c in every_point) - 1e-5


def test_fitting_needs_a_case():
    with pytest.raises(ValueError, match="at least one"):
        fit_fusion([], fitted_on="", mixlm_scale=1.0)


def test_log_odds_scale_by_hand():
    runs = [{"q1": {"a": 1.0, "b": 3.0}, "q2": {"a": 0.0, "b": 0.0, "c": 3.0}}, {"q3": {"a": 5.0, "b": 9.0}}]
    # spreads 1.0, sqrt(2), 2.0; a query with one candidate says nothing about spread
    assert log_odds_scale(runs + [{"q4": {"a": 7.0}}]) == pytest.approx(np.sqrt(2.0), abs=1e-3)
    assert log_odds_scale([{"q1": {"a": 1e-3, "b": 3e-3}}]) == pytest.approx(1e-3)  # a tiny student's spread
    assert log_odds_scale([{"q1": {"a": 1.0, "b": 1.0}}]) == 1.0  # no spread: MixLM adds nothing anyway


def test_each_case_is_scored_with_its_own_students_scale():
    """A held-out student that separates its candidates little is a student unsure of them: at its own
    (larger, in-domain) scale its log-odds count for less than at the fitted bundle's (here that of its
    tiny spread). The fit scores the case at its own scale; the weights it returns carry the bundle's."""
    unsure = dataclasses.replace(UNSEEN, mixlm_run={q: {d: s / 100 for d, s in r.items()}
                                                    for q, r in UNSEEN.mixlm_run.items()})
    bundle_scale = log_odds_scale([unsure.mixlm_run])
    at_its_own = dataclasses.replace(unsure, mixlm_scale=UNSEEN.mixlm_scale)
    at_the_bundles = dataclasses.replace(unsure, mixlm_scale=bundle_scale)
    assert _gain(at_its_own, FusionConfig(1.0, 1.0, 1.0)) > _gain(at_the_bundles, FusionConfig(1.0, 1.0, 1.0))
    fusion, report = fit_fusion([at_its_own], fitted_on="unseen", mixlm_scale=bundle_scale)
    assert fusion.mixlm_scale == bundle_scale and report["cases"]["unseen"]["mixlm_scale"] == UNSEEN.mixlm_scale
    scored = {(row["first_stage"], row["dense"]): row["ndcg@10"]["unseen"] for row in report["grid"]}
    assert scored[(1.0, 1.0)] == pytest.approx(_final(at_its_own, FusionConfig(1.0, 1.0, 1.0)), abs=1e-5)
    assert scored[(1.0, 1.0)] != pytest.approx(_final(at_the_bundles, FusionConfig(1.0, 1.0, 1.0)), abs=1e-5)


@pytest.fixture(scope="module")
def tiny_students(teacher_bundle, tmp_path_factory):
    """A tiny student trained on a few SciFact queries, and a small Debian pseudo-query collection it never saw."""
    root = tmp_path_factory.mktemp("fusion")
    config = JointConfig(small_data(max_queries=40, group_size=4),
                         LoopConfig(steps=2, lr=1e-3, warmup_steps=1, checkpoint_every=2, log_every=2),
                         ranker_lora=LoraConfig(rank=4, alpha=8.0), max_item_tokens=48, teacher_negatives=1,
                         dense_depth=10)
    student = train_joint(teacher_bundle, root / "student", config, log=lambda line: None).path
    result = CliRunner().invoke(main, ["train", "pseudo-queries", "--corpus", str(DEBIAN), "--out",
                                       str(root / "pq"), "--max-queries", "60"])
    assert result.exit_code == 0, result.output
    return student, root / "pq"


def test_the_fusion_command_refits_the_bundle_with_a_held_out_case(tiny_students):
    student, pseudo = tiny_students
    before = load_bundle(student).config.fusion
    assert before is not None and before.fitted_on.startswith("scifact/")
    result = CliRunner().invoke(main, ["train", "fusion", "--bundle", str(student), "--dataset", str(SCIFACT),
                                       "--held-out", f"{student}={pseudo}", "--rerank-depth", "10", "-o", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert sorted(report["cases"]) == [f"pq (unseen by {student})", "scifact"]
    bundle = load_bundle(student)
    bundle.check_encoder_id()  # only the fusion changed: the stored vectors stay valid
    assert f"pq/train-dev ({report['cases'][f'pq (unseen by {student})']['queries']} queries) scored by {student}" \
        in bundle.config.fusion.fitted_on
    assert (bundle.config.fusion.first_stage, bundle.config.fusion.dense) == (report["fusion"]["first_stage"],
                                                                           report["fusion"]["dense"])
    assert bundle.config.fusion.mixlm_scale == report["cases"]["scifact"]["mixlm_scale"] > 0
    # the JSON keeps every grid point, so a user can see how close the runners-up were
    chosen = [row for row in report["grid"] if (row["first_stage"], row["dense"]) == (bundle.config.fusion.first_stage,
                                                                                   bundle.config.fusion.dense)]
    assert len(report["grid"]) == len(FIRST_STAGE_GRID) * len(DENSE_GRID) and len(chosen) == 1
    assert sorted(chosen[0]["ndcg@10"]) == sorted(report["cases"])


def test_a_held_out_student_that_saw_the_collection_is_refused(tiny_students):
    student, _ = tiny_students
    result = CliRunner().invoke(main, ["train", "fusion", "--bundle", str(student), "--dataset", str(SCIFACT),
                                       "--held-out", f"{student}={SCIFACT}", "--rerank-depth", "10"])
    assert result.exit_code != 0
    assert "was trained on scifact" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_held_out_student_without_a_fitted_scale_is_refused(tiny_students, tmp_path):
    student, pseudo = tiny_students
    unscaled = tmp_path / "unscaled"
    shutil.copytree(student, unscaled)
    config = json.loads((unscaled / "mixlm.json").read_text())
    del config["fusion"]["mixlm_scale"]  # a bundle fitted before the scale existed
    (unscaled / "mixlm.json").write_text(json.dumps(config))
    result = CliRunner().invoke(main, ["train", "fusion", "--bundle", str(student), "--dataset", str(SCIFACT),
                                       "--held-out", f"{unscaled}={pseudo}", "--rerank-depth", "10"])
    assert result.exit_code != 0
    assert "has no fitted MixLM scale" in result.output and f"--bundle {unscaled}" in result.output
    assert len(result.output.strip().splitlines()) == 1
