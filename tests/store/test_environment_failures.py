"""A damaged LMDB file, a read-only store, ``--store`` naming a file: one line, the documented exit code.

Every case runs the real command line on real files: damaged copies of a real store, a store
on a real read-only filesystem (a read-only bind mount in a user+mount namespace, or, where
that is impossible, a tree made read-only with chmod).
"""

import json
import os
import shutil
import struct
import subprocess
import sys

import pytest
from click.testing import CliRunner

from mixlm.cli import main as mixlm_main
from mixlm.schemas.dead_letter import DeadLetter
from mixlm.store import EmbeddingStore, SnapshotWriter
from mixlm.store.cli import main as store_main
from mixlm.store.environment import open_environment
from tests.factories import make_record

STORE_CLI = [sys.executable, "-c", "from mixlm.store.cli import main; main()"]
MIXLM_CLI = [sys.executable, "-c", "from mixlm.cli import main; main()"]
ENCODER = "enc-env"
N_ITEMS = 300  # several leaf pages: half the file loses some
PAGE_HEADER = struct.Struct("=QHH")  # mp_pgno, mp_pad, mp_flags
P_LEAF = 0x02


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A store with records, a finished job and a dead letter; tests damage copies of it."""
    root = tmp_path_factory.mktemp("pristine") / "store"
    store = EmbeddingStore.open(root, create=True)
    job = store.jobs.create("backfill", ENCODER)
    store.put_many([make_record(f"item-{n:04d}", encoder_id=ENCODER) for n in range(N_ITEMS)], job_id=job.job_id,
                   dead_letters=[DeadLetter("broken json", b"{", "catalog.jsonl:7")])
    store.jobs.finish(job.job_id)
    return root


@pytest.fixture()
def store_copy(pristine, tmp_path):
    """A copy this process never opened: damaging it cannot touch a file mapped here."""
    return shutil.copytree(pristine, tmp_path / "store")


@pytest.fixture(scope="module")
def job_id(pristine) -> str:
    return EmbeddingStore.open(pristine).jobs.list()[0].job_id


def _store_commands(job_id: str, out_dir) -> list[list[str]]:
    """The read commands and the write commands (promote, index build) of mixlm-store."""
    return [["get", job_id], ["jobs"], ["dead-letters", job_id], ["item", "item-0001", "--encoder", ENCODER],
            ["stats"], ["export", str(out_dir), "--encoder", ENCODER], ["promote", ENCODER],
            ["index", "build", "--encoder", ENCODER]]


def run(command, *, wrap=()) -> subprocess.CompletedProcess:
    return subprocess.run([*wrap, *map(str, command)], capture_output=True, text=True, timeout=300)


def assert_one_line_error(result, code: int, *fragments: str, prog: str = "mixlm-store") -> str:
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def _one_line_stderr(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- a damaged data file ------------------------------------------------------------------


def test_a_truncated_data_file_exits_4_for_every_command_instead_of_sigbus(store_copy, job_id, tmp_path):
    data_file = store_copy / "lmdb" / "data.mdb"
    full = data_file.stat().st_size
    half = full // 2 // 4096 * 4096
    os.truncate(data_file, half)
    for command in _store_commands(job_id, tmp_path / "out"):
        result = run([*STORE_CLI, "--store", store_copy, *command])
        assert_one_line_error(result, 4, f"{data_file} is truncated: {half} bytes, its header says at least {full}")
    assert data_file.stat().st_size == half


def test_a_data_file_of_random_bytes_exits_3_and_is_left_alone(store_copy, job_id, tmp_path):
    data_file = store_copy / "lmdb" / "data.mdb"
    garbage = os.urandom(data_file.stat().st_size)
    data_file.write_bytes(garbage)
    for command in _store_commands(job_id, tmp_path / "out"):
        result = run([*STORE_CLI, "--store", store_copy, *command])
        assert_one_line_error(result, 3, f"{data_file} is not an LMDB data file")
    assert data_file.read_bytes() == garbage


@pytest.mark.parametrize("keep", [0, 100], ids=["empty", "shorter-than-a-meta-page"])
def test_an_empty_or_too_short_data_file_is_refused_and_never_written(store_copy, keep):
    data_file, lock_file = store_copy / "lmdb" / "data.mdb", store_copy / "lmdb" / "lock.mdb"
    os.truncate(data_file, keep)
    lock_file.unlink()
    for command in (["jobs"], ["stats"], ["promote", ENCODER]):
        result = run([*STORE_CLI, "--store", store_copy, *command])
        assert_one_line_error(result, 4, f"{data_file} is truncated: {keep} bytes, less than LMDB's two meta pages")
    assert data_file.stat().st_size == keep  # LMDB would have written a new environment into it
    assert not lock_file.exists()


def _meta(data_file):
    """(last page, main DB root page, page size) from the newer of LMDB's two meta pages (mdb.c, 64-bit)."""
    raw = data_file.read_bytes()
    page_size = struct.unpack_from("=I", raw, 40)[0]
    metas = []
    for offset in (0, page_size):
        assert struct.unpack_from("=I", raw, offset + 16)[0] == 0xBEEFC0DE
        main_root, last_page, txnid = struct.unpack_from("=QQQ", raw, offset + 128)
        metas.append((txnid, last_page, main_root))
    _, last_page, main_root = max(metas)
    assert len(raw) == (last_page + 1) * page_size  # the layout read here matches the file
    return last_page, main_root, page_size


def _break_page_header(data_file, page: int, page_size: int) -> None:
    """Overwrite a page's header: no page type any more (neither branch nor leaf)."""
    with open(data_file, "r+b") as file:
        file.seek(page * page_size)
        file.write(PAGE_HEADER.pack(page, 0, 0) + os.urandom(4))


def test_a_broken_main_tree_page_exits_4_for_every_command(store_copy, job_id, tmp_path):
    data_file = store_copy / "lmdb" / "data.mdb"
    _, main_root, page_size = _meta(data_file)
    _break_page_header(data_file, main_root, page_size)
    for command in _store_commands(job_id, tmp_path / "out"):
        result = run([*STORE_CLI, "--store", store_copy, *command])
        assert_one_line_error(result, 4, f"{data_file} is corrupt", "MDB_CORRUPTED")


def _leaf_page_holding(data_file, key: bytes, page_size: int) -> int:
    raw = data_file.read_bytes()
    for page in range(2, len(raw) // page_size):
        content = raw[page * page_size:(page + 1) * page_size]
        if PAGE_HEADER.unpack_from(content)[2] & P_LEAF and key in content:
            return page
    raise AssertionError(f"no leaf page holds {key!r}")


def test_a_broken_record_page_exits_4_on_reads_and_writes_that_reach_it(store_copy, tmp_path):
    data_file = store_copy / "lmdb" / "data.mdb"
    _, _, page_size = _meta(data_file)
    damaged_item = f"item-{N_ITEMS - 1:04d}"
    page = _leaf_page_holding(data_file, f"{ENCODER}\x00{damaged_item}".encode(), page_size)
    assert _leaf_page_holding(data_file, f"{ENCODER}\x00item-0000".encode(), page_size) != page
    _break_page_header(data_file, page, page_size)
    snapshot = tmp_path / "snapshot"
    with SnapshotWriter(snapshot, ENCODER, "bf-20990101T000000Z-0001") as writer:
        writer.write([make_record(damaged_item, 2, encoder_id=ENCODER)])

    healthy = run([*STORE_CLI, "--store", store_copy, "item", "item-0000", "--encoder", ENCODER])
    assert healthy.returncode == 0, healthy.stderr
    read = run([*STORE_CLI, "--store", store_copy, "item", damaged_item, "--encoder", ENCODER])
    assert_one_line_error(read, 4, f"{data_file} is corrupt", "MDB_CORRUPTED")
    write = run([*STORE_CLI, "--store", store_copy, "load", snapshot])  # put_many reads the stored version
    assert_one_line_error(write, 4, f"{data_file} is corrupt", "MDB_CORRUPTED")


# -- a read-only store --------------------------------------------------------------------

_BIND_READ_ONLY = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


def _read_only_mechanism() -> str | None:
    """'mount': a read-only bind mount in a user+mount namespace; 'chmod' when that is impossible
    and chmod binds (not root); None when neither can make the store read-only."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0:
        return "mount"
    return "chmod" if os.geteuid() != 0 else None


@pytest.fixture()
def read_only_store(store_copy, tmp_path):
    """(store, how to run a command on it read-only, what a read command does there)."""
    mechanism = _read_only_mechanism()
    if mechanism is None:
        pytest.skip("no user+mount namespace (unshare -rm) and running as root, so chmod cannot deny writes")
    if mechanism == "mount":
        yield store_copy, ("unshare", "-rm", "sh", "-c", _BIND_READ_ONLY, "sh", str(store_copy)), None
        return
    subprocess.run(["chmod", "-R", "a-w", str(store_copy)], check=True)
    try:
        # Without a writable lock file LMDB cannot register a reader: reads are refused too.
        yield store_copy, (), "permission denied opening the store"
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(store_copy)], check=True)


def test_a_store_on_a_read_only_filesystem_reads_and_refuses_writes_in_one_line(read_only_store, job_id,
                                                                               tiny_bundle, tmp_path):
    store, wrap, read_refusal = read_only_store
    before = {path: path.read_bytes() for path in store.rglob("*") if path.is_file()}
    reads = {
        "get": ["get", job_id, "-o", "json"], "jobs": ["jobs"], "dead-letters": ["dead-letters", job_id],
        "item": ["item", "item-0001", "--encoder", ENCODER], "stats": ["stats", "-o", "json"],
        "export": ["export", tmp_path / "exported", "--encoder", ENCODER],
    }
    for name, command in reads.items():
        result = run([*STORE_CLI, "--store", store, *command], wrap=wrap)
        if read_refusal:
            assert_one_line_error(result, 5, read_refusal)
        else:
            assert result.returncode == 0 and "Traceback" not in result.stderr, (name, result.stderr[-3000:])
    if not read_refusal:
        assert json.loads(run([*STORE_CLI, "--store", store, "get", job_id, "-o", "json"], wrap=wrap).stdout)[
            "job_id"] == job_id
        assert list((tmp_path / "exported").rglob("part-*.parquet"))
    ranked = run([*MIXLM_CLI, "rank", "--bundle", tiny_bundle, "--store", store, "--query", "q", "--items",
                  "item-0001"], wrap=wrap)
    if read_refusal:
        assert_one_line_error(ranked, 5, read_refusal, prog="mixlm")
    else:
        # it read the store: the tiny bundle's encoder is not among the store's, and it says so
        assert_one_line_error(ranked, 1, "has no records in the store", f"which holds encoder {ENCODER}",
                              prog="mixlm")

    refusal = "permission denied opening the store" if read_refusal else f"store {store} is on a read-only filesystem"
    snapshot = tmp_path / "snapshot"
    with SnapshotWriter(snapshot, ENCODER, "bf-20990101T000000Z-0002") as writer:
        writer.write([make_record("item-9999", encoder_id=ENCODER)])
    for command in (["promote", ENCODER], ["index", "build", "--encoder", ENCODER], ["load", snapshot]):
        assert_one_line_error(run([*STORE_CLI, "--store", store, *command], wrap=wrap), 5, refusal)
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text(json.dumps({"_id": "d1", "title": "T", "text": "body"}) + "\n")
    backfill = run([*MIXLM_CLI, "backfill", "--input", catalog, "--format", "beir", "--bundle", tiny_bundle,
                    "--store", store], wrap=wrap)
    assert_one_line_error(backfill, 5, refusal, prog="mixlm")
    inside = store / "a-new-store"  # a store that would have to be created there
    created = run([*STORE_CLI, "--store", inside, "load", snapshot], wrap=wrap)
    assert_one_line_error(created, 5, f"cannot create a store at {inside}")
    assert {path: path.read_bytes() for path in store.rglob("*") if path.is_file()} == before


def test_a_writable_request_replaces_a_cached_read_only_environment(store_copy):
    """LMDB allows one environment per file and process: stats (read-only), then promote, then item."""
    runner = CliRunner()
    stats = runner.invoke(store_main, ["--store", str(store_copy), "stats"])
    assert stats.exit_code == 0, stats.output
    assert open_environment(store_copy / "lmdb", readonly=True).readonly
    promote = runner.invoke(store_main, ["--store", str(store_copy), "promote", ENCODER])
    assert promote.exit_code == 0, promote.output
    writable = open_environment(store_copy / "lmdb", readonly=True)
    assert not writable.readonly, "a cached writable environment serves read-only requests"
    item = runner.invoke(store_main, ["--store", str(store_copy), "item", "item-0001", "-o", "json"])
    assert item.exit_code == 0 and json.loads(item.stdout)["encoder_id"] == ENCODER


# -- --store naming a file ----------------------------------------------------------------


@pytest.mark.parametrize("command", [["jobs"], ["stats"], ["get", "x"], ["export", "out"], ["promote", ENCODER]])
def test_store_option_naming_a_file_exits_3_in_one_line(tmp_path, command):
    a_file = tmp_path / "data.mdb"
    a_file.write_bytes(b"not a directory")
    result = CliRunner().invoke(store_main, ["--store", str(a_file), *command])
    assert result.exit_code == 3, result.output
    assert _one_line_stderr(result) == f"mixlm-store: error: {a_file} is a file, not a store directory"


def test_mixlm_store_options_naming_a_file_exit_3_in_one_line(tiny_bundle, tmp_path):
    a_file = tmp_path / "store.txt"
    a_file.write_text("not a directory")
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text(json.dumps({"_id": "d1", "title": "T", "text": "body"}) + "\n")
    for command in (["backfill", "--input", str(catalog), "--bundle", str(tiny_bundle)],
                    ["rank", "--bundle", str(tiny_bundle), "--query", "q", "--items", "a"]):
        result = CliRunner().invoke(mixlm_main, [*command, "--store", str(a_file)])
        assert result.exit_code == 3, result.output
        assert result.stderr.strip().splitlines()[-1] == f"mixlm: error: {a_file} is a file, not a store directory"
        assert "Traceback" not in result.stderr
