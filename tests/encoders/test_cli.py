import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from mixlm.encoders.cli import bundle, models
from mixlm.schemas.errors import EXIT_USAGE

COMMANDS = [(bundle, []), (bundle, ["init"]), (bundle, ["show"]), (models, []), (models, ["fetch"]),
            (models, ["ls"])]


@pytest.mark.parametrize(("group", "args"), COMMANDS)
def test_every_command_has_help(group, args):
    result = CliRunner().invoke(group, [*args, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_bundle_init_tiny_then_show(tmp_path):
    out = tmp_path / "b"
    result = CliRunner().invoke(bundle, ["init", "--tiny", "--out", str(out), "-o", "json"])
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)
    assert config["encoder_id"] == json.loads((out / "mixlm.json").read_text())["encoder_id"]
    assert "building a tiny bundle" in result.stderr
    shown = CliRunner().invoke(bundle, ["show", str(out)])
    assert shown.exit_code == 0 and config["encoder_id"] in shown.stdout
    again = CliRunner().invoke(bundle, ["init", "--tiny", "--out", str(out)])
    assert again.exit_code == 1 and "not empty" in again.stderr and "Traceback" not in again.output


def test_bundle_init_from_folders_with_options(tiny_bundle, tmp_path):
    result = CliRunner().invoke(bundle, ["init", "--encoder", str(tiny_bundle / "encoder"), "--ranker",
                                         str(tiny_bundle / "ranker"), "--out", str(tmp_path / "k"),
                                         "--n-tokens", "3", "--max-length", "64", "-o", "json"])
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)
    assert config["encoding"]["n_tokens"] == 3 and config["encoding"]["pooling"] == "last_k"


@pytest.mark.parametrize(("args", "code", "message"), [
    (["init", "--out", "OUT"], EXIT_USAGE, "--tiny"),
    (["init", "--out", "OUT", "--tiny", "--encoder", "x"], EXIT_USAGE, "--tiny"),
    (["init", "--out", "OUT", "--encoder", "nope", "--ranker", "nope"], 2, "nope"),
    (["init", "--out", "OUT", "--encoder", "minilm-l6", "--ranker", "smollm2-135m"], 2, "mixlm models fetch"),
    (["init", "--out", "OUT", "--tiny", "--n-tokens", "2", "--pooling", "last"], 1, "needs last_k"),
    (["show", "OUT"], 2, "not a model bundle"),
])
def test_errors_are_one_line_and_an_exit_code(tmp_path, monkeypatch, args, code, message):
    monkeypatch.setenv("MIXLM_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(bundle, [str(tmp_path / "out") if a == "OUT" else a for a in args])
    assert result.exit_code == code, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("bundle: error: ") and message in last and "Traceback" not in result.output


def test_models_ls_and_unknown_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXLM_HOME", str(tmp_path))
    listing = CliRunner().invoke(models, ["ls", "-o", "json"])
    assert listing.exit_code == 0
    rows = json.loads(listing.stdout)
    assert {row["name"] for row in rows} == {"smollm2-135m", "minilm-l6", "qwen2.5-coder-0.5b"}
    assert not any(row["fetched"] for row in rows)
    assert "smollm2-135m" in CliRunner().invoke(models, ["ls"]).stdout
    result = CliRunner().invoke(models, ["fetch", "gpt-9"])
    assert result.exit_code == 2 and "gpt-9" in result.stderr


def test_the_commands_load_without_torch():
    code = ("import sys, mixlm.encoders.cli, mixlm.encoders.config; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
