"""The fusion fit on known inputs (the weights that hold on every case win), and ``mixlm train fusion``
refitting a trained tiny bundle with a held-out case, refusing a student that saw the collection."""

import json

import pytest
from click.testing import CliRunner

from mixlm.cli import main
from mixlm.encoders.bundle import load_bundle
from mixlm.encoders.config import FusionConfig, LoraConfig
from mixlm.training.config import JointConfig, LoopConfig
from mixlm.training.fusion_fit import DENSE_GRID, FIRST_STAGE_GRID, FusionCase, fit_fusion
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
    return FusionCase(name, qrels, candidates, mixlm_run, dense_run)


# MixLM is right on the collection it learned and wrong on one it never saw, where the first stages are right.
TRAINED = _case("trained", {"mixlm": 1, "bm25": 6, "dense": 7})
UNSEEN = _case("unseen", {"mixlm": 10, "bm25": 2, "dense": 2})


def _gain(case, config):
    final = case.ndcg(fused_run(config, case.candidates, case.mixlm_run, case.dense_run))
    return final - max(case.first_stages(use_dense=True).values())


def test_on_the_trained_collection_alone_mixlm_keeps_all_the_say():
    fusion, report = fit_fusion([TRAINED], fitted_on="trained/dev")
    assert (fusion.first_stage, fusion.dense) == (0.0, 0.0)
    assert report["cases"]["trained"]["final"] == pytest.approx(1.0)


def test_with_an_unseen_case_the_weights_with_the_best_worst_gain_win():
    alone, _ = fit_fusion([TRAINED], fitted_on="trained/dev")
    fusion, report = fit_fusion([TRAINED, UNSEEN], fitted_on="both")
    assert fusion.first_stage + fusion.dense > 0
    worst = min(_gain(TRAINED, fusion), _gain(UNSEEN, fusion))
    assert report["worst_gain"] == pytest.approx(worst, abs=1e-5)
    assert worst > min(_gain(TRAINED, alone), _gain(UNSEEN, alone))
    every_point = [FusionConfig(1.0, row["first_stage"], row["dense"]) for row in report["grid"]]
    assert worst >= max(min(_gain(TRAINED, c), _gain(UNSEEN, c)) for c in every_point) - 1e-5


def test_fitting_needs_a_case():
    with pytest.raises(ValueError, match="at least one"):
        fit_fusion([], fitted_on="")


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
