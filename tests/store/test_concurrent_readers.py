"""Readers in other processes see consistent records while a writer writes and grows the map."""

import multiprocessing
import time
import traceback

import numpy as np

from mixlm.schemas import EmbeddingRecord
from mixlm.store import EmbeddingStore
from mixlm.store.environment import open_environment

ITEMS = [f"item-{n}" for n in range(200)]
ROUNDS = 12
DIM = 32
SMALL_MAP = 1 << 20
N_READERS = 2


def item_vectors(index: int, version: int) -> np.ndarray:
    """Column 0 holds the item's index, every other entry its version: derivable by any reader."""
    vectors = np.full((1, DIM), version, dtype=np.float32)
    vectors[:, 0] = index
    return vectors


def round_records(version: int) -> list[EmbeddingRecord]:
    return [EmbeddingRecord(item_id, version, "enc-a", "", item_vectors(n, version)) for n, item_id in enumerate(ITEMS)]


def _writer(root: str, ready, results) -> None:
    try:
        store = EmbeddingStore.open(root, map_size=SMALL_MAP)
        for event in ready:
            assert event.wait(60), "readers did not start"
        sizes = []
        filler = np.ones((4, 512), np.float32)
        for version in range(2, ROUNDS + 2):
            # Each round rewrites every item at a new version in one transaction, then adds
            # filler under another encoder that forces the map to grow.
            store.put_many(round_records(version))
            store.put_many([EmbeddingRecord(f"fill-{version}-{n}", 1, "fill", "", filler) for n in range(80)])
            sizes.append(open_environment(store.root / "lmdb").map_size())
            time.sleep(0.01)
        results.put(("writer", sizes, None))
    except BaseException:
        results.put(("writer", [], traceback.format_exc()))


def _check(lookup, indices: np.ndarray) -> tuple[int, list[str]]:
    """The version of one lookup; errors when it is not one whole round."""
    errors = []
    if lookup.missing or lookup.item_ids != ITEMS:
        errors.append(f"missing {lookup.missing[:3]}, order ok: {lookup.item_ids == ITEMS}")
        return -1, errors
    vectors = lookup.vectors
    version = int(vectors[0, 0, 1])
    if not np.array_equal(vectors[:, 0, 0], indices):
        errors.append("a vector holds another item's data")
    if not (vectors[:, :, 1:] == version).all():
        errors.append(f"one read transaction mixed versions {sorted(set(vectors[:, :, 1:].ravel().tolist()))[:5]}")
    return version, errors


def _reader(root: str, ready, done, results) -> None:
    reads, full_scans, errors, versions = 0, 0, [], []
    try:
        # A small map of its own: this process must adopt the map the writer grows.
        store = EmbeddingStore.open(root, map_size=SMALL_MAP)
        indices = np.arange(len(ITEMS), dtype=np.float32)
        finishing = False
        while True:
            finishing = done.is_set()
            version, problems = _check(store.get_many("enc-a", ITEMS), indices)
            errors += problems
            if versions and version < versions[-1]:
                errors.append(f"version went back from {versions[-1]} to {version}")
            versions.append(version)
            reads += 1
            if reads == 1:
                ready.set()
            if reads % 10 == 0:
                # A full decode of every record (checksums verified) in one transaction.
                scanned = list(store.iter_records("enc-a"))
                seen = {r.item_version for r in scanned}
                if len(scanned) != len(ITEMS) or len(seen) != 1:
                    errors.append(f"scan saw {len(scanned)} records at versions {sorted(seen)}")
                full_scans += 1
            if finishing or len(errors) > 10:
                break
        map_size = open_environment(store.root / "lmdb").map_size()
        results.put(("reader", (reads, full_scans, sorted(set(versions)), versions[-1], map_size), errors))
    except BaseException:
        ready.set()
        results.put(("reader", (reads, full_scans, [], -1, 0), errors + [traceback.format_exc()]))


def test_readers_stay_consistent_while_the_writer_grows_the_map(tmp_path):
    root = str(tmp_path / "store")
    store = EmbeddingStore.open(root, create=True, map_size=SMALL_MAP)
    store.put_many(round_records(1))
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    ready = [context.Event() for _ in range(N_READERS)]
    done = context.Event()
    readers = [context.Process(target=_reader, args=(root, ready[n], done, results)) for n in range(N_READERS)]
    writer = context.Process(target=_writer, args=(root, ready, results))
    for process in [*readers, writer]:
        process.start()
    try:
        writer.join(120)
        done.set()
        outcomes = [results.get(timeout=120) for _ in range(N_READERS + 1)]
        for process in readers:
            process.join(30)
    finally:
        for process in [*readers, writer]:
            if process.is_alive():
                process.kill()
    assert writer.exitcode == 0 and all(process.exitcode == 0 for process in readers)

    writer_out = [outcome for outcome in outcomes if outcome[0] == "writer"]
    reader_out = [outcome for outcome in outcomes if outcome[0] == "reader"]
    assert len(writer_out) == 1 and len(reader_out) == N_READERS
    _, sizes, failure = writer_out[0]
    assert failure is None, failure
    assert sizes[-1] >= 8 * SMALL_MAP, f"the map grew only to {sizes[-1]} (three doublings expected)"
    assert len(set(sizes)) >= 3, "the map should have grown during the run, not only at the start"

    for _, (reads, full_scans, versions, last, map_size), errors in reader_out:
        assert not errors, errors[:5]
        assert reads >= 50 and full_scans >= 5, (reads, full_scans)
        assert len(versions) >= 3, f"the reader saw too few rounds to prove anything: {versions}"
        assert last == ROUNDS + 1  # its last read came after the writer finished
        assert map_size > SMALL_MAP, "the reader never adopted the grown map"

    # This process still maps the old size; its next read adopts the grown map.
    assert store.get("enc-a", ITEMS[0]).item_version == ROUNDS + 1
    lookup = store.get_many("enc-a", ITEMS)
    np.testing.assert_array_equal(lookup.vectors, np.stack([item_vectors(n, ROUNDS + 1) for n in range(len(ITEMS))]))
    assert open_environment(tmp_path / "store" / "lmdb").map_size() == sizes[-1]
