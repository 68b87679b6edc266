"""Tiny random models and an in-process trained tokenizer: real transformers code, seconds on CPU.

Tests, CI and smoke runs use these instead of downloaded weights (the HF tests' approach).
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
# Plain English with job-search and science vocabulary, and the answer words the ranker needs.
_TRAINING_TEXT = """
Data engineer building streaming pipelines with Kafka and Apache Beam. Senior machine learning
engineer for search ranking and recommendation. Software developer, Python and Rust, remote.
Nurse practitioner in a children's hospital. Sales manager for enterprise accounts in Europe.
Research scientist studying protein folding, cell biology, gene expression and cancer therapy.
The vaccine reduced infection rates in the randomized controlled trial of older adults.
Aircraft wing boundary layer flow at supersonic speed and heat transfer in the nozzle.
Is this job relevant to the query? Answer yes or no. Relevant: yes. Relevant: no.
Query: python developer. Item: backend engineer writing python services. Relevant: yes.
Query: nurse. Item: accountant preparing tax returns. Relevant: no.
The quick brown fox jumps over the lazy dog while the committee reviews the evidence.
"""


def train_tiny_tokenizer(vocab_size: int = 600) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=1,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    lines = [line for line in _TRAINING_TEXT.splitlines() if line] + [" yes", " no"] * 50
    tokenizer.train_from_iterator(lines, trainer=trainer)
    return tokenizer


def save_tiny_tokenizer(out_dir: Path, tokenizer: Tokenizer) -> None:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(out_dir))


def save_tiny_decoder(out_dir: Path, vocab_size: int, hidden_size: int, *, causal_lm: bool, seed: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config) if causal_lm else LlamaModel(config)
    model.save_pretrained(str(out_dir))


def save_tiny_bert(out_dir: Path, vocab_size: int, hidden_size: int, *, seed: int) -> None:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=512, pad_token_id=0)
    BertModel(config).save_pretrained(str(out_dir))
