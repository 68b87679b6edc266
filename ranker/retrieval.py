"""First-stage retrieval over item text: BM25. The vector first stage, FAISS over the retrieval
vectors, belongs to the store (``mixlm.store.index``); both answer with ``Hit``s."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mixlm.store.index import Hit


class BM25Index:
    """BM25 (bm25s) over item texts held in memory: the lexical first stage."""

    def __init__(self, ids: Sequence[str], texts: Sequence[str]):
        import bm25s

        self.ids = list(ids)
        self.row = {item_id: row for row, item_id in enumerate(self.ids)}
        self.retriever = bm25s.BM25()
        self.retriever.index(bm25s.tokenize(list(texts), stopwords="en", show_progress=False), show_progress=False)

    def search(self, query: str, k: int) -> list[Hit]:
        import bm25s

        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
        rows, scores = self.retriever.retrieve(tokens, k=min(k, len(self.ids)), show_progress=False)
        return [Hit(self.ids[row], float(score)) for row, score in zip(rows[0], scores[0], strict=True)
                if score > 0]

    def scores(self, query: str, ids: Sequence[str]) -> np.ndarray:
        """The BM25 score of each of ``ids`` (indexed items) for ``query``; 0 where no term is shared."""
        import bm25s

        terms = bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)[0]
        if not terms:
            return np.zeros(len(ids))
        every = self.retriever.get_scores(terms)
        return np.array([every[self.row[item_id]] for item_id in ids], dtype=np.float64)
