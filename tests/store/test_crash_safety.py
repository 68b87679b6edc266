"""A writer process killed with SIGKILL mid-write leaves every committed batch intact."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mixlm.schemas import EmbeddingRecord
from mixlm.schemas.lmdb_value import decode_header
from mixlm.store import EmbeddingStore
from mixlm.store.environment import open_environment
from mixlm.store.online import record_key

BATCH = 150
N_TOKENS, DIM = 2, 64

# Self-contained: the child imports only the installed package. Every vector is derived from
# (batch, n), so the parent can recompute what each record must hold.
WRITER = f"""
import sys
import numpy as np
from mixlm.schemas import EmbeddingRecord
from mixlm.store import EmbeddingStore

BATCH, N_TOKENS, DIM = {BATCH}, {N_TOKENS}, {DIM}

def vectors(batch, n):
    return np.arange(N_TOKENS * DIM, dtype=np.float32).reshape(N_TOKENS, DIM) + np.float32(batch * BATCH + n)

store = EmbeddingStore.open(sys.argv[1], create=True, map_size=1 << 20)
job = store.jobs.create("backfill", "enc-a")
print("job", job.job_id, flush=True)
batch = 0
while True:
    records = [EmbeddingRecord(f"b{{batch}}-{{n}}", batch + 1, "enc-a", "", vectors(batch, n), job_id=job.job_id)
               for n in range(BATCH)]
    store.put_many(records, job_id=job.job_id, counts={{"read": BATCH}})
    print(batch, flush=True)
    batch += 1
"""


def expected_vectors(batch: int, n: int) -> np.ndarray:
    return np.arange(N_TOKENS * DIM, dtype=np.float32).reshape(N_TOKENS, DIM) + np.float32(batch * BATCH + n)


def batch_ids(batch: int) -> list[str]:
    return [f"b{batch}-{n}" for n in range(BATCH)]


def run_and_kill(tmp_path, root, min_batches: int, delay: float) -> tuple[str, int]:
    """Start the writer, let it commit ``min_batches`` batches, SIGKILL it; (job id, last reported batch)."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    writer = subprocess.Popen([sys.executable, str(script), str(root)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        first = writer.stdout.readline().split()
        if first[:1] != ["job"]:
            writer.wait(10)
            pytest.fail(f"writer failed to start: {writer.stderr.read()}")
        job_id = first[1]
        committed = -1
        deadline = time.monotonic() + 60
        while committed < min_batches - 1 and time.monotonic() < deadline:
            line = writer.stdout.readline()
            assert line, f"writer exited early: {writer.stderr.read()}"
            committed = int(line)
        time.sleep(delay)  # land the kill somewhere inside a later batch
        assert writer.poll() is None, "the writer must still be writing when it is killed"
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
        # Batches committed between the last line read and the kill may still be in the pipe.
        for line in writer.stdout.read().splitlines():
            committed = int(line)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert committed >= min_batches - 1, "the writer did not get going"
    return job_id, committed


@pytest.mark.parametrize("delay", [0.0, 0.007, 0.023])
def test_sigkill_mid_write_keeps_committed_batches_whole(tmp_path, delay):
    root = tmp_path / "store"
    job_id, committed = run_and_kill(tmp_path, root, min_batches=25, delay=delay)

    # Only now, with the child dead, does this process open the environment.
    store = EmbeddingStore.open(root)
    assert store.stats()["used_bytes"] > 1 << 20  # the child outgrew its 1 MiB map while writing
    for batch in range(committed + 1):
        ids = batch_ids(batch)
        lookup = store.get_many("enc-a", ids)  # verifies each value's checksum
        assert not lookup.missing, f"batch {batch} lost records: {lookup.missing[:3]}"
        assert lookup.item_ids == ids
        expected = np.stack([expected_vectors(batch, n) for n in range(BATCH)])
        np.testing.assert_array_equal(lookup.vectors, expected, err_msg=f"batch {batch}")

    # Nothing half-written: a batch after the last reported one is whole (committed, not yet
    # reported) or absent; at most one such batch can exist.
    batch = committed + 1
    while True:
        present = len(store.get_many("enc-a", batch_ids(batch)).item_ids)
        assert present in (0, BATCH), f"batch {batch} is partly visible ({present} of {BATCH})"
        if present == 0:
            break
        batch += 1
    assert batch - (committed + 1) <= 1
    total = batch * BATCH

    # Every stored value decodes in full and passes its checksum; no stray records.
    records = list(store.iter_records("enc-a", include_deleted=True))
    assert len(records) == total
    for record in records:
        b, n = (int(part) for part in record.item_id[1:].split("-"))
        assert record.item_version == b + 1 and record.job_id == job_id
        np.testing.assert_array_equal(record.vectors, expected_vectors(b, n))
    environment = open_environment(root / "lmdb")
    with environment.env.begin(db=environment.dbs["records"]) as txn:
        raw_values = 0
        for key, value in txn.cursor():
            decode_header(value, bytes(key))  # raises on a torn or damaged value
            raw_values += 1
        assert raw_values == total
        assert txn.get(record_key("enc-a", f"b{batch}-0")) is None

    # The job's counts committed in the same transactions as the records.
    counts = store.jobs.get(job_id).counts
    assert counts.written == total and counts.read == total and counts.stale == 0

    # The store stays writable after the crash (stale reader slots and the writer lock are recovered).
    replay = store.put_many(records[:BATCH] + [EmbeddingRecord("after-crash", 1, "enc-a", "", expected_vectors(0, 0))])
    assert (replay.stale, replay.written) == (BATCH, 1)
    assert store.get_many("enc-a", ["after-crash"]).item_ids == ["after-crash"]
