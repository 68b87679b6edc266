import json

import pytest
from click.testing import CliRunner

from mixlm.cli import main
from mixlm.schemas.beir import BeirDataset
from mixlm.training.candidates import bm25_candidates
from mixlm.training.evaluation import ndcg_at_10

from .conftest import SCIFACT


@pytest.mark.parametrize("command", [["train"], ["train", "domain"], ["train", "teacher"], ["train", "joint"],
                                     ["train", "fusion"], ["train", "average"], ["eval"]])
def test_every_command_has_help(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_training_on_a_test_split_is_one_error_line(base_bundle, tmp_path):
    result = CliRunner().invoke(main, ["train", "teacher", "--bundle", str(base_bundle), "--dataset", str(SCIFACT),
                                       "--split", "test", "--steps", "1", "--run", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("mixlm: error: split 'test' cannot be used for training")
    assert "Traceback" not in result.output


def test_eval_reports_every_method_and_bm25_matches_pytrec(teacher_bundle, tmp_path):
    runs = tmp_path / "runs.trec"
    result = CliRunner().invoke(main, ["eval", "--dataset", str(SCIFACT), "--bundle", str(teacher_bundle),
                                       "--rerank-depth", "5", "--max-queries", "4", "--fulltext-tokens", "32",
                                       "--truncate-tokens", "8", "--save-runs", str(runs), "-o", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["queries"] == 4 and report["rerank_depth"] == 5
    assert list(report["results"]) == ["bm25", "random", "dense", "bm25+dense", "truncated", "fulltext", "mixlm",
                                       "final"]
    # a bundle without fusion weights: the final score is MixLM alone
    assert report["results"]["final"]["ndcg@10"] == report["results"]["mixlm"]["ndcg@10"]
    assert all(0.0 <= r["ndcg@10"] <= 1.0 for r in report["results"].values())
    dataset = BeirDataset.load(SCIFACT, "test").limit(4)
    bm25 = {q: dict(hits) for q, hits in bm25_candidates(dataset, 5).items()}
    assert report["results"]["bm25"]["ndcg@10"] == pytest.approx(ndcg_at_10(dataset.qrels, bm25)["ndcg@10"], abs=1e-4)
    lines = runs.read_text().splitlines()
    assert {line.split()[-1] for line in lines} == set(report["results"])
    assert len(lines) == 8 * sum(len(bm25[q]) for q in bm25)


def test_eval_refuses_an_unknown_method(teacher_bundle):
    result = CliRunner().invoke(main, ["eval", "--dataset", str(SCIFACT), "--bundle", str(teacher_bundle),
                                       "--methods", "bm25,colbert"])
    assert result.exit_code == 1 and "unknown method(s) colbert" in result.output


def test_domain_adaptation_lowers_the_lm_loss_and_the_teacher_continues_it(base_bundle, tmp_path):
    common = ["--bundle", str(base_bundle), "--dataset", str(SCIFACT), "--docs-per-step", "2", "--max-tokens", "32",
              "--lr", "1e-2", "--lora-layers", "1", "--lora-rank", "4"]
    result = CliRunner().invoke(main, ["train", "domain", *common, "--steps", "20", "--run", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    losses = [json.loads(line)["lm"] for line in (tmp_path / "d" / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-3:]) < sum(losses[:3])
    adapted = tmp_path / "d" / "bundle"
    result = CliRunner().invoke(main, ["train", "teacher", "--bundle", str(adapted), "--dataset", str(SCIFACT),
                                       "--max-queries", "4", "--steps", "1", "--group-size", "2",
                                       "--queries-per-step", "1", "--max-item-tokens", "16",
                                       "--run", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    assert "continuing its adapter" in result.output


def test_joint_prior_options_reach_the_run_config(teacher_bundle, tmp_path):
    run = tmp_path / "j"
    result = CliRunner().invoke(main, ["train", "joint", "--teacher", str(teacher_bundle), "--dataset", str(SCIFACT),
                                       "--max-queries", "12", "--group-size", "4", "--queries-per-step", "1",
                                       "--steps", "1", "--teacher-negatives", "1", "--bm25-depth", "20",
                                       "--encoder-prior-source", "maxsim", "--encoder-prior-scope", "negatives",
                                       "--residual-weight", "0.5", "--run", str(run)])
    assert result.exit_code == 0, result.output
    phase2 = json.loads((run / "config.json").read_text())["phase2"]
    assert (phase2["encoder_prior_source"], phase2["encoder_prior_scope"]) == ("maxsim", "negatives")
    assert phase2["encoder_prior_temperature"] == 0.03  # the source's own default
    assert phase2["residual_listwise"] == 0.5
    assert json.loads((run / "maxsim.json").read_text())  # the source's scores were computed for the run


def test_joint_start_from_reaches_the_run_config_a_misfit_is_one_error_line_and_runs_average(teacher_bundle, tmp_path):
    common = ["train", "joint", "--teacher", str(teacher_bundle), "--dataset", str(SCIFACT), "--max-queries", "6",
              "--group-size", "3", "--queries-per-step", "1", "--steps", "1", "--teacher-negatives", "0",
              "--bm25-depth", "20", "--lora-rank", "4"]
    first = CliRunner().invoke(main, [*common, "--run", str(tmp_path / "first")])
    assert first.exit_code == 0, first.output
    start = tmp_path / "first" / "bundle"
    # as docs/training.md tells a user: without the teacher's term, the start bundle serves as --teacher
    further = [arg if arg != str(teacher_bundle) else str(start) for arg in common]
    result = CliRunner().invoke(main, [*further, "--start-from", str(start), "--encoder-prior-weight", "0",
                                       "--distill-weight", "0", "--run", str(tmp_path / "further")])
    assert result.exit_code == 0, result.output
    assert "no teacher targets" in result.output
    assert json.loads((tmp_path / "further" / "config.json").read_text())["start_from"] == str(start.resolve())
    assert "trained further" in result.output
    misfit = CliRunner().invoke(main, [*common[:-1], "8", "--start-from", str(start), "--run", str(tmp_path / "x")])
    assert misfit.exit_code == 1 and "Traceback" not in misfit.output
    assert misfit.output.strip().splitlines()[-1].startswith(f"mixlm: error: --start-from {start.resolve()}: its "
                                                             "ranker adapter is")

    # the two runs continue one bundle: averaged, they make one bundle without fusion weights
    averaged = tmp_path / "averaged"
    result = CliRunner().invoke(main, ["train", "average", "--bundle", str(start), "--bundle",
                                       str(tmp_path / "further" / "bundle"), "--out", str(averaged), "-o", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["bundle"] == str(averaged) and 0 < report["adapter_change_kept"] <= 1
    assert json.loads((averaged / "mixlm.json").read_text())["fusion"] is None
    taken = tmp_path / "notes"
    taken.mkdir()
    refused = CliRunner().invoke(main, ["train", "average", "--bundle", str(start), "--bundle", str(start),
                                        "--out", str(taken)])
    assert refused.exit_code != 0 and "is not a bundle" in refused.output and taken.is_dir()
    single = CliRunner().invoke(main, ["train", "average", "--bundle", str(start), "--out", str(tmp_path / "one")])
    assert single.exit_code == 1
    assert single.output.strip().splitlines()[-1] == "mixlm: error: averaging needs at least two bundles"
