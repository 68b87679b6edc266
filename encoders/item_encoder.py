"""``ItemEncoder``: item text -> T_S embedding tokens (ranker width) + a retrieval vector."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mixlm.encoders.batching import token_budget_batches
from mixlm.encoders.bundle import model_path
from mixlm.encoders.config import BundleConfig
from mixlm.encoders.fingerprint import PROJECTION_FILE
from mixlm.encoders.pooling import pool
from mixlm.encoders.projection import build_projection
from mixlm.schemas import EmbeddingRecord, ItemEvent

DEFAULT_TOKEN_BUDGET = 16_384


def pick_device(device: str | None = None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def pick_dtype(device: torch.device, dtype: str | None = None) -> torch.dtype:
    """bfloat16 on CUDA, float32 on CPU, unless told otherwise."""
    if dtype:
        return getattr(torch, dtype)
    return torch.bfloat16 if device.type == "cuda" else torch.float32


@dataclass
class EncodedItem:
    vectors: np.ndarray  # [T_S, ranker hidden], float32
    retrieval_vector: np.ndarray  # [encoder hidden], L2-normalised mean of the encoder's last layer
    source_tokens: int
    truncated: bool


class ItemEncoder:
    def __init__(self, config: BundleConfig, model, tokenizer, projection: torch.nn.Module, *,
                 device: torch.device, token_budget: int = DEFAULT_TOKEN_BUDGET):
        self.config = config
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.projection = projection.eval()
        self.device = device
        self.token_budget = token_budget
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path, *, device: str | None = None, dtype: str | None = None,
                    token_budget: int = DEFAULT_TOKEN_BUDGET) -> ItemEncoder:
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        config = BundleConfig.load(bundle_dir)
        encoder_dir = str(model_path(bundle_dir, config.encoder))
        torch_device = pick_device(device)
        torch_dtype = pick_dtype(torch_device, dtype)
        model = AutoModel.from_pretrained(encoder_dir, dtype=torch_dtype).to(torch_device)
        tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
        projection = build_projection(config.projection, config.encoder.hidden_size, config.ranker.hidden_size)
        if config.projection != "identity":
            projection.load_state_dict(load_file(str(Path(bundle_dir) / PROJECTION_FILE)))
        return cls(config, model, tokenizer, projection.to(torch_device, torch_dtype), device=torch_device,
                   token_budget=token_budget)

    @property
    def encoder_id(self) -> str:
        return self.config.encoder_id

    def tokenize(self, items: Sequence[tuple[str, str]]) -> tuple[list[list[int]], list[int]]:
        """Token ids (cut to max_length) and each item's full token count before the cut."""
        texts = [self.config.format_item(title, text) for title, text in items]
        full = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
        limit = self.config.max_length
        ids = list(full)
        long_ones = [i for i, tokens in enumerate(full) if len(tokens) > limit]
        if long_ones:
            cut = self.tokenizer([texts[i] for i in long_ones], add_special_tokens=True, truncation=True,
                                 max_length=limit)["input_ids"]
            for index, tokens in zip(long_ones, cut, strict=True):
                ids[index] = tokens
        return ids, [len(tokens) for tokens in full]

    @torch.inference_mode()
    def encode(self, items: Sequence[tuple[str, str]]) -> list[EncodedItem]:
        """Encode ``(title, text)`` pairs in token-budget batches; output order follows input order."""
        ids, full_lengths = self.tokenize(items)
        results: list[EncodedItem | None] = [None] * len(items)
        for batch in token_budget_batches([len(t) for t in ids], self.token_budget):
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):
                input_ids[row, : len(ids[index])] = torch.tensor(ids[index])
                mask[row, : len(ids[index])] = 1
            input_ids, mask = input_ids.to(self.device), mask.to(self.device)
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            tokens = self.projection(pool(hidden, mask, self.config.pooling, self.config.n_tokens))
            retrieval = F.normalize(pool(hidden, mask, "mean", 1)[:, 0].float(), dim=-1)
            tokens = tokens.float().cpu().numpy()
            retrieval = retrieval.cpu().numpy()
            for row, index in enumerate(batch):
                results[index] = EncodedItem(tokens[row], retrieval[row], full_lengths[index],
                                             full_lengths[index] > self.config.max_length)
        return results  # type: ignore[return-value]

    def encode_events(self, events: Sequence[ItemEvent], *, job_id: str = "",
                      encoded_at: float | None = None) -> list[EmbeddingRecord]:
        """Upsert events -> records of this encoder (content hash and version from the event)."""
        encoded = self.encode([(event.title, event.text) for event in events])
        at = time.time() if encoded_at is None else encoded_at
        return [
            EmbeddingRecord(item_id=event.item_id, item_version=event.version, encoder_id=self.encoder_id,
                            content_hash=event.content_hash(), vectors=item.vectors,
                            retrieval_vector=item.retrieval_vector, source_tokens=item.source_tokens,
                            truncated=item.truncated, job_id=job_id, encoded_at=at)
            for event, item in zip(events, encoded, strict=True)
        ]
