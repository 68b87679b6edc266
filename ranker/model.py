"""``MixedInputRanker``: ``p(yes)`` for a query and items given as embedding tokens or as text.

The prompt is ``[system + instruction(query)][item tokens][end]``; the query comes first, so
its KV cache can be computed once per request and shared by every candidate ("amortized
prefill"). The score reads only the last position's hidden state and takes its dot product
with ``W_yes - W_no``: ``sigmoid`` of it is the softmax over {yes, no} of the full logits,
without a vocabulary-sized matmul.

Backends: ``naive`` runs one full sequence per candidate (the reference); ``amortized`` runs the
candidates' tails in token-budget batches against the prefill's keys and values read in place
(``shared_prefix``); ``amortized-copy`` is the earlier amortized path, which gives each batch its
own copy of the query cache, one row per candidate (kept for comparison and for models whose
attention does not go through transformers' attention interface).
"""

from __future__ import annotations

import copy
import inspect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mixlm.encoders.batching import token_budget_batches
from mixlm.encoders.bundle import Bundle, load_bundle
from mixlm.encoders.config import PromptTemplate, RankerInputs
from mixlm.encoders.item_encoder import EncodedItem
from mixlm.ranker import shared_prefix
from mixlm.schemas.errors import InputError

BACKENDS = ("naive", "amortized", "amortized-copy")
DEFAULT_TOKEN_BUDGET = 16_384
# On a CPU, passes of about 2,000 positions measured up to 10% faster than 16,384 (their activations
# stay in cache; the matmuls are already large enough): the default there.
CPU_TOKEN_BUDGET = 2_048


@dataclass(frozen=True)
class Scores:
    """``log_odds`` = logit(yes) - logit(no); ``p_yes`` = sigmoid(log_odds)."""

    log_odds: np.ndarray
    p_yes: np.ndarray


class MixedInputRanker:
    def __init__(self, model: nn.Module, tokenizer, prompt: PromptTemplate, encoder_id: str = "", *,
                 inputs: RankerInputs | None = None, interaction: nn.Module | None = None,
                 token_budget: int | None = None):
        """``model``: a transformers causal LM (``AutoModelForCausalLM``) on its device and dtype;
        ``inputs`` and ``interaction`` (retrieval width -> hidden, for ``inputs.interaction``): see
        ``RankerInputs``; ``token_budget`` bounds the padded candidate positions of one amortized pass
        (default: ``CPU_TOKEN_BUDGET`` on a CPU, else ``DEFAULT_TOKEN_BUDGET``)."""
        inputs = inputs or RankerInputs()
        if inputs.interaction and interaction is None:
            raise InputError("the ranker reads query-item interactions but has no interaction weights")
        if prompt.yes_token_id is None or prompt.no_token_id is None:
            raise InputError("the prompt has no yes/no token ids; seal the bundle first")
        self.model = model.eval()
        # The transformer body under the LM head (Llama's ``.model``, GPT-2's ``.transformer``, ...):
        # the portable accessor, so any causal LM works, adapters (``encoders.lora``) included.
        self.decoder = model.base_model
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.encoder_id = encoder_id
        self.inputs = inputs
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.token_budget = token_budget or (CPU_TOKEN_BUDGET if self.device.type == "cpu" else DEFAULT_TOKEN_BUDGET)
        self.embed = model.get_input_embeddings()
        head = model.get_output_embeddings()
        direction = head.weight[prompt.yes_token_id] - head.weight[prompt.no_token_id]
        bias = 0.0
        if getattr(head, "bias", None) is not None:
            bias = (head.bias[prompt.yes_token_id] - head.bias[prompt.no_token_id]).item()
        self.direction = direction.detach().float()
        self.bias = bias
        self.end_ids = torch.tensor(tokenizer.encode(prompt.end, add_special_tokens=False), dtype=torch.long,
                                    device=self.device)
        self.interaction = interaction.to(self.device) if inputs.interaction else None
        self.shares_prefix = shared_prefix.enable(model)  # else "amortized" falls back to "amortized-copy"
        # transformers 5 names the KV cache argument ``cache``; earlier releases ``past_key_values``
        self._cache_argument = ("cache" if "cache" in inspect.signature(self.decoder.forward).parameters
                                else "past_key_values")

    @classmethod
    def from_bundle(cls, bundle: Bundle | str | Path, *, device=None, dtype=None) -> MixedInputRanker:
        bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        interaction = bundle.load_interaction() if bundle.config.inputs.interaction else None
        return cls(bundle.load_ranker(device, dtype), bundle.ranker_tokenizer, bundle.config.prompt,
                   bundle.encoder_id, inputs=bundle.config.inputs, interaction=interaction)

    @property
    def hidden_size(self) -> int:
        return self.embed.weight.shape[1]

    def prefix_ids(self, query: str) -> torch.Tensor:
        text = self.prompt.system + self.prompt.instruction.format(query=query)
        return torch.tensor(self.tokenizer.encode(text, add_special_tokens=True), device=self.device)

    def prefix_embeddings(self, query: str, query_embedding: EncodedItem | None = None) -> torch.Tensor:
        """``[P, hidden]``: the prompt's tokens, then the query's embedding tokens when the ranker reads them."""
        tokens = self.embed(self.prefix_ids(query))
        if not self.inputs.query_vector:
            return tokens
        _require(query_embedding, "the query's embedding tokens")
        return torch.cat([tokens, self._as_tokens(query_embedding.vectors).reshape(-1, self.hidden_size)])

    def candidate_tokens(self, items: Sequence[torch.Tensor | np.ndarray], query_embedding: EncodedItem | None = None,
                         item_retrieval: Sequence | np.ndarray | torch.Tensor | None = None) -> list[torch.Tensor]:
        """Each candidate's input tokens ``[T_i, hidden]``: its embedding tokens, plus the projected
        query-item interaction when the ranker reads it (``RankerInputs``)."""
        stacked = self._stacked_tokens(items)
        tokens = list(stacked) if stacked is not None else [self._as_tokens(item) for item in items]
        if not self.inputs.interaction or not tokens:
            return tokens
        _require(query_embedding, "the query's retrieval vector")
        _require(item_retrieval, "the items' retrieval vectors")
        query = F.normalize(torch.as_tensor(query_embedding.retrieval_vector, device=self.device).float(), dim=-1)
        if not isinstance(item_retrieval, torch.Tensor):
            item_retrieval = torch.as_tensor(np.asarray(item_retrieval), device=self.device)
        products = F.normalize(item_retrieval.float(), dim=-1) * query * query.shape[-1] ** 0.5
        extra = self.interaction(products.to(self.interaction.weight.dtype))
        if stacked is not None and extra.shape[0] == stacked.shape[0]:
            return list(stacked + extra.to(self.dtype).unsqueeze(1))  # one op for all items
        return [token + row.to(self.dtype) for token, row in zip(tokens, extra, strict=True)]

    def _stacked_tokens(self, items: Sequence[torch.Tensor | np.ndarray]) -> torch.Tensor | None:
        """``[N, T, hidden]`` in the ranker's dtype when all items are tensors, or all arrays, of one
        shape (the usual case: T_S tokens each), converted in one op; else None."""
        shapes = {tuple(getattr(item, "shape", ())) for item in items}
        if len(shapes) != 1 or shapes == {()}:
            return None
        if all(isinstance(item, torch.Tensor) for item in items):
            return torch.stack(list(items)).to(self.device, self.dtype)
        if all(isinstance(item, np.ndarray) for item in items):
            return torch.as_tensor(np.stack(items), device=self.device).to(self.dtype)
        return None

    def item_text_embeddings(self, text: str) -> torch.Tensor:
        """The ranker's own token embeddings of ``text``: the text baselines' "item tokens"."""
        ids = torch.tensor(self.tokenizer.encode(text, add_special_tokens=False), dtype=torch.long, device=self.device)
        return self.embed(ids)

    def log_odds(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """logit(yes) - logit(no) from last hidden states ``[..., hidden]`` (differentiable)."""
        return last_hidden.float() @ self.direction + self.bias

    def _head(self, last_hidden: torch.Tensor) -> Scores:
        log_odds = self.log_odds(last_hidden).cpu().numpy()
        return Scores(log_odds, 1.0 / (1.0 + np.exp(-log_odds)))

    def forward_group(self, query: str, items: Sequence[torch.Tensor], query_embedding: EncodedItem | None = None,
                      item_retrieval: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One query's candidates with autograd on: ``(log_odds [N], last hidden [N, hidden])``.

        The training path: the prefix runs once and its cache is repeated for the N candidates,
        so gradients reach the adapters (and the projection and interaction weights, through the
        vectors) through the prefix as well as through each candidate.
        """
        prefix = self.prefix_embeddings(query, query_embedding)
        cache = self._prefill(inputs_embeds=prefix.unsqueeze(0))
        cache.batch_repeat_interleave(len(items))
        prefix_mask = torch.ones(len(items), prefix.shape[0], dtype=torch.long, device=self.device)
        hidden = self._candidate_pass(cache, prefix_mask, self.candidate_tokens(items, query_embedding, item_retrieval),
                                      self.embed(self.end_ids))
        return self.log_odds(hidden), hidden

    @torch.inference_mode()
    def score(self, query: str, items: Sequence[torch.Tensor | np.ndarray], *, backend: str = "amortized",
              query_embedding: EncodedItem | None = None, item_retrieval=None) -> Scores:
        """Score ``items`` (each ``[T_i, hidden]`` embedding tokens) against ``query``.

        ``query_embedding`` (the encoder's ``encode_queries`` output) and ``item_retrieval`` (the
        items' retrieval vectors) are needed by a ranker that reads them (``RankerInputs``).
        """
        if backend not in BACKENDS:
            raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if backend != "naive":
            return self.score_batch([(query, items)], query_embeddings=[query_embedding],
                                    item_retrievals=[item_retrieval], backend=backend)[0]
        if not items:
            return Scores(np.zeros(0, np.float32), np.zeros(0, np.float32))
        prefix, end = self.prefix_embeddings(query, query_embedding), self.embed(self.end_ids)
        tokens = self.candidate_tokens(items, query_embedding, item_retrieval)
        return self._head(torch.stack([self._score_one(torch.cat([prefix, t, end])) for t in tokens]))

    @torch.inference_mode()
    def score_batch(self, requests: Sequence[tuple[str, Sequence[torch.Tensor | np.ndarray]]], *,
                    query_embeddings: Sequence[EncodedItem | None] | None = None,
                    item_retrievals: Sequence | None = None, backend: str = "amortized") -> list[Scores]:
        """Several (query, items) requests: one prefill of all queries, then shared candidate passes.

        Query prefixes are left-padded to one length (positions count real tokens only); each
        candidate continues from its own query's cache: read in place (``amortized``) or copied
        into the batch by index (``amortized-copy``).
        """
        if backend not in BACKENDS[1:]:
            raise InputError(f"score_batch's backend must be one of {', '.join(BACKENDS[1:])}, got {backend!r}")
        if not requests:
            return []
        query_embeddings = query_embeddings or [None] * len(requests)
        item_retrievals = item_retrievals or [None] * len(requests)
        prefixes = [self.prefix_embeddings(query, embedding)
                    for (query, _), embedding in zip(requests, query_embeddings, strict=True)]
        width = max(p.shape[0] for p in prefixes)
        prefix_batch = torch.zeros(len(prefixes), width, self.hidden_size, dtype=self.dtype, device=self.device)
        prefix_mask = torch.zeros(len(prefixes), width, dtype=torch.long, device=self.device)
        for row, prefix in enumerate(prefixes):
            prefix_batch[row, width - prefix.shape[0]:] = prefix
            prefix_mask[row, width - prefix.shape[0]:] = 1
        positions = (prefix_mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = self._prefill(inputs_embeds=prefix_batch, attention_mask=prefix_mask, position_ids=positions)
        owners = [q for q, (_, items) in enumerate(requests) for _ in items]
        tokens = [token for (_, items), embedding, retrieval in zip(requests, query_embeddings, item_retrievals,
                                                                   strict=True)
                  for token in self.candidate_tokens(items, embedding, retrieval)]
        end, hidden = self.embed(self.end_ids), None
        if backend == "amortized" and self.shares_prefix:
            hidden = self._score_shared(cache, prefix_mask, owners, tokens, end)
            self.shares_prefix = hidden is not None
        if hidden is None:
            hidden = self._score_candidates(cache, prefix_mask, owners, tokens, end)
        scores = self._head(hidden) if tokens else Scores(np.zeros(0, np.float32), np.zeros(0, np.float32))
        out, start = [], 0
        for _, items in requests:
            out.append(Scores(scores.log_odds[start:start + len(items)], scores.p_yes[start:start + len(items)]))
            start += len(items)
        return out

    def _prefill(self, **inputs):
        """The prefix's KV cache: a ``DynamicCache`` the forward fills in place (transformers' current cache
        API; a legacy tuple cache or reading ``past_key_values`` off the output is deprecated)."""
        from transformers.cache_utils import DynamicCache

        try:
            cache = DynamicCache(config=self.model.config)
        except TypeError:  # a transformers whose DynamicCache takes no config
            cache = DynamicCache()
        self.decoder(**inputs, use_cache=True, **{self._cache_argument: cache})
        return cache

    def _as_tokens(self, item: torch.Tensor | np.ndarray) -> torch.Tensor:
        return torch.as_tensor(item, device=self.device).to(self.dtype)

    def _score_one(self, sequence: torch.Tensor) -> torch.Tensor:
        """The reference path: one full sequence through the base model (no vocabulary projection)."""
        return self.decoder(inputs_embeds=sequence.unsqueeze(0), use_cache=False).last_hidden_state[0, -1]

    def _score_shared(self, cache, prefix_mask: torch.Tensor, owners: list[int], tokens: list[torch.Tensor],
                      end: torch.Tensor) -> torch.Tensor | None:
        """Each candidate's ``T_i + end`` positions, one row each, in token-budget batches, attending to
        its query's prefill keys and values in place (``shared_prefix.attention``): no cache copy.

        None where the model's attention layers did not all read the prefix (a transformers that
        does not pass the forward's keyword arguments down to attention): the caller copies instead.
        """
        layers = getattr(cache, "layers", None)  # transformers' DynamicCache: one entry per decoder layer
        if not layers or not all(hasattr(layer, "keys") for layer in layers):
            return None
        keys, values = [layer.keys for layer in layers], [layer.values for layer in layers]
        prefix_lengths = prefix_mask.sum(dim=1).tolist()
        lengths = [item.shape[0] + end.shape[0] for item in tokens]
        out = torch.empty(len(tokens), self.hidden_size, device=self.device)
        for batch in token_budget_batches(lengths, self.token_budget):
            batch = sorted(batch, key=lambda i: owners[i])  # stable: rows of one query are contiguous
            segments, start = [], 0
            for owner, rows in itertools.groupby(batch, key=lambda i: owners[i]):
                stop = start + len(list(rows))
                segments.append((owner, start, stop))
                start = stop
            items = nn.utils.rnn.pad_sequence([tokens[i] for i in batch], batch_first=True)
            item_sizes = torch.tensor([tokens[i].shape[0] for i in batch], device=self.device)
            tail = torch.cat([items, items.new_zeros(len(batch), end.shape[0], items.shape[2])], dim=1)
            rows = torch.arange(len(batch), device=self.device).unsqueeze(1)
            tail[rows, item_sizes.unsqueeze(1) + torch.arange(end.shape[0], device=self.device)] = end  # right after
            sizes = item_sizes + end.shape[0]
            first = torch.tensor([prefix_lengths[owners[i]] for i in batch], device=self.device)
            positions = first.unsqueeze(1) + torch.arange(tail.shape[1], device=self.device)
            prefix = shared_prefix.SharedPrefix(keys, values, prefix_lengths, segments)
            hidden = self.decoder(inputs_embeds=tail, position_ids=positions, use_cache=False,
                                  shared_prefix=prefix).last_hidden_state
            if sorted(prefix.layers_read) != list(range(len(keys))):
                return None
            out[batch] = hidden[torch.arange(len(batch), device=self.device), sizes - 1].float()
        return out

    def _score_candidates(self, cache, prefix_mask: torch.Tensor, owners: list[int], tokens: list[torch.Tensor],
                          end: torch.Tensor) -> torch.Tensor:
        """Each candidate's ``T_i + end`` positions against a copy of its query's cache, in token-budget batches."""
        lengths = [item.shape[0] + end.shape[0] for item in tokens]
        out = torch.empty(len(tokens), self.hidden_size, device=self.device)
        for batch in token_budget_batches(lengths, self.token_budget):
            rows = torch.tensor([owners[i] for i in batch], device=self.device)
            batch_cache = copy.deepcopy(cache)
            batch_cache.batch_select_indices(rows)
            out[batch] = self._candidate_pass(batch_cache, prefix_mask[rows], [tokens[i] for i in batch], end).float()
        return out

    def _candidate_pass(self, cache, prefix_mask: torch.Tensor, tokens: list[torch.Tensor],
                        end: torch.Tensor) -> torch.Tensor:
        """One forward of candidate tails, row ``i`` continuing cache row ``i``; the last hidden state of each.

        Tails are right-padded, so pads never precede a real position and change nothing under
        causal attention; positions continue after each row's real prefix tokens.
        """
        sequences = [torch.cat([item, end]) for item in tokens]
        lengths = torch.tensor([s.shape[0] for s in sequences], device=self.device)
        tail = nn.utils.rnn.pad_sequence(sequences, batch_first=True)
        width = tail.shape[1]
        tail_mask = (torch.arange(width, device=self.device) < lengths.unsqueeze(1)).long()
        positions = prefix_mask.sum(dim=1).unsqueeze(1) + torch.arange(width, device=self.device)
        hidden = self.decoder(inputs_embeds=tail, use_cache=True, **{self._cache_argument: cache},
                              attention_mask=torch.cat([prefix_mask, tail_mask], dim=1),
                              position_ids=positions).last_hidden_state
        return hidden[torch.arange(len(sequences), device=self.device), lengths - 1]


def _require(value, what: str) -> None:
    if value is None:
        raise InputError(f"this ranker reads {what}: pass them (RankerClient does, with the bundle's encoder and "
                         "the store's retrieval vectors)")
