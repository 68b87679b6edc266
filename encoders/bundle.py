"""Model bundles: the paired encoder + ranker that pipelines, ranker and training load.

A bundle is a directory::

    mixlm.json               BundleConfig: models, encoding, projection, prompt, encoder_id
    encoder/                 transformers config + safetensors weights + tokenizer, or base.json
                             (a pinned pretrained base) + an optional LoRA adapter
    ranker/                  the same, a causal LM
    projection.safetensors   encoder width -> ranker width (empty for an identity)

It is built in a hidden sibling directory and renamed into place, so a directory with a
``mixlm.json`` is always complete. Whoever changes the encoder's files or settings (training)
calls ``seal_bundle`` afterwards to refresh ``encoder_id``; loading an encoder checks it.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

from mixlm.encoders.config import (
    CONFIG_NAME,
    BundleConfig,
    EncodingConfig,
    ModelInfo,
    ProjectionConfig,
    PromptTemplate,
    default_pooling,
    default_projection,
)
from mixlm.encoders.fingerprint import encoder_fingerprint
from mixlm.schemas.errors import InputError, PathNotFoundError

ENCODER_DIR = "encoder"
RANKER_DIR = "ranker"
PROJECTION_FILE = "projection.safetensors"
INTERACTION_FILE = "interaction.safetensors"  # in ranker/: see RankerInputs.interaction


class Bundle:
    """A bundle's config; its tokenizers and models load on first use."""

    def __init__(self, path: str | Path, config: BundleConfig):
        self.path = Path(path)
        self.config = config

    @property
    def encoder_dir(self) -> Path:
        return self.path / ENCODER_DIR

    @property
    def ranker_dir(self) -> Path:
        return self.path / RANKER_DIR

    @property
    def projection_file(self) -> Path:
        return self.path / PROJECTION_FILE

    @property
    def encoder_id(self) -> str:
        return self.config.encoder_id

    @cached_property
    def encoder_tokenizer(self):
        from mixlm.encoders.hf_models import load_tokenizer

        return load_tokenizer(self.encoder_dir)

    @cached_property
    def ranker_tokenizer(self):
        from mixlm.encoders.hf_models import load_tokenizer

        return load_tokenizer(self.ranker_dir)

    def load_encoder(self, device=None, dtype=None, *, merge_adapter: bool = True):
        """The encoder's base model (hidden states, no LM head); default device and dtype: see ``hf_models``."""
        from mixlm.encoders.hf_models import load_model

        return load_model(self.encoder_dir, causal_lm=False, device=device, dtype=dtype, merge_adapter=merge_adapter)

    def load_ranker(self, device=None, dtype=None, *, merge_adapter: bool = True, with_adapter: bool = True):
        """The ranker as a causal LM (its LM head gives the yes/no logits); ``with_adapter=False``: its base only."""
        from mixlm.encoders.hf_models import load_model

        return load_model(self.ranker_dir, causal_lm=True, device=device, dtype=dtype, merge_adapter=merge_adapter,
                          with_adapter=with_adapter)

    def load_projection(self):
        """The projection on the CPU in float32 (move it where the encoder runs)."""
        from mixlm.encoders.projection import load_projection

        return load_projection(self.config.projection, self.projection_file)

    def load_interaction(self):
        """The ranker's query-item interaction matrix, float32 on the CPU (``RankerInputs.interaction``)."""
        from mixlm.encoders.projection import load_interaction

        return load_interaction(self.config.encoder.hidden_size, self.config.ranker.hidden_size,
                                self.ranker_dir / INTERACTION_FILE)

    def fingerprint(self) -> str:
        """The encoder_id the bundle's current files and settings give (hashes the encoder's weights)."""
        return encoder_fingerprint(self.encoder_dir, self.config.encoding, self.config.projection,
                                   self.projection_file)

    def check_encoder_id(self) -> None:
        """Refuse a bundle whose encoder changed after sealing: its vectors would be stored under a wrong id."""
        current = self.fingerprint()
        if current != self.encoder_id:
            raise InputError(f"bundle {self.path}: its encoder files or settings changed after its encoder_id was "
                             f"computed ({self.encoder_id} in {CONFIG_NAME}, {current} now); "
                             "seal it again with mixlm.encoders.seal_bundle()")


# The settings that decide how a ranker reads items and queries: two bundles that agree on them
# read the same store records and the same prompt, so one's adapter can continue or join the other's.
READING_SETTINGS = ("encoder", "ranker", "encoding", "projection", "inputs", "prompt")


def reading_difference(a: BundleConfig, b: BundleConfig) -> str | None:
    """The first reading setting two bundles disagree on, as ``"part (a's against b's)"``; None if none."""
    for part in READING_SETTINGS:
        if getattr(a, part) != getattr(b, part):
            return f"{part} ({getattr(a, part)} against {getattr(b, part)})"
    return None


def load_bundle(path: str | Path) -> Bundle:
    """Read ``mixlm.json`` and check the parts are there; nothing heavy is loaded yet."""
    bundle = Bundle(path, BundleConfig.load(path))
    for part in (bundle.encoder_dir, bundle.ranker_dir, bundle.projection_file):
        if not part.exists():
            raise PathNotFoundError(f"bundle {path} is incomplete: {part.name} is missing")
    return bundle


def answer_token_ids(tokenizer, prompt: PromptTemplate) -> PromptTemplate:
    """The prompt with yes/no token ids filled in; each answer must be exactly one ranker token."""
    ids = []
    for word in (prompt.yes, prompt.no):
        tokens = tokenizer.encode(word, add_special_tokens=False)
        if len(tokens) != 1:
            raise InputError(f"the ranker tokenizer splits the answer {word!r} into {len(tokens)} tokens {tokens}; "
                             "the yes/no head needs one token each (set prompt yes/no to words it keeps whole)")
        ids.append(tokens[0])
    if ids[0] == ids[1]:
        raise InputError(f"the answers {prompt.yes!r} and {prompt.no!r} are the same token {ids[0]}")
    return dataclasses.replace(prompt, yes_token_id=ids[0], no_token_id=ids[1])


def _seal(path: Path, config: BundleConfig) -> Bundle:
    bundle = Bundle(path, config)
    prompt = answer_token_ids(bundle.ranker_tokenizer, config.prompt)
    bundle.config = dataclasses.replace(config, prompt=prompt, encoder_id=bundle.fingerprint())
    bundle.config.save(path)
    return bundle


def seal_bundle(path: str | Path) -> Bundle:
    """Recompute ``encoder_id`` and the answer token ids from the bundle's files; save ``mixlm.json``."""
    bundle = load_bundle(path)
    return _seal(bundle.path, bundle.config)


def _model_source(name_or_dir: str | Path) -> tuple[str, Path, bool]:
    """(base name, folder with its files, whether it is a pretrained name to reference rather than copy)."""
    from mixlm.encoders.pretrained import PRETRAINED, resolve_pretrained

    if isinstance(name_or_dir, str) and name_or_dir in PRETRAINED:
        return name_or_dir, resolve_pretrained(name_or_dir), True
    return Path(name_or_dir).resolve().name, Path(name_or_dir), False


def init_bundle(out_dir: str | Path, encoder_path: str | Path, ranker_path: str | Path, *, n_tokens: int = 1,
                pooling: str | None = None, max_length: int = 512, projection: str | None = None,
                prompt: PromptTemplate | None = None, seed: int = 0,
                log: Callable[[str], None] = lambda line: None) -> Bundle:
    """A bundle from two models; its projection is freshly initialised (seeded).

    A model is a pretrained name (``mixlm models ls``), which the bundle references without
    copying its weights (``base_reference``), or a local model folder, which is copied.
    ``pooling`` defaults to ``default_pooling`` of the encoder's kind; ``projection`` to an
    identity when the widths match, else ``linear``.
    """
    from mixlm.encoders.base_reference import write_reference
    from mixlm.encoders.hf_models import copy_model, model_kind, read_config
    from mixlm.encoders.projection import init_projection, save_projection

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists and is not empty; a bundle needs a new directory")
    (encoder_name, encoder_files, encoder_ref), (ranker_name, ranker_files, ranker_ref) = (
        _model_source(encoder_path), _model_source(ranker_path))
    encoder_config, ranker_config = read_config(encoder_files), read_config(ranker_files)
    encoder = ModelInfo(encoder_name, model_kind(encoder_config), encoder_config.hidden_size)
    ranker = ModelInfo(ranker_name, model_kind(ranker_config), ranker_config.hidden_size)
    positions = getattr(encoder_config, "max_position_embeddings", None)
    if positions and max_length > positions:
        raise InputError(f"max_length {max_length} exceeds the encoder's {positions} positions")
    config = BundleConfig(
        encoder=encoder, ranker=ranker,
        encoding=EncodingConfig(pooling or default_pooling(encoder.kind, n_tokens), n_tokens, max_length),
        projection=ProjectionConfig(projection or default_projection(encoder.hidden_size, ranker.hidden_size),
                                    encoder.hidden_size, ranker.hidden_size),
        prompt=prompt or PromptTemplate())
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as staging_root:
        staging = Path(staging_root) / out.name
        for source, reference, part, causal_lm in ((encoder_path, encoder_ref, ENCODER_DIR, False),
                                                   (ranker_path, ranker_ref, RANKER_DIR, True)):
            if reference:
                write_reference(staging / part, source)
            else:
                copy_model(source, staging / part, causal_lm=causal_lm, log=log)
        save_projection(init_projection(config.projection, seed), staging / PROJECTION_FILE)
        bundle = _seal(staging, config)
        os.replace(staging, out)
    log(f"bundle {out}: encoder_id {bundle.encoder_id}")
    return Bundle(out, bundle.config)


def init_tiny_bundle(out_dir: str | Path, *, encoder_kind: str = "decoder", n_tokens: int = 1,
                     pooling: str | None = None, max_length: int = 128, projection: str | None = None,
                     seed: int = 0) -> Bundle:
    """Tiny random encoder and ranker (2 layers; see ``mixlm.encoders.tiny``): seconds on CPU, no network.

    Defaults as ``init_bundle``: last-token pooling for the decoder encoder, a linear projection.
    """
    from mixlm.encoders.tiny import save_tiny_models

    with tempfile.TemporaryDirectory(prefix="mixlm-tiny-") as work:
        encoder_dir, ranker_dir = save_tiny_models(Path(work), encoder_kind=encoder_kind, seed=seed)
        return init_bundle(out_dir, encoder_dir, ranker_dir, n_tokens=n_tokens, pooling=pooling,
                           max_length=max_length, projection=projection, seed=seed)

