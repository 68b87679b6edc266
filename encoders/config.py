"""``mixlm.json``: the description of a model bundle that pipelines, ranker and training share."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mixlm.encoders.pooling import POOLINGS
from mixlm.encoders.projection import PROJECTIONS

BUNDLE_FORMAT = 1
CONFIG_NAME = "mixlm.json"


@dataclass
class ModelRef:
    """Where a model's files are: ``encoder``/``ranker`` inside the bundle, or ``pretrained:<name>``."""

    path: str
    kind: str  # "decoder" (causal LM) or "encoder-only" (BERT-like)
    hidden_size: int


@dataclass
class PromptTemplate:
    """``[prefix + query + query_suffix][item embedding tokens][end]`` then the answer token."""

    prefix: str = "Judge whether the item is relevant to the query. Answer yes or no.\nQuery: "
    query_suffix: str = "\nItem:"
    end: str = "\nRelevant:"
    yes: str = " yes"
    no: str = " no"
    yes_token_id: int = -1
    no_token_id: int = -1


@dataclass
class BundleConfig:
    encoder: ModelRef
    ranker: ModelRef
    pooling: str = "last"
    n_tokens: int = 1
    max_length: int = 512
    projection: str = "linear"
    retrieval_pooling: str = "mean"
    item_template: str = "{title}\n{text}"
    prompt: PromptTemplate = field(default_factory=PromptTemplate)
    encoder_id: str = ""
    format: int = BUNDLE_FORMAT

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = ModelRef(**self.encoder)
        if isinstance(self.ranker, dict):
            self.ranker = ModelRef(**self.ranker)
        if isinstance(self.prompt, dict):
            self.prompt = PromptTemplate(**self.prompt)
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {', '.join(PROJECTIONS)}, got {self.projection!r}")
        if self.n_tokens < 1 or (self.pooling != "last_k" and self.n_tokens != 1):
            raise ValueError(f"{self.pooling} pooling gives 1 embedding token; n_tokens={self.n_tokens} needs last_k")

    def format_item(self, title: str, text: str) -> str:
        return self.item_template.format(title=title, text=text).strip()

    def save(self, bundle_dir: Path) -> None:
        (Path(bundle_dir) / CONFIG_NAME).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, bundle_dir: str | Path) -> BundleConfig:
        path = Path(bundle_dir) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{bundle_dir} is not a model bundle (no {CONFIG_NAME}); "
                                    "make one with 'mixlm bundle init'")
        data = json.loads(path.read_text())
        if data.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"{path}: bundle format {data.get('format')!r}, this mixlm reads {BUNDLE_FORMAT}")
        return cls(**data)
