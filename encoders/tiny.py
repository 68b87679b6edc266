"""Tiny random models with a tokenizer trained in-process: real transformers code, seconds on CPU.

Tests, CI and smoke runs use these instead of downloaded weights (the approach of HF's own
tests). The ranker is a 2-layer Llama of width 64; the encoder a 2-layer Llama of width 48 or
a 2-layer BERT of width 32, so the projection to the ranker's width is always exercised.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mixlm.schemas.errors import InputError

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
VOCAB_SIZE = 600
RANKER_WIDTH = 64
ENCODER_WIDTHS = {"decoder": 48, "encoder-only": 32}
# Plain English with job-search and science vocabulary, and the answer words the ranker needs.
_TRAINING_TEXT = """
Data engineer building streaming pipelines with Kafka and Apache Beam. Senior machine learning
engineer for search ranking and recommendation. Software developer, Python and Rust, remote.
Nurse practitioner in a children's hospital. Sales manager for enterprise accounts in Europe.
Research scientist studying protein folding, cell biology, gene expression and cancer therapy.
The vaccine reduced infection rates in the randomized controlled trial of older adults.
Aircraft wing boundary layer flow at supersonic speed and heat transfer in the nozzle.
Judge whether the catalog item is relevant to the search query. Answer yes or no.
Query: python developer. Item: backend engineer writing python services. Relevant: yes.
Query: nurse. Item: accountant preparing tax returns. Relevant: no.
The quick brown fox jumps over the lazy dog while the committee reviews the evidence.
"""


def train_tiny_tokenizer() -> Tokenizer:
    """A byte-level BPE (any text encodes, nothing is unknown) where "yes", "no", " yes" and " no" are single tokens."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, min_frequency=1,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    lines = [line for line in _TRAINING_TEXT.splitlines() if line] + ["yes", "no", " yes", " no"] * 50
    tokenizer.train_from_iterator(lines, trainer=trainer)
    return tokenizer


def _save_tokenizer(tokenizer: Tokenizer, out_dir: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    fast.save_pretrained(str(out_dir))


def _llama(vocab_size: int, width: int, *, causal_lm: bool):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=width * 2, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config) if causal_lm else LlamaModel(config)


def _bert(vocab_size: int, width: int):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=width * 2, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=512, pad_token_id=0)
    return BertModel(config)


def save_tiny_models(work_dir: Path, *, encoder_kind: str, seed: int) -> tuple[Path, Path]:
    """Write a tiny encoder and ranker model folder (weights from ``seed``); returns their paths."""
    if encoder_kind not in ENCODER_WIDTHS:
        raise InputError(f"encoder_kind must be one of {', '.join(ENCODER_WIDTHS)}, got {encoder_kind!r}")
    tokenizer = train_tiny_tokenizer()
    vocab_size = tokenizer.get_vocab_size()
    width = ENCODER_WIDTHS[encoder_kind]
    encoder_dir = work_dir / (f"tiny-llama-{width}" if encoder_kind == "decoder" else f"tiny-bert-{width}")
    ranker_dir = work_dir / f"tiny-llama-{RANKER_WIDTH}"
    with torch.random.fork_rng():  # seeded without disturbing the caller's random state
        torch.manual_seed(seed)
        ranker = _llama(vocab_size, RANKER_WIDTH, causal_lm=True)
        encoder = _llama(vocab_size, width, causal_lm=False) if encoder_kind == "decoder" else _bert(vocab_size, width)
    for model, out_dir in ((encoder, encoder_dir), (ranker, ranker_dir)):
        model.save_pretrained(str(out_dir), safe_serialization=True)
        _save_tokenizer(tokenizer, out_dir)
    return encoder_dir, ranker_dir
