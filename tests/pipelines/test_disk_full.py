"""Writing to a full disk: one error line, exit 5, a failed manifest saying why, the data consistent.

The disk is real: a small tmpfs mounted in a user+mount namespace, or, where mounting is
impossible, the kernel's file size limit (RLIMIT_FSIZE) in the child.
"""

import json
import resource
import shutil
import signal
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from mixlm.store import EmbeddingStore
from tests.factories import make_record

MIXLM_CLI = [sys.executable, "-c", "from mixlm.cli import main; main()"]
STORE_CLI = [sys.executable, "-c", "from mixlm.store.cli import main; main()"]
DISKS = ["tmpfs", "file-size-limit"]
# Mount a tmpfs of $1 bytes on $2, run the command, copy what it wrote to $3 (the tmpfs goes with the namespace).
_ON_TMPFS = ('mount -t tmpfs -o size="$1" tmpfs "$2" || exit 99; size=$1 disk=$2 copy=$3; shift 3; "$@"; rc=$?; '
             'cp -a "$disk/." "$copy"; exit $rc')


def _run_on_small_disk(disk: str, size: int, tmp_path, command):
    """Run ``command(folder)`` with ``folder`` on a disk of ``size`` bytes; the result and what the disk holds after."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if disk == "tmpfs":
        if not (shutil.which("unshare") and subprocess.run(["unshare", "-rm", "true"]).returncode == 0):
            pytest.skip("no user+mount namespace (unshare -rm) to mount a small tmpfs in")
        after = tmp_path / "disk-after"
        after.mkdir()
        wrapped = ["unshare", "-rm", "sh", "-c", _ON_TMPFS, "sh", size, folder, after, *command(folder)]
        return subprocess.run(list(map(str, wrapped)), capture_output=True, text=True, timeout=600), after

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead

    result = subprocess.run(list(map(str, command(folder))), capture_output=True, text=True, timeout=600,
                            preexec_fn=limit_file_size)
    return result, folder


def _the_one_error_line(result, prog: str) -> str:
    assert result.returncode == 5, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0] == result.stderr.strip().splitlines()[-1], result.stderr[-3000:]
    assert errors[0].startswith(f"{prog}: error: disk full writing "), errors[0]
    return errors[0]


@pytest.mark.parametrize("disk", DISKS)
def test_a_backfill_that_fills_the_disk_fails_in_one_line_with_exit_5(tiny_bundle, tmp_path, disk):
    catalog = tmp_path / "corpus.jsonl"
    with open(catalog, "w") as lines:
        for n in range(4_000):
            lines.write(json.dumps({"_id": f"doc-{n:05d}", "title": f"Title {n}", "text": f"body of {n}"}) + "\n")
    result, after = _run_on_small_disk(disk, 1 << 20, tmp_path, lambda folder: [
        *MIXLM_CLI, "backfill", "--input", catalog, "--format", "beir", "--bundle", tiny_bundle,
        "--store", folder / "store"])
    _the_one_error_line(result, "mixlm")

    store = after / "store"
    jobs = json.loads(subprocess.run([*STORE_CLI, "--store", str(store), "jobs", "-o", "json"], capture_output=True,
                                     text=True, check=True).stdout)
    assert len(jobs) == 1
    manifest = jobs[0]
    assert manifest["status"] == "failed" and len(manifest["errors"]) == 1
    assert manifest["errors"][0].startswith("UnavailableError: disk full writing "), manifest["errors"]
    stats = json.loads(subprocess.run([*STORE_CLI, "--store", str(store), "stats", "-o", "json"],
                                      capture_output=True, text=True, check=True).stdout)
    live = sum(encoder["live"] for encoder in stats["encoders"])
    assert live == manifest["counts"]["written"] < 4_000  # what was counted is what committed


@pytest.mark.parametrize("disk", DISKS)
def test_a_snapshot_that_fills_the_disk_fails_in_one_line_and_leaves_no_partial_file(tmp_path, disk):
    store = EmbeddingStore.open(tmp_path / "store", create=True)
    rng = np.random.default_rng(0)  # distinct vectors: a part too big for the disk even compressed
    store.put_many([replace(make_record(f"item-{n:05d}", encoder_id="enc-full"),
                            vectors=rng.standard_normal((1, 32)).astype("float32")) for n in range(4_000)])
    result, after = _run_on_small_disk(disk, 128 << 10, tmp_path, lambda folder: [
        *STORE_CLI, "--store", tmp_path / "store", "export", folder / "out", "--encoder", "enc-full"])
    line = _the_one_error_line(result, "mixlm-store")
    assert "disk full writing a snapshot to " in line and "/out/encoder=enc-full/job=export-" in line
    assert [path.name for path in after.rglob("*") if path.is_file()] == []  # the half-written part is gone
