"""``encoder_id``: a short fingerprint of everything that changes an encoder's output.

It covers the bytes of every file in the encoder's model folder (weights, config, tokenizer),
the encoding settings (pooling, T_S, max length, item template), the projection (kind, widths,
weight bytes) and ``FINGERPRINT_VERSION``, bumped whenever this package changes how it turns
text into vectors. Hashing bytes rather than trusting names means two encoders that can
produce different vectors never share an id, and the same files always give the same id.

The compute dtype is not part of it: a bundle run in bfloat16 on a GPU and in float32 on a
CPU writes under one id (the vectors agree to bfloat16 precision).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from mixlm.encoders.config import EncodingConfig, ProjectionConfig
from mixlm.schemas.errors import PathNotFoundError

FINGERPRINT_VERSION = 1
ID_PREFIX = "enc-"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def directory_digests(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory``, keyed by relative path."""
    files = sorted(p for p in Path(directory).rglob("*") if p.is_file())
    if not files:
        raise PathNotFoundError(f"{directory} holds no model files")
    return {path.relative_to(directory).as_posix(): file_sha256(path) for path in files}


def encoder_fingerprint(encoder_dir: Path, encoding: EncodingConfig, projection: ProjectionConfig,
                        projection_file: Path | None) -> str:
    """``enc-`` + 12 hex digits of sha256 (48 bits: collisions are not a practical concern)."""
    material = {
        "version": FINGERPRINT_VERSION,
        "encoder_files": directory_digests(encoder_dir),
        "encoding": asdict(encoding),
        "projection": asdict(projection),
        "projection_weights": file_sha256(projection_file) if projection_file else None,
    }
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    return ID_PREFIX + digest[:12]
