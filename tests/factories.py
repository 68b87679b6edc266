"""Small builders shared by tests."""

import numpy as np

from mixlm.schemas import EmbeddingRecord


def vectors_for(item_id: str, version: int, *, n_tokens: int = 1, dim: int = 8, dtype: str = "float32") -> np.ndarray:
    """Deterministic vectors derived from (item_id, version), so any reader can check what it got."""
    seed = (sum(item_id.encode()) * 1_000_003 + version) % 2**32
    return np.random.default_rng(seed).standard_normal((n_tokens, dim)).astype(dtype)


def make_record(item_id: str, version: int = 1, *, encoder_id: str = "enc-a", n_tokens: int = 1, dim: int = 8,
                dtype: str = "float32", retrieval_dim: int = 0, job_id: str = "bf-test",
                title: str = "") -> EmbeddingRecord:
    retrieval = None
    if retrieval_dim:
        retrieval = np.linspace(-1, 1, retrieval_dim).astype(dtype)
    return EmbeddingRecord(item_id, version, encoder_id, f"{version:064x}",
                           vectors_for(item_id, version, n_tokens=n_tokens, dim=dim, dtype=dtype),
                           retrieval_vector=retrieval, source_tokens=10 * version, truncated=version % 2 == 0,
                           job_id=job_id, encoded_at=1_700_000_000.0 + version, title=title)
