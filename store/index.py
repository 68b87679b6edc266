"""The store's first-stage index: FAISS over one encoder's retrieval vectors.

Exact inner product over L2-normalised vectors (cosine), kept inside the store as
``indexes/<encoder_id>/`` (``faiss.index`` in FAISS's own binary format and ``ids.json``); it is
rebuilt from LMDB with ``mixlm-store index build``. No torch here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixlm.schemas.timefmt import format_rfc3339, utc_now
from mixlm.store.errors import EncoderNotFoundError, StoreError
from mixlm.store.online import EmbeddingStore


@dataclass(frozen=True)
class Hit:
    item_id: str
    score: float


def index_dir(store: EmbeddingStore, encoder_id: str) -> Path:
    return store.root / "indexes" / encoder_id


def build_vector_index(store: EmbeddingStore, encoder_id: str) -> dict:
    """Index every live record of ``encoder_id`` that has a retrieval vector; returns its summary."""
    import faiss

    ids: list[str] = []
    vectors: list[np.ndarray] = []
    for record in store.iter_records(encoder_id):
        if record.retrieval_vector is not None:
            ids.append(record.item_id)
            vectors.append(record.retrieval_vector.astype(np.float32))
    if not ids:
        raise EncoderNotFoundError(f"encoder {encoder_id!r} has no records with retrieval vectors in {store.root}")
    matrix = np.stack(vectors)
    faiss.normalize_L2(matrix)
    index = faiss.IndexFlatIP(matrix.shape[1])
    index.add(matrix)
    folder = index_dir(store, encoder_id)
    folder.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(folder / "faiss.index.tmp"))
    (folder / "faiss.index.tmp").replace(folder / "faiss.index")
    summary = {"encoder_id": encoder_id, "items": len(ids), "dim": int(matrix.shape[1]),
               "built_at": format_rfc3339(utc_now())}
    (folder / "ids.json").write_text(json.dumps({**summary, "ids": ids}))
    return {**summary, "path": str(folder)}


class VectorIndex:
    def __init__(self, index, ids: Sequence[str]):
        self.index = index
        self.ids = list(ids)

    @classmethod
    def load(cls, store: EmbeddingStore, encoder_id: str) -> VectorIndex:
        import faiss

        folder = index_dir(store, encoder_id)
        if not (folder / "faiss.index").is_file():
            raise StoreError(f"no FAISS index for encoder {encoder_id} in {store.root}; "
                             "build one with 'mixlm-store index build'")
        return cls(faiss.read_index(str(folder / "faiss.index")), json.loads((folder / "ids.json").read_text())["ids"])

    def search(self, query_vector: np.ndarray, k: int) -> list[Hit]:
        import faiss

        query = np.ascontiguousarray(query_vector, dtype=np.float32).reshape(1, -1)
        faiss.normalize_L2(query)
        scores, rows = self.index.search(query, min(k, len(self.ids)))
        return [Hit(self.ids[row], float(score)) for row, score in zip(rows[0], scores[0], strict=True) if row >= 0]
