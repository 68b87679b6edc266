"""Model bundles: build one (tiny, or from pretrained bases) and find its parts.

A bundle directory holds ``mixlm.json``, the projection as safetensors, and the encoder and
ranker models, either as folders inside it or as references to fetched pretrained models.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mixlm.encoders.config import BundleConfig, ModelRef, PromptTemplate
from mixlm.encoders.fingerprint import PROJECTION_FILE, encoder_fingerprint
from mixlm.encoders.pretrained import PRETRAINED, PRETRAINED_PREFIX, resolve
from mixlm.encoders.projection import default_projection, init_projection


ENCODER_ONLY_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet", "deberta", "deberta-v2"}


def model_path(bundle_dir: str | Path, ref: ModelRef) -> Path:
    if ref.path.startswith(PRETRAINED_PREFIX):
        return resolve(ref.path[len(PRETRAINED_PREFIX):])
    return Path(bundle_dir) / ref.path


def resolve_answer_tokens(tokenizer, prompt: PromptTemplate) -> PromptTemplate:
    """Fill in the yes/no token ids; each answer must be exactly one token of the ranker's vocabulary."""
    ids = {}
    for word in (prompt.yes, prompt.no):
        tokens = tokenizer.encode(word, add_special_tokens=False)
        if len(tokens) != 1:
            raise ValueError(f"the ranker tokenizer splits the answer {word!r} into {len(tokens)} tokens {tokens}; "
                             "the yes/no head needs single tokens (set prompt.yes/prompt.no in mixlm.json)")
        ids[word] = tokens[0]
    if ids[prompt.yes] == ids[prompt.no]:
        raise ValueError("the yes and no answers map to the same token")
    return PromptTemplate(**{**vars(prompt), "yes_token_id": ids[prompt.yes], "no_token_id": ids[prompt.no]})


def _model_ref(bundle_dir: Path, role: str, source: str, kind: str | None) -> ModelRef:
    """A pretrained name is referenced; a local model folder is copied into the bundle."""
    from transformers import AutoConfig

    if source in PRETRAINED:
        return ModelRef(PRETRAINED_PREFIX + source, PRETRAINED[source].kind,
                        AutoConfig.from_pretrained(str(resolve(source))).hidden_size)
    source_dir = Path(source)
    if not (source_dir / "config.json").is_file():
        raise FileNotFoundError(f"{source} is neither a pretrained model ({', '.join(PRETRAINED)}) "
                                "nor a model folder with config.json")
    shutil.copytree(source_dir, bundle_dir / role, dirs_exist_ok=True)
    config = AutoConfig.from_pretrained(str(source_dir))
    detected = "encoder-only" if config.model_type in ENCODER_ONLY_TYPES else "decoder"
    return ModelRef(role, kind or detected, config.hidden_size)


def finish_bundle(bundle_dir: Path, config: BundleConfig, *, seed: int) -> BundleConfig:
    """Write the projection and the answer-token ids, fingerprint the encoder, save mixlm.json."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    if config.projection != "identity":
        projection = init_projection(config.projection, config.encoder.hidden_size, config.ranker.hidden_size, seed)
        save_file({k: v.contiguous() for k, v in projection.state_dict().items()}, str(bundle_dir / PROJECTION_FILE))
    ranker_tokenizer = AutoTokenizer.from_pretrained(str(model_path(bundle_dir, config.ranker)))
    config.prompt = resolve_answer_tokens(ranker_tokenizer, config.prompt)
    config.encoder_id = encoder_fingerprint(config, model_path(bundle_dir, config.encoder), bundle_dir)
    config.save(bundle_dir)
    return config


def init_bundle(out_dir: str | Path, encoder: str, ranker: str, *, n_tokens: int = 1, pooling: str = "last",
                max_length: int = 512, projection: str | None = None, seed: int = 0) -> BundleConfig:
    """A bundle from pretrained bases; its projection is freshly initialised until training."""
    bundle_dir = Path(out_dir)
    bundle_dir.mkdir(parents=True, exist_ok=True)
    encoder_ref = _model_ref(bundle_dir, "encoder", encoder, None)
    ranker_ref = _model_ref(bundle_dir, "ranker", ranker, None)
    if ranker_ref.kind != "decoder":
        raise ValueError(f"the ranker must be a causal LM; {ranker} is {ranker_ref.kind}")
    config = BundleConfig(encoder=encoder_ref, ranker=ranker_ref, pooling=pooling, n_tokens=n_tokens,
                          max_length=max_length,
                          projection=projection or default_projection(encoder_ref.hidden_size, ranker_ref.hidden_size))
    return finish_bundle(bundle_dir, config, seed=seed)


def init_tiny_bundle(out_dir: str | Path, *, encoder_kind: str = "decoder", n_tokens: int = 1, pooling: str = "last",
                     max_length: int = 128, seed: int = 0) -> BundleConfig:
    """Tiny random encoder and ranker (2 layers) with an in-process trained tokenizer."""
    from mixlm.encoders.tiny import save_tiny_bert, save_tiny_decoder, save_tiny_tokenizer, train_tiny_tokenizer

    bundle_dir = Path(out_dir)
    tokenizer = train_tiny_tokenizer()
    vocab = tokenizer.get_vocab_size()
    for role in ("encoder", "ranker"):
        (bundle_dir / role).mkdir(parents=True, exist_ok=True)
        save_tiny_tokenizer(bundle_dir / role, tokenizer)
    save_tiny_decoder(bundle_dir / "ranker", vocab, 64, causal_lm=True, seed=seed)
    if encoder_kind == "decoder":
        save_tiny_decoder(bundle_dir / "encoder", vocab, 48, causal_lm=False, seed=seed + 1)
        encoder_ref = ModelRef("encoder", "decoder", 48)
    elif encoder_kind == "encoder-only":
        save_tiny_bert(bundle_dir / "encoder", vocab, 32, seed=seed + 1)
        encoder_ref = ModelRef("encoder", "encoder-only", 32)
    else:
        raise ValueError(f"encoder_kind must be 'decoder' or 'encoder-only', got {encoder_kind!r}")
    config = BundleConfig(encoder=encoder_ref, ranker=ModelRef("ranker", "decoder", 64), pooling=pooling,
                          n_tokens=n_tokens, max_length=max_length, projection="linear")
    return finish_bundle(bundle_dir, config, seed=seed)
