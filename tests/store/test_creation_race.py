"""A store appears whole or not at all: no reader sees a half-created store, and creators may race."""

import multiprocessing

import pytest

from mixlm.store import EmbeddingStore
from mixlm.store.errors import StoreNotFoundError

ROUNDS = 8


def _create(root: str) -> None:
    EmbeddingStore.open(root, create=True)


def test_a_reader_polling_a_store_being_created_never_sees_it_half_made(tmp_path):
    context = multiprocessing.get_context("spawn")
    for round_ in range(ROUNDS):
        root = tmp_path / f"store-{round_}"
        creator = context.Process(target=_create, args=(str(root),))
        creator.start()
        opened = False
        while not opened:
            if (root / "lmdb" / "data.mdb").exists():
                EmbeddingStore.open(root)  # raises "not a mixlm store" if the marker is not there yet
                opened = True
            elif not creator.is_alive():
                creator.join()
                assert creator.exitcode == 0
                assert (root / "lmdb" / "data.mdb").exists()
        creator.join(60)
        assert creator.exitcode == 0


def test_concurrent_creators_end_with_one_store(tmp_path):
    context = multiprocessing.get_context("spawn")
    root = tmp_path / "store"
    creators = [context.Process(target=_create, args=(str(root),)) for _ in range(4)]
    for creator in creators:
        creator.start()
    for creator in creators:
        creator.join(60)
        assert creator.exitcode == 0
    assert EmbeddingStore.open(root).stats()["encoders"] == []
    assert [p.name for p in root.iterdir()] == ["lmdb"]  # no staging folder left behind


def test_an_empty_leftover_lmdb_folder_does_not_block_creation(tmp_path):
    (tmp_path / "store" / "lmdb").mkdir(parents=True)
    with pytest.raises(StoreNotFoundError):
        EmbeddingStore.open(tmp_path / "store")
    EmbeddingStore.open(tmp_path / "store", create=True)
    EmbeddingStore.open(tmp_path / "store")
