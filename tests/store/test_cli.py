"""Every mixlm-store command through click's CliRunner, error paths included."""

import json

import click
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from mixlm.cli import main as mixlm_main
from mixlm.schemas import EmbeddingRecord
from mixlm.schemas.job_manifest import MANIFEST_KEYS
from mixlm.store import EmbeddingStore
from mixlm.store.cli import main
from mixlm.store.environment import open_environment
from mixlm.store.online import record_key
from tests.factories import make_record

ENCODER = "enc-cli"


def _record(item_id: str, version: int = 1) -> EmbeddingRecord:
    return make_record(item_id, version, encoder_id=ENCODER)


@pytest.fixture()
def store_dir(tmp_path):
    root = tmp_path / "store"
    store = EmbeddingStore.open(root, create=True)
    job = store.jobs.create("backfill", ENCODER, params={"input": "catalog.jsonl"})
    store.put_many([_record(f"item-{i}") for i in range(5)], job_id=job.job_id, counts={"read": 6})
    store.put_many([EmbeddingRecord.tombstone("item-4", 2, ENCODER)], job_id=job.job_id)
    store.jobs.finish(job.job_id)
    return root


def invoke(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def _job_id(store_dir) -> str:
    return EmbeddingStore.open(store_dir).jobs.list()[0].job_id


def assert_one_line_error(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mixlm-store: error: ")
    assert "Traceback" not in result.output + result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def _all_commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        yield prefix + (name,)
        if isinstance(command, click.Group):
            yield from _all_commands(command, prefix + (name,))


@pytest.mark.parametrize("cli", [main, mixlm_main], ids=["mixlm-store", "mixlm"])
def test_every_command_has_help(cli):
    runner = CliRunner()
    paths = [()] + list(_all_commands(cli))
    assert len(paths) > 1
    for path in paths:
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output


def test_store_goes_before_or_after_the_command(store_dir, tmp_path):
    job_id = _job_id(store_dir)
    before = invoke("--store", store_dir, "get", job_id, "-o", "json")
    after = invoke("get", job_id, "--store", store_dir, "-o", "json")
    assert before.exit_code == after.exit_code == 0, after.output
    assert json.loads(after.stdout) == json.loads(before.stdout)
    # after the command it wins over the group's (and over $MIXLM_STORE); commands deeper down take it too
    moved = invoke("--store", tmp_path / "elsewhere", "jobs", "-o", "json", "--store", store_dir,
                   env={"MIXLM_STORE": str(tmp_path / "env")})
    assert moved.exit_code == 0 and json.loads(moved.stdout)[0]["job_id"] == job_id
    assert invoke("stats", "-o", "json", env={"MIXLM_STORE": str(store_dir)}).exit_code == 0
    assert_one_line_error(invoke("index", "build", "--store", tmp_path / "none"), 3, "does not exist")


def test_get_table_json_and_yaml(store_dir):
    job_id = _job_id(store_dir)
    table = invoke("--store", store_dir, "get", job_id)
    assert table.exit_code == 0
    assert job_id in table.output and "counts.written" in table.output

    data = json.loads(invoke("--store", store_dir, "get", job_id, "--output", "json").stdout)
    assert tuple(data) == MANIFEST_KEYS
    assert data["status"] == "succeeded"
    assert data["counts"] == {"read": 6, "encoded": 0, "skipped_unchanged": 0, "written": 5, "deleted": 1,
                              "stale": 0, "dead_lettered": 0, "corrupt_replaced": 0}
    assert yaml.safe_load(invoke("--store", store_dir, "get", job_id, "-o", "yaml").stdout) == data


def test_get_unknown_job_exits_2_and_suggests_jobs(store_dir):
    result = invoke("--store", store_dir, "get", "bf-20990101T000000Z-dead")
    assert_one_line_error(result, 2, "bf-20990101T000000Z-dead", "mixlm-store jobs")


def test_store_env_var_is_used(store_dir):
    result = invoke("get", _job_id(store_dir), "-o", "json", env={"MIXLM_STORE": str(store_dir)})
    assert result.exit_code == 0
    assert json.loads(result.stdout)["kind"] == "backfill"


@pytest.mark.parametrize("command", [["jobs"], ["stats"], ["get", "x"], ["item", "x"], ["export", "out"],
                                     ["promote", ENCODER]])
def test_missing_store_and_non_store_exit_3(tmp_path, command):
    missing = invoke("--store", tmp_path / "nope", *command)
    assert_one_line_error(missing, 3, "does not exist")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("not a store")
    not_store = invoke("--store", tmp_path / "plain", *command)
    assert_one_line_error(not_store, 3, "is not a mixlm store")
    assert not (tmp_path / "plain" / "lmdb").exists()


def test_jobs_lists_newest_first(store_dir):
    store = EmbeddingStore.open(store_dir)
    newer = store.jobs.create("stream", ENCODER)
    result = invoke("--store", store_dir, "jobs", "-o", "json")
    ids = [job["job_id"] for job in json.loads(result.stdout)]
    assert ids[0] == newer.job_id and len(ids) == 2
    table = invoke("--store", store_dir, "jobs")
    assert table.output.index(newer.job_id) < table.output.index(ids[1])
    assert len(json.loads(invoke("--store", store_dir, "jobs", "--limit", "1", "-o", "json").stdout)) == 1


def test_item_shows_header_not_floats_unless_asked(store_dir):
    plain = json.loads(invoke("--store", store_dir, "item", "item-1", "--encoder", ENCODER, "-o", "json").stdout)
    assert plain["item_version"] == 1 and plain["n_tokens"] == 1 and plain["dim"] == 8
    assert "vectors" not in plain
    expected = _record("item-1").vectors
    assert plain["vector_norms"][0] == pytest.approx(float(np.linalg.norm(expected)), rel=1e-5)
    with_vectors = json.loads(
        invoke("--store", store_dir, "item", "item-1", "--encoder", ENCODER, "--vectors", "-o", "json").stdout)
    np.testing.assert_allclose(with_vectors["vectors"], expected, atol=1e-6)
    deleted = json.loads(invoke("--store", store_dir, "item", "item-4", "--encoder", ENCODER, "-o", "json").stdout)
    assert deleted["deleted"] is True and deleted["item_version"] == 2


def test_item_shows_the_display_title(tmp_path):
    store = EmbeddingStore.open(tmp_path / "store", create=True)
    store.put_many([make_record("doc-1", encoder_id=ENCODER, title="Vitamin D and fractures — a meta-analysis")])
    table = invoke("--store", tmp_path / "store", "item", "doc-1")  # the store's only encoder: no --encoder
    assert table.exit_code == 0, table.output
    assert "title          Vitamin D and fractures — a meta-analysis" in table.stdout
    data = json.loads(invoke("--store", tmp_path / "store", "item", "doc-1", "-o", "json").stdout)
    assert data["title"] == "Vitamin D and fractures — a meta-analysis" and data["encoder_id"] == ENCODER


def test_item_errors(store_dir):
    # no active encoder, but one encoder in the store: that one
    assert json.loads(invoke("--store", store_dir, "item", "item-1", "-o", "json").stdout)["encoder_id"] == ENCODER
    EmbeddingStore.open(store_dir).put_many([make_record("item-1", encoder_id="enc-other")])
    assert_one_line_error(invoke("--store", store_dir, "item", "item-1"), 2, "no active encoder", ENCODER,
                          "enc-other")
    assert_one_line_error(invoke("--store", store_dir, "item", "ghost", "--encoder", ENCODER), 2, "'ghost'",
                          "not found")
    assert_one_line_error(invoke("--store", store_dir, "item", "item-1", "--encoder", "bogus"), 2,
                          "unknown encoder 'bogus'", f"encoders in store: {ENCODER}, enc-other")
    assert_one_line_error(invoke("--store", store_dir, "item", "x", "--encoder", "bad id!"), 1, "encoder_id")


def test_corrupt_record_exits_4_naming_the_item(store_dir):
    environment = open_environment(store_dir / "lmdb")  # the process's one handle on this store
    with environment.env.begin(write=True, db=environment.dbs["records"]) as txn:
        value = bytearray(txn.get(record_key(ENCODER, "item-2")))
        value[-3] ^= 0xFF
        txn.put(record_key(ENCODER, "item-2"), bytes(value))
    result = invoke("--store", store_dir, "item", "item-2", "--encoder", ENCODER)
    assert_one_line_error(result, 4, "item-2", "checksum")


def test_stats(store_dir):
    data = json.loads(invoke("--store", store_dir, "stats", "-o", "json").stdout)
    assert data["jobs"] == 1 and data["active_encoder"] is None
    assert data["encoders"] == [{"encoder_id": ENCODER, "live": 4, "deleted": 1, "n_tokens": 1, "dim": 8,
                                 "dtype": "float32", "value_bytes": data["encoders"][0]["value_bytes"]}]
    assert ENCODER in invoke("--store", store_dir, "stats").output


def test_promote_then_item_uses_active_encoder(store_dir):
    result = invoke("--store", store_dir, "promote", ENCODER)
    assert result.exit_code == 0 and "was none" in result.output
    assert json.loads(invoke("--store", store_dir, "item", "item-0", "-o", "json").stdout)["item_id"] == "item-0"
    assert_one_line_error(invoke("--store", store_dir, "promote", "enc-unknown"), 2, "enc-unknown")


def test_export_then_load_into_new_store(store_dir, tmp_path):
    invoke("--store", store_dir, "promote", ENCODER)
    exported = invoke("--store", store_dir, "export", tmp_path / "snap", "--dtype", "float16")
    assert exported.exit_code == 0, exported.output
    assert exported.output.strip().endswith(".parquet")
    copy = tmp_path / "copy"
    loaded = invoke("--store", copy, "load", tmp_path / "snap", "-o", "json")
    assert loaded.exit_code == 0, loaded.output
    manifest = json.loads(loaded.stdout)
    assert manifest["kind"] == "load" and manifest["status"] == "succeeded"
    assert manifest["counts"]["read"] == 5 and manifest["counts"]["written"] == 4 and manifest["counts"]["deleted"] == 1
    original = EmbeddingStore.open(store_dir).get_many(ENCODER, [f"item-{i}" for i in range(5)])
    copied = EmbeddingStore.open(copy).get_many(ENCODER, [f"item-{i}" for i in range(5)])
    assert copied.missing == ["item-4"] and copied.vectors.dtype == np.float16
    np.testing.assert_allclose(copied.vectors, original.vectors, atol=2e-3, rtol=1e-3)


def test_load_errors(tmp_path):
    assert_one_line_error(invoke("--store", tmp_path / "s", "load", tmp_path / "none"), 2, "does not exist")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(invoke("--store", tmp_path / "s", "load", tmp_path / "empty"), 1, "no snapshot part files")


def test_dead_letters_lists_reason_source_and_raw(store_dir):
    from mixlm.schemas.dead_letter import DeadLetter

    store = EmbeddingStore.open(store_dir)
    job = store.jobs.create("stream", ENCODER)
    store.put_many([], job_id=job.job_id, counts={"read": 2}, dead_letters=[
        DeadLetter("version: must be an integer >= 0, got '12a'", b'{"version": "12a"}', "items/0@7"),
        DeadLetter("value: is not valid UTF-8", b"\xff\xfe", "items/1@3")])
    letters = json.loads(invoke("--store", store_dir, "dead-letters", job.job_id, "-o", "json").stdout)
    assert [letter["source"] for letter in letters] == ["items/0@7", "items/1@3"]
    assert letters[0]["raw"] == '{"version": "12a"}' and letters[1]["raw_base64"] == "//4="
    assert EmbeddingStore.open(store_dir).jobs.get(job.job_id).counts.dead_lettered == 2
    table = invoke("--store", store_dir, "dead-letters", job.job_id).stdout
    assert "got '12a'" in table and "items/1@3" in table
    backfill_id = next(j.job_id for j in EmbeddingStore.open(store_dir).jobs.list() if j.kind == "backfill")
    assert "no dead letters" in invoke("--store", store_dir, "dead-letters", backfill_id).stdout
    assert_one_line_error(invoke("--store", store_dir, "dead-letters", "st-nope"), 2, "st-nope")
