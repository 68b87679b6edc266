"""The error model: every expected error is a MixlmError carrying its exit code; one handler maps them."""

import click
import pytest
from click.testing import CliRunner

from mixlm.cli import main
from mixlm.devbroker.broker import BrokerError
from mixlm.encoders.base_reference import BaseMismatchError
from mixlm.encoders.pretrained import FetchError
from mixlm.errors import CommandGroup, user_errors
from mixlm.pipelines.produce import ProduceError
from mixlm.ranker.client import EncoderMismatchError
from mixlm.ranker.http_client import RequestRejected, ServerBusyError, ServerError
from mixlm.schemas.errors import (
    EXIT_CORRUPT,
    EXIT_ERROR,
    EXIT_NO_STORE,
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CorruptRecordError,
    InputError,
    JobCancelled,
    MixlmError,
    PathNotFoundError,
    UnavailableError,
    ValidationError,
)
from mixlm.store.cli import main as store_main
from mixlm.store.errors import (
    CorruptItemError,
    EncoderNotFoundError,
    JobNotFoundError,
    StoreCorruptError,
    StoreError,
    StoreNotFoundError,
)
from mixlm.training.evaluation import SplitLeakError
from mixlm.training.pseudo_queries import EvaluationCorpusError

CODES = [
    (InputError, EXIT_ERROR), (ValidationError, EXIT_ERROR), (PathNotFoundError, EXIT_NOT_FOUND),
    (CorruptRecordError, EXIT_CORRUPT), (UnavailableError, EXIT_UNAVAILABLE),
    (StoreError, EXIT_ERROR), (StoreNotFoundError, EXIT_NO_STORE), (JobNotFoundError, EXIT_NOT_FOUND),
    (EncoderNotFoundError, EXIT_NOT_FOUND), (StoreCorruptError, EXIT_CORRUPT), (CorruptItemError, EXIT_CORRUPT),
    (EncoderMismatchError, EXIT_ERROR), (BrokerError, EXIT_ERROR), (ProduceError, EXIT_UNAVAILABLE),
    (FetchError, EXIT_ERROR), (BaseMismatchError, EXIT_ERROR), (SplitLeakError, EXIT_ERROR),
    (EvaluationCorpusError, EXIT_ERROR), (ServerError, EXIT_UNAVAILABLE), (ServerBusyError, EXIT_UNAVAILABLE),
    (RequestRejected, EXIT_ERROR),
]


@pytest.mark.parametrize(("cls", "code"), CODES, ids=[cls.__name__ for cls, _ in CODES])
def test_every_expected_error_is_a_mixlm_error_with_its_exit_code(cls, code):
    assert issubclass(cls, MixlmError) and cls.exit_code == code


def test_the_builtin_bases_stay_for_callers_that_catch_them():
    assert issubclass(InputError, ValueError) and issubclass(CorruptRecordError, ValueError)
    assert issubclass(UnavailableError, RuntimeError) and issubclass(PathNotFoundError, FileNotFoundError)
    assert JobCancelled(15, "cancelled by SIGTERM").exit_code == 143
    assert not issubclass(JobCancelled, Exception)  # no `except Exception` on the way up swallows it


def _command(exc: BaseException) -> click.Command:
    @click.command(name="probe")
    @user_errors
    def probe() -> None:
        raise exc

    return probe


@pytest.mark.parametrize("exc", [JobNotFoundError("bf-1", "/s"), StoreCorruptError("damaged"), JobCancelled(2, "x")])
def test_the_handler_maps_by_exit_code_in_one_line(exc):
    result = CliRunner().invoke(_command(exc))
    assert result.exit_code == exc.exit_code and result.stderr == f"probe: error: {exc}\n"


@pytest.mark.parametrize("exc", [KeyError("encoder_id"), ValueError("bug"), FileNotFoundError("bug.txt")])
def test_a_bug_keeps_its_traceback(exc):
    result = CliRunner().invoke(_command(exc))
    assert result.exception is exc and "error:" not in result.stderr


@pytest.mark.parametrize("args", [["nosuch"], ["rank", "--no-such-option"], ["eval", "--max-queries", "abc"],
                                  ["bundle", "show"], ["kafka", "status", "-o", "xml"]])
def test_usage_errors_of_mixlm_have_their_own_exit_code(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert "Usage:" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("args", [["nosuch"], ["jobs", "--limit", "abc"], ["get", "bf-1", "-o", "xml"], ["get"],
                                  ["index", "build", "--nope"], ["--nope", "jobs"]])
def test_usage_errors_of_mixlm_store_have_their_own_exit_code(tmp_path, args):
    result = CliRunner().invoke(store_main, ["--store", str(tmp_path / "store"), *args])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "Usage:" in result.stderr


def test_help_and_version_still_exit_0():
    for cli in (main, store_main):
        assert CliRunner().invoke(cli, ["--help"]).exit_code == 0
        assert CliRunner().invoke(cli, ["--version"]).exit_code == 0
    assert isinstance(main, CommandGroup) and isinstance(store_main, CommandGroup)
