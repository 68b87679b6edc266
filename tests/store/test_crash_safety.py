"""A writer process killed with SIGKILL mid-write leaves every committed batch intact."""

import os
import signal
import subprocess
import sys
import time

import numpy as np

from mixlm.store import EmbeddingStore
from tests.factories import vectors_for

BATCH = 200

WRITER = f"""
import sys
from mixlm.store import EmbeddingStore
from tests.factories import make_record

store = EmbeddingStore.open(sys.argv[1], create=True, map_size=1 << 20)
batch = 0
while True:
    store.put_many([make_record(f"b{{batch}}-{{n}}", 1, dim=64) for n in range({BATCH})])
    print(batch, flush=True)
    batch += 1
"""


def test_sigkill_mid_write_keeps_committed_batches_whole(tmp_path):
    root = tmp_path / "store"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], stdout=subprocess.PIPE, text=True,
                              cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": os.getcwd()})
    committed = -1
    deadline = time.monotonic() + 60
    while committed < 30 and time.monotonic() < deadline:
        committed = int(writer.stdout.readline())
    time.sleep(0.05)  # land the kill inside a later transaction
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert committed >= 30, "the writer did not get going"

    store = EmbeddingStore.open(root)
    for batch in range(committed + 1):
        ids = [f"b{batch}-{n}" for n in range(BATCH)]
        lookup = store.get_many("enc-a", ids)
        assert not lookup.missing, f"batch {batch} lost records"
        for row in (0, BATCH - 1):
            np.testing.assert_array_equal(lookup.vectors[row], vectors_for(ids[row], 1, dim=64))
    # Nothing half-written: every later batch is either whole or absent.
    batch = committed + 1
    while True:
        present = len(store.get_many("enc-a", [f"b{batch}-{n}" for n in range(BATCH)]).item_ids)
        assert present in (0, BATCH), f"batch {batch} is partly visible ({present} of {BATCH})"
        if present == 0:
            break
        batch += 1
    # Every stored value decodes and passes its checksum.
    assert sum(1 for _ in store.iter_records("enc-a")) == batch * BATCH
