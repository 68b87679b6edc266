"""Readers in other processes see consistent records while a writer writes and grows the map."""

import multiprocessing

import numpy as np

from mixlm.store import EmbeddingStore
from mixlm.store.environment import open_environment
from tests.factories import make_record, vectors_for

ITEMS = [f"item-{n}" for n in range(300)]
ROUNDS = 12


def _writer(root: str) -> None:
    store = EmbeddingStore.open(root)
    for version in range(2, ROUNDS + 2):
        # Each round rewrites every item under a new version and adds filler that forces growth.
        store.put_many([make_record(i, version, dim=32) for i in ITEMS])
        store.put_many([make_record(f"fill-{version}-{n}", 1, dim=512) for n in range(300)])


def _reader(root: str, results) -> None:
    store = EmbeddingStore.open(root)
    reads, errors, seen_versions = 0, [], set()
    while True:
        lookup = store.get_many("enc-a", ITEMS[::7])
        versions = {store.get("enc-a", ITEMS[0]).item_version}
        for item_id, vectors in zip(lookup.item_ids, lookup.vectors, strict=True):
            record = store.get("enc-a", item_id)
            if record.item_version >= 1 and not any(
                    np.array_equal(vectors, vectors_for(item_id, v, dim=32)) for v in range(1, ROUNDS + 2)):
                errors.append(f"{item_id}: vectors match no version")
        if lookup.missing:
            errors.append(f"missing {lookup.missing[:3]}")
        seen_versions |= versions
        reads += 1
        if max(seen_versions) == ROUNDS + 1 or reads > 20_000:
            break
    results.put((reads, errors, sorted(seen_versions)))


def test_readers_stay_consistent_while_the_writer_grows_the_map(tmp_path):
    root = str(tmp_path / "store")
    store = EmbeddingStore.open(root, create=True, map_size=1 << 20)
    store.put_many([make_record(i, 1, dim=32) for i in ITEMS])
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    readers = [context.Process(target=_reader, args=(root, results)) for _ in range(2)]
    writer = context.Process(target=_writer, args=(root,))
    for process in readers:
        process.start()
    writer.start()
    writer.join(120)
    outcomes = [results.get(timeout=120) for _ in readers]
    for process in readers:
        process.join(30)
    assert writer.exitcode == 0
    for reads, errors, versions in outcomes:
        assert not errors, errors[:5]
        assert reads >= 10
        assert versions[-1] == ROUNDS + 1  # the reader followed the writer to the end
    # This process still maps the old size; its next read adopts the grown map.
    assert store.get("enc-a", ITEMS[0]).item_version == ROUNDS + 1
    assert open_environment(tmp_path / "store" / "lmdb").map_size() >= 4 << 20
