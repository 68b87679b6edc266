"""EmbeddingRecord: the versioned embedding tokens of one item under one encoder."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from mixlm.schemas.errors import ValidationError
from mixlm.schemas.item_event import MAX_ITEM_ID_BYTES, MAX_TITLE_CHARS, MAX_VERSION
from mixlm.schemas.timefmt import format_rfc3339

DTYPES = ("float32", "float16")
# encoder ids are part of LMDB keys and of snapshot paths (encoder=<id>).
ENCODER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def check_encoder_id(encoder_id: str) -> str:
    if not isinstance(encoder_id, str) or not ENCODER_ID_PATTERN.match(encoder_id):
        raise ValidationError(
            "encoder_id",
            f"must be 1-64 characters of letters, digits, '.', '_' or '-', got {encoder_id!r}",
        )
    return encoder_id


def _check_title(title: str) -> None:
    if not isinstance(title, str):
        raise ValidationError("title", f"must be a string, got {type(title).__name__}")
    if len(title) > MAX_TITLE_CHARS:
        raise ValidationError("title", f"is {len(title)} characters, the limit is {MAX_TITLE_CHARS} "
                                       "(display_title cuts it)")
    try:
        title.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError("title", f"holds an unpaired surrogate at index {exc.start}") from None


@dataclass
class EmbeddingRecord:
    """``vectors`` is ``[T_S, dim]``; a tombstone (``deleted``) has no vectors and no title.

    ``title`` is the item's display title (``display_title``: one line, at most ``MAX_TITLE_CHARS``
    characters), shown beside its id; empty for records written before titles were kept.
    """

    item_id: str
    item_version: int
    encoder_id: str
    content_hash: str
    vectors: np.ndarray
    retrieval_vector: np.ndarray | None = None
    source_tokens: int = 0
    truncated: bool = False
    job_id: str = ""
    encoded_at: float = 0.0
    deleted: bool = False
    title: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.item_id, str) or not self.item_id or "\x00" in self.item_id:
            raise ValidationError("item_id", f"must be a non-empty string without NUL, got {self.item_id!r}")
        if len(self.item_id.encode("utf-8")) > MAX_ITEM_ID_BYTES:
            raise ValidationError("item_id", f"is longer than {MAX_ITEM_ID_BYTES} bytes")
        check_encoder_id(self.encoder_id)
        if isinstance(self.item_version, bool) or not isinstance(self.item_version, (int, np.integer)):
            raise ValidationError("item_version", f"must be an integer, got {self.item_version!r}")
        if not 0 <= int(self.item_version) <= MAX_VERSION:
            raise ValidationError("item_version", f"must be >= 0, got {self.item_version}")
        self.item_version = int(self.item_version)
        if not 0 <= self.source_tokens < 2**32:
            raise ValidationError("source_tokens", f"must be in [0, 2**32), got {self.source_tokens}")
        if self.content_hash and not _HEX64.match(self.content_hash):
            raise ValidationError("content_hash", "must be a lower-case sha256 hex digest")
        _check_title(self.title)
        if self.deleted:
            self.vectors = np.zeros((0, 0), dtype=np.float32)
            self.retrieval_vector = None
            self.title = ""
            return
        vectors = np.asarray(self.vectors)
        if vectors.ndim != 2 or 0 in vectors.shape:
            raise ValidationError("vectors", f"must be a non-empty [T_S, dim] array, got shape {vectors.shape}")
        if vectors.dtype.name not in DTYPES:
            raise ValidationError("vectors", f"dtype must be one of {', '.join(DTYPES)}, got {vectors.dtype}")
        self.vectors = vectors
        if self.retrieval_vector is not None:
            retrieval = np.asarray(self.retrieval_vector, dtype=vectors.dtype)
            if retrieval.ndim != 1 or retrieval.size == 0:
                raise ValidationError("retrieval_vector", f"must be a non-empty 1-D array, got shape {retrieval.shape}")
            self.retrieval_vector = retrieval

    @classmethod
    def tombstone(cls, item_id: str, item_version: int, encoder_id: str, *, job_id: str = "",
                  encoded_at: float = 0.0) -> EmbeddingRecord:
        return cls(item_id, item_version, encoder_id, "", np.zeros((0, 0), np.float32),
                   job_id=job_id, encoded_at=encoded_at, deleted=True)

    @property
    def n_tokens(self) -> int:
        return 0 if self.deleted else int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return 0 if self.deleted else int(self.vectors.shape[1])

    @property
    def dtype(self) -> str:
        return self.vectors.dtype.name

    def summary(self) -> dict[str, Any]:
        """Header fields and vector statistics, without the floats."""
        out: dict[str, Any] = {
            "item_id": self.item_id,
            "item_version": self.item_version,
            "title": self.title,
            "encoder_id": self.encoder_id,
            "deleted": self.deleted,
            "content_hash": self.content_hash,
            "n_tokens": self.n_tokens,
            "dim": self.dim,
            "dtype": None if self.deleted else self.dtype,
            "source_tokens": self.source_tokens,
            "truncated": self.truncated,
            "job_id": self.job_id,
            "encoded_at": format_rfc3339(self.encoded_at) if self.encoded_at else None,
        }
        if not self.deleted:
            norms = np.linalg.norm(self.vectors.astype(np.float32), axis=1)
            out["vector_norms"] = [round(float(n), 6) for n in norms]
            out["retrieval_dim"] = 0 if self.retrieval_vector is None else int(self.retrieval_vector.size)
        return out
