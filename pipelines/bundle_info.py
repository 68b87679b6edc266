"""What the pipelines need to know of a model bundle without loading its models."""

from __future__ import annotations

import json
from pathlib import Path

from mixlm.schemas import check_encoder_id
from mixlm.store.errors import StoreError


def bundle_encoder_id(bundle_dir: str) -> str:
    config = Path(bundle_dir) / "mixlm.json"
    if not config.is_file():
        raise FileNotFoundError(
            f"{bundle_dir} is not a model bundle (no mixlm.json); make one with 'mixlm bundle init'")
    try:
        return check_encoder_id(json.loads(config.read_text())["encoder_id"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise StoreError(f"{config} has no valid encoder_id ({exc})") from None
