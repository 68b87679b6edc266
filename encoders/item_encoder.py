"""``ItemEncoder``: items ``(title, text)`` -> T_S embedding tokens at the ranker's width.

Each item also gets a retrieval vector for a first-stage (FAISS) index: the masked mean of
the encoder's last hidden layer, before the projection, L2-normalised.

An item's vectors do not depend on the batch it lands in: batches are right-padded and the
padding is masked out (causal decoders never see it at all), so only float rounding differs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mixlm.encoders.batching import token_budget_batches
from mixlm.encoders.bundle import Bundle, load_bundle
from mixlm.encoders.config import EncodingConfig, ProjectionConfig
from mixlm.encoders.fingerprint import encoder_fingerprint
from mixlm.encoders.hf_models import load_model, load_tokenizer
from mixlm.encoders.item_tokenizer import ItemTokenizer, TokenizedItem
from mixlm.encoders.pooling import pool
from mixlm.schemas import EmbeddingRecord, ItemEvent
from mixlm.schemas.item_event import DEFAULT_ITEM_TEMPLATE

# Padded token positions per forward pass; bounds activation memory whatever the item lengths.
DEFAULT_TOKEN_BUDGET = 16_384


@dataclass(frozen=True)
class EncodedItem:
    vectors: np.ndarray  # [T_S, ranker width], float32
    retrieval_vector: np.ndarray  # [encoder width], float32, L2-normalised masked mean (before projection)
    source_tokens: int  # tokens of the whole item text, special tokens included
    truncated: bool  # source_tokens > max_length: only the first max_length tokens were encoded


class ItemEncoder:
    def __init__(self, model: nn.Module, tokenizer, encoding: EncodingConfig, encoder_id: str, *,
                 projection: nn.Module | None = None, token_budget: int = DEFAULT_TOKEN_BUDGET):
        """``model``: a transformers base model already on its device and dtype; ``projection`` defaults to identity."""
        self.model = model.eval()
        self.model.config.use_cache = False  # one forward per batch: a KV cache would only cost memory
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.projection = (projection or nn.Identity()).to(self.device, self.dtype).eval()
        self.tokenizer = ItemTokenizer(tokenizer, encoding.max_length)
        self.encoding = encoding
        self.encoder_id = encoder_id
        self.token_budget = token_budget

    @classmethod
    def from_bundle(cls, bundle: Bundle | str | Path, *, device=None, dtype=None,
                    token_budget: int = DEFAULT_TOKEN_BUDGET) -> ItemEncoder:
        """The bundle's encoder + projection; refuses a bundle whose files no longer match its encoder_id."""
        bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        bundle.check_encoder_id()
        return cls(bundle.load_encoder(device, dtype), bundle.encoder_tokenizer, bundle.config.encoding,
                   bundle.encoder_id, projection=bundle.load_projection(), token_budget=token_budget)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, *, pooling: str = "last", n_tokens: int = 1,
                       max_length: int = 512, item_template: str = DEFAULT_ITEM_TEMPLATE, device=None, dtype=None,
                       token_budget: int = DEFAULT_TOKEN_BUDGET) -> ItemEncoder:
        """Any local transformers model folder, without projection (vectors at the model's own width)."""
        encoding = EncodingConfig(pooling, n_tokens, max_length, item_template)
        model = load_model(model_dir, causal_lm=False, device=device, dtype=dtype)
        width = model.config.hidden_size
        encoder_id = encoder_fingerprint(Path(model_dir), encoding, ProjectionConfig("identity", width, width), None)
        return cls(model, load_tokenizer(model_dir), encoding, encoder_id, token_budget=token_budget)

    def encode(self, items: Sequence[tuple[str, str]]) -> list[EncodedItem]:
        """Encode ``(title, text)`` pairs in token-budget batches; results follow the input order."""
        return self._encode_tokenized(self.tokenize(items))

    def encode_queries(self, queries: Sequence[str]) -> list[EncodedItem]:
        """Encode search queries as they are (no item template): a ranker prompt's query tokens and
        the query side of the dense first stage."""
        return self._encode_tokenized(self.tokenizer(list(queries)))

    @torch.inference_mode()
    def _encode_tokenized(self, tokenized: Sequence[TokenizedItem]) -> list[EncodedItem]:
        results: list[EncodedItem | None] = [None] * len(tokenized)
        for batch in token_budget_batches([len(t.ids) for t in tokenized], self.token_budget):
            vectors, retrieval = self.forward([tokenized[i] for i in batch])
            vectors, retrieval = vectors.float().cpu().numpy(), retrieval.cpu().numpy()
            for row, index in enumerate(batch):
                item = tokenized[index]
                results[index] = EncodedItem(vectors[row], retrieval[row], item.source_tokens, item.truncated)
        return results  # type: ignore[return-value]

    def tokenize(self, items: Sequence[tuple[str, str]]) -> list[TokenizedItem]:
        return self.tokenizer([self.encoding.format_item(title, text) for title, text in items])

    def forward(self, batch: Sequence[TokenizedItem], *, project: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """One padded batch: ``(embedding tokens [B, T_S, ranker width], retrieval vectors [B, width])``.

        Differentiable (training calls it with autograd on); ``encode`` wraps it for inference.
        ``project=False`` returns the pooled states before the projection (at the encoder's width).
        """
        hidden, mask = self.token_states(batch)
        pooled = pool(hidden, mask, self.encoding.pooling, self.encoding.n_tokens)
        vectors = self.projection(pooled.to(self.dtype)) if project else pooled
        return vectors, F.normalize(pool(hidden, mask, "mean")[:, 0], dim=-1)

    def token_states(self, batch: Sequence[TokenizedItem]) -> tuple[torch.Tensor, torch.Tensor]:
        """One right-padded batch's last hidden states ``[B, L, width]`` and attention mask ``[B, L]``."""
        width = max(len(item.ids) for item in batch)
        input_ids = torch.full((len(batch), width), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, item in enumerate(batch):
            input_ids[row, : len(item.ids)] = torch.tensor(item.ids)
            mask[row, : len(item.ids)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        return self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state, mask

    def encode_events(self, events: Sequence[ItemEvent], *, job_id: str = "",
                      encoded_at: float | None = None) -> list[EmbeddingRecord]:
        """Upsert events -> this encoder's records (one ``encoded_at`` for the whole call)."""
        encoded = self.encode([(event.title, event.text) for event in events])
        at = time.time() if encoded_at is None else encoded_at
        return [to_record(event, item, self.encoder_id, job_id=job_id, encoded_at=at)
                for event, item in zip(events, encoded, strict=True)]


def to_record(event: ItemEvent, item: EncodedItem, encoder_id: str, *, job_id: str = "",
              encoded_at: float | None = None) -> EmbeddingRecord:
    """An upsert event and its encoding -> the store's record (version, content hash and display title
    from the event)."""
    if event.is_delete:
        raise ValueError(f"item {event.item_id!r}: a delete event has nothing to encode; store a tombstone")
    return EmbeddingRecord(item_id=event.item_id, item_version=event.version, encoder_id=encoder_id,
                           content_hash=event.content_hash(), vectors=item.vectors,
                           retrieval_vector=item.retrieval_vector, source_tokens=item.source_tokens,
                           truncated=item.truncated, job_id=job_id,
                           encoded_at=time.time() if encoded_at is None else encoded_at, title=event.display_title())
