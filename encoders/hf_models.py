"""Loading and saving Hugging Face model folders: local files only, weights only as safetensors."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from mixlm.schemas.errors import InputError, PathNotFoundError

# Bidirectional encoders; every other architecture is treated as a decoder (causal LM).
ENCODER_ONLY_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet", "deberta",
                                "deberta-v2", "modernbert", "camembert", "albert"})
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else CUDA when present, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_has_fast_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 matmuls in hardware (AMX or AVX-512 BF16 units).

    Without them bfloat16 is emulated and slower than float32; with them it is 3-4x faster.
    """
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """The given dtype, else ``$MIXLM_DTYPE``, else bfloat16 on CUDA and on CPUs with bfloat16 units,
    float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    dtype = dtype or os.environ.get("MIXLM_DTYPE") or None
    if dtype is not None:
        if dtype not in DTYPES:
            raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype]
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bfloat16()):
        return torch.bfloat16
    return torch.float32


def model_files(model_dir: str | Path) -> Path:
    """Where a model folder's config, tokenizer and base weights are: itself, or the base it references."""
    from mixlm.encoders.base_reference import is_reference, resolve_base

    return resolve_base(model_dir) if is_reference(model_dir) else Path(model_dir)


def read_config(model_dir: str | Path):
    from transformers import AutoConfig

    model_dir = model_files(model_dir)
    if not (Path(model_dir) / "config.json").is_file():
        raise PathNotFoundError(f"{model_dir} is not a model folder (no config.json)")
    return AutoConfig.from_pretrained(str(model_dir), local_files_only=True)


def model_kind(config) -> str:
    return "encoder-only" if config.model_type in ENCODER_ONLY_TYPES else "decoder"


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_files(model_dir)), local_files_only=True)


def load_model(model_dir: str | Path, *, causal_lm: bool, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None, merge_adapter: bool = True, with_adapter: bool = True):
    """The base model (hidden states) or, with ``causal_lm``, the model with its LM head; in eval mode.

    Device and dtype as ``pick_device``/``pick_dtype`` choose them; dtype "auto" keeps the stored one.
    A folder that references a base model (``base_reference``) gets its adapter, if it has one,
    merged in; with ``merge_adapter=False`` the adapter stays separate and trainable (training);
    with ``with_adapter=False`` only the base model loads.
    """
    from transformers import AutoModel, AutoModelForCausalLM

    from mixlm.encoders.base_reference import is_reference
    from mixlm.encoders.lora import apply_adapter, has_adapter

    adapter_dir = Path(model_dir) if is_reference(model_dir) else None
    model_dir = model_files(model_dir)
    if not any(Path(model_dir).glob("*.safetensors")):
        raise PathNotFoundError(f"{model_dir} holds no safetensors weights (pickled weights are never loaded)")
    torch_device = pick_device(device)
    torch_dtype = "auto" if dtype == "auto" else pick_dtype(torch_device, dtype)
    auto = AutoModelForCausalLM if causal_lm else AutoModel
    model = auto.from_pretrained(str(model_dir), dtype=torch_dtype, local_files_only=True, use_safetensors=True)
    if with_adapter and adapter_dir is not None and has_adapter(adapter_dir):
        apply_adapter(model, adapter_dir, merge=merge_adapter)
    return model.to(torch_device).eval()


def copy_model(source: str | Path, target: Path, *, causal_lm: bool, log: Callable[[str], None]) -> None:
    """Load a model folder and save it again (safetensors, stored dtype kept) with its tokenizer.

    Saving through transformers keeps only what loading needs: no pickles, READMEs or ONNX
    exports, and an encoder drops its LM head.
    """
    log(f"copying {source} -> {target}")
    model = load_model(source, causal_lm=causal_lm, device="cpu", dtype="auto")
    model.save_pretrained(str(target), safe_serialization=True)
    load_tokenizer(source).save_pretrained(str(target))
