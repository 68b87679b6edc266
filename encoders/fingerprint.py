"""``encoder_id``: a fingerprint of everything that changes an encoder's output.

Weights and tokenizer files (by digest), pooling, T_S, max length, projection (kind and
weights) and the item template. Two encoders that can produce different vectors never share
an id; the same bundle always gets the same id.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mixlm.encoders.config import BundleConfig
from mixlm.encoders.pretrained import directory_digests, file_sha256

PROJECTION_FILE = "projection.safetensors"


def encoder_fingerprint(config: BundleConfig, encoder_dir: Path, bundle_dir: Path) -> str:
    projection = bundle_dir / PROJECTION_FILE
    material = {
        "encoder_files": directory_digests(encoder_dir),
        "encoder_kind": config.encoder.kind,
        "pooling": config.pooling,
        "n_tokens": config.n_tokens,
        "max_length": config.max_length,
        "projection": config.projection,
        "projection_weights": file_sha256(projection) if projection.exists() else None,
        "out_dim": config.ranker.hidden_size,
        "retrieval_pooling": config.retrieval_pooling,
        "item_template": config.item_template,
    }
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    return f"enc-{digest[:12]}"
