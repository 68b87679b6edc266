"""The encoder LLM: item text -> T_S embedding tokens, plus model bundles and pretrained weights.

Names are imported on first use, so ``import mixlm.encoders`` (and every ``mixlm --help``)
does not pay for importing torch and transformers.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Bundle": "bundle",
    "init_bundle": "bundle",
    "init_tiny_bundle": "bundle",
    "load_bundle": "bundle",
    "seal_bundle": "bundle",
    "BundleConfig": "config",
    "EncodingConfig": "config",
    "ModelInfo": "config",
    "ProjectionConfig": "config",
    "PromptTemplate": "config",
    "encoder_fingerprint": "fingerprint",
    "EncodedItem": "item_encoder",
    "ItemEncoder": "item_encoder",
    "to_record": "item_encoder",
    "fetch_pretrained": "pretrained",
    "resolve_pretrained": "pretrained",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
