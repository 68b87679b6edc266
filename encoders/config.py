"""``mixlm.json``: the description of a model bundle that pipelines, ranker and training share.

Plain dataclasses and JSON, no torch, so reading a bundle's settings stays cheap.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mixlm.schemas.errors import InputError, PathNotFoundError
from mixlm.schemas.item_event import DEFAULT_ITEM_TEMPLATE, render_item

BUNDLE_FORMAT = 1
CONFIG_NAME = "mixlm.json"
POOLINGS = ("last", "last_k", "mean")
PROJECTIONS = ("identity", "linear", "mlp")
MODEL_KINDS = ("decoder", "encoder-only")


@dataclass(frozen=True)
class ModelInfo:
    """One of the bundle's two models: where it came from, its kind and hidden width."""

    base: str  # the pretrained name or source folder it was built from ("smollm2-135m", "tiny-llama-64")
    kind: str  # "decoder" (causal LM) or "encoder-only" (BERT-like)
    hidden_size: int

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise InputError(f"model kind must be one of {', '.join(MODEL_KINDS)}, got {self.kind!r}")


@dataclass(frozen=True)
class EncodingConfig:
    """Everything besides the model files that decides an item's vectors."""

    pooling: str = "last"
    n_tokens: int = 1  # T_S, embedding tokens per item
    max_length: int = 512  # item tokens kept, special tokens included; the beginning is kept
    item_template: str = DEFAULT_ITEM_TEMPLATE

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise InputError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.n_tokens < 1 or (self.pooling != "last_k" and self.n_tokens != 1):
            raise InputError(f"{self.pooling} pooling gives 1 embedding token; n_tokens={self.n_tokens} needs last_k")
        if self.max_length < self.n_tokens:
            raise InputError(f"max_length {self.max_length} is shorter than n_tokens {self.n_tokens}")
        if "{title}" not in self.item_template or "{text}" not in self.item_template:
            raise InputError(f"item_template must contain {{title}} and {{text}}, got {self.item_template!r}")

    def format_item(self, title: str, text: str) -> str:
        return render_item(title, text, self.item_template)


@dataclass(frozen=True)
class ProjectionConfig:
    kind: str  # identity, linear or mlp
    in_dim: int  # encoder hidden size
    out_dim: int  # ranker hidden size

    def __post_init__(self) -> None:
        if self.kind not in PROJECTIONS:
            raise InputError(f"projection must be one of {', '.join(PROJECTIONS)}, got {self.kind!r}")
        if self.kind == "identity" and self.in_dim != self.out_dim:
            raise InputError(f"identity projection needs equal widths, got {self.in_dim} -> {self.out_dim}")


@dataclass(frozen=True)
class PromptTemplate:
    """The ranker's input: ``system + instruction(query)``, the item's embedding tokens, ``end``.

    The ranker then scores the next token: ``yes`` against ``no``, each one token of the ranker's
    vocabulary (their ids are looked up when the bundle is sealed).
    """

    system: str = "Judge whether the catalog item is relevant to the search query. Answer yes or no.\n"
    instruction: str = "Query: {query}\nItem:"
    end: str = "\nRelevant:"
    yes: str = " yes"
    no: str = " no"
    yes_token_id: int | None = None
    no_token_id: int | None = None

    def __post_init__(self) -> None:
        if "{query}" not in self.instruction:
            raise InputError(f"prompt instruction must contain {{query}}, got {self.instruction!r}")


def default_pooling(kind: str, n_tokens: int) -> str:
    """last_k for several tokens; else the last token of a decoder, the mean of a BERT-like encoder."""
    if n_tokens > 1:
        return "last_k"
    return "last" if kind == "decoder" else "mean"


def default_projection(in_dim: int, out_dim: int) -> str:
    return "identity" if in_dim == out_dim else "linear"


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise InputError(f"{where} must be an object, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"{where} has unknown keys {', '.join(unknown)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise InputError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters of a training stage (``mixlm.encoders.lora`` adds, saves and merges them)."""


    rank: int = 8
    alpha: float = 16.0
    top_layers: int | None = None  # adapt only the last N blocks; None: every block

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise InputError(f"LoRA rank must be >= 1, got {self.rank}")
        if self.top_layers is not None and self.top_layers < 1:
            raise InputError(f"top_layers must be >= 1, got {self.top_layers}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclass(frozen=True)
class RankerInputs:
    """What the ranker reads besides the prompt's text and each item's embedding tokens.

    ``query_vector``: the query's own embedding tokens (from the bundle's encoder and projection)
    close the prefix, which every candidate still shares.
    ``interaction``: each candidate's tokens get ``W (q * d) sqrt(width)`` added, where ``q`` and
    ``d`` are the query's and the item's normalised retrieval vectors and ``W`` is the ranker's
    trained interaction matrix (``ranker/interaction.safetensors``). The elementwise product lays
    the two vectors' agreement out dimension by dimension, which the ranker learns to read in
    a few hundred steps; a comparison of two separate tokens takes far longer to learn.
    """

    query_vector: bool = False
    interaction: bool = False


@dataclass(frozen=True)
class FusionConfig:
    """The product's final score: ``sum(w * z(feature))`` over the features a request has, where
    ``z`` standardises a feature over the request's candidates (mean 0, standard deviation 1).

    Features: ``mixlm`` (the ranker's log-odds), ``first_stage`` (the scores the caller passes,
    BM25 when the weights were fitted) and ``dense`` (cosine of the encoder's query and item
    retrieval vectors). Without first-stage scores the final score is MixLM's log-odds alone.

    With ``mixlm_scale``, MixLM's centred log-odds are divided by that one number (their typical
    spread over a request's candidates where the weights were fitted) instead of by each request's
    own spread: log-odds are calibrated, so a request they separate widely is one MixLM is sure
    of and gets more say than one it barely separates. Without it (bundles fitted before it
    existed) every feature is standardised per request.
    """

    mixlm: float = 1.0
    first_stage: float = 0.0
    dense: float = 0.0
    fitted_on: str = ""  # where the weights were chosen (never a test split)
    mixlm_scale: float | None = None

    def __post_init__(self) -> None:
        if min(self.mixlm, self.first_stage, self.dense) < 0:
            raise InputError("fusion weights must be >= 0")
        if self.mixlm_scale is not None and not self.mixlm_scale > 0:
            raise InputError(f"fusion mixlm_scale must be > 0, got {self.mixlm_scale}")


@dataclass(frozen=True)
class BundleConfig:
    encoder: ModelInfo
    ranker: ModelInfo
    encoding: EncodingConfig
    projection: ProjectionConfig
    prompt: PromptTemplate = field(default_factory=PromptTemplate)
    encoder_id: str = ""  # set when the bundle is sealed
    format: int = BUNDLE_FORMAT
    inputs: RankerInputs = field(default_factory=RankerInputs)
    fusion: FusionConfig | None = None  # fitted by training; None: the final score is MixLM alone

    def __post_init__(self) -> None:
        if self.ranker.kind != "decoder":
            raise InputError(f"the ranker must be a causal LM; {self.ranker.base} is {self.ranker.kind}")
        widths = (self.encoder.hidden_size, self.ranker.hidden_size)
        if (self.projection.in_dim, self.projection.out_dim) != widths:
            raise InputError(f"projection {self.projection.in_dim} -> {self.projection.out_dim} does not map the "
                             f"encoder width {widths[0]} to the ranker width {widths[1]}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BundleConfig:
        if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
            found = data.get("format") if isinstance(data, dict) else None
            raise InputError(f"bundle format {found!r}; this mixlm reads format {BUNDLE_FORMAT}")
        parts = {"encoder": ModelInfo, "ranker": ModelInfo, "encoding": EncodingConfig,
                 "projection": ProjectionConfig, "prompt": PromptTemplate}
        missing = sorted(set(parts) - set(data))
        if missing:
            raise InputError(f"mixlm.json lacks {', '.join(missing)}")
        built = {name: _build(kind, data[name], name) for name, kind in parts.items()}
        optional = {"inputs": RankerInputs, "fusion": FusionConfig}
        built.update({name: _build(kind, data[name], name) for name, kind in optional.items()
                      if data.get(name) is not None})
        rest = {k: v for k, v in data.items() if k not in parts and k not in optional}
        return _build(cls, {**rest, **built}, "mixlm.json")

    def save(self, bundle_dir: str | Path) -> None:
        (Path(bundle_dir) / CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, bundle_dir: str | Path) -> BundleConfig:
        path = Path(bundle_dir) / CONFIG_NAME
        if not path.is_file():
            raise PathNotFoundError(f"{bundle_dir} is not a model bundle (no {CONFIG_NAME}); "
                                    "make one with 'mixlm bundle init'")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except ValueError as exc:  # json.JSONDecodeError included
            raise InputError(f"{path}: {exc}") from None
