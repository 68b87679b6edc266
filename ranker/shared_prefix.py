"""Candidate attention against a shared query prefix that is read in place, never copied.

The amortized backend runs each candidate's tail (``[item tokens][end]``) as one row of a
batch and no KV cache: every attention layer of the decoder calls ``attention`` below, which
attends each row causally to its own positions and to all positions of its query's prefix,
whose keys and values (the prefill's cache) stay one ``[kv heads, prefix, head dim]`` tensor
per query and layer. The prefix half is one matmul per query over all its candidates' rows;
the candidate half is a batched ``[L, L]`` matmul per row. Nothing of size candidates x prefix
is ever materialised except the attention scores themselves.

It plugs into transformers' attention interface: ``enable(model)`` registers a dispatcher under
a new implementation name and switches the model to it. Calls without ``shared_prefix`` (the
naive path, the prefill, training) go to the model's original implementation unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

NAME_PREFIX = "mixlm_shared_prefix:"
# Rows up to this many positions (embedding tokens + end) take the matmul route, whose scores over
# the row's own positions are [L, L] per head; longer rows (text baselines) take SDPA with the
# prefix expanded into each row, whose copy is small next to their own keys.
SHORT_ROWS = 32


@dataclass
class SharedPrefix:
    """The prefill's keys and values (per layer ``[queries, kv heads, width, head dim]``, each query's
    prefix right-aligned: its real positions are the last ``lengths[q]``) and, for one forward, the
    rows of each query: ``segments`` = ``(query, first row, end row)``, rows grouped by query.
    ``layers_read`` collects the layers whose attention read it (a check that the forward did)."""

    keys: Sequence[torch.Tensor]
    values: Sequence[torch.Tensor]
    lengths: Sequence[int]
    segments: Sequence[tuple[int, int, int]]
    layers_read: list[int] = field(default_factory=list)


def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              prefix: SharedPrefix, scaling: float | None = None) -> torch.Tensor:
    """``query [rows, heads, L, d]``, ``key``/``value [rows, kv heads, L, d]`` (RoPE applied) ->
    ``[rows, L, heads, d]``: softmax over the row's query prefix and its own positions up to each one.

    Right padding of shorter rows is harmless: a padded position comes after every real one, so
    causality hides it from them.
    """
    rows, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads  # query head h reads kv head h // group (transformers' repeat_kv)
    scaling = dim ** -0.5 if scaling is None else scaling
    prefix.layers_read.append(module.layer_idx)
    if length > SHORT_ROWS:
        return _long_rows(module, query, key, value, prefix, scaling)
    q = query.reshape(rows, kv_heads, group * length, dim)
    own = torch.matmul(q, key.transpose(-1, -2)).mul_(scaling)  # [rows, kv, group * L, L]
    future = torch.ones(length, length, dtype=torch.bool, device=query.device).triu(1)
    own.view(rows, kv_heads, group, length, length).masked_fill_(future, float("-inf"))
    layer_keys, layer_values = prefix.keys[module.layer_idx], prefix.values[module.layer_idx]
    out = torch.empty_like(q)
    for owner, start, stop in prefix.segments:
        n, width = stop - start, prefix.lengths[owner]
        keys = layer_keys[owner, :, layer_keys.shape[2] - width:]  # [kv, P, d]: a view
        values = layer_values[owner, :, layer_values.shape[2] - width:]
        # all of this query's rows as one matmul per kv head: [kv, n * group * L, d] @ [kv, d, P]
        flat = q[start:stop].transpose(0, 1).reshape(kv_heads, n * group * length, dim)
        shared = torch.matmul(flat, keys.transpose(-1, -2)).mul_(scaling)
        shared = shared.view(kv_heads, n, group * length, width).transpose(0, 1)
        weights = torch.cat([shared, own[start:stop]], dim=-1).float().softmax(dim=-1).to(q.dtype)
        to_prefix, to_own = weights.split([width, length], dim=-1)
        mixed = torch.matmul(to_prefix.transpose(0, 1).reshape(kv_heads, n * group * length, width), values)
        out[start:stop] = mixed.view(kv_heads, n, group * length, dim).transpose(0, 1)
        out[start:stop] += torch.matmul(to_own, value[start:stop])
    return out.view(rows, heads, length, dim).transpose(1, 2)


def _long_rows(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               prefix: SharedPrefix, scaling: float) -> torch.Tensor:
    """Long rows: memory-efficient SDPA per query, its prefix keys expanded into each of its rows."""
    length, group = query.shape[2], query.shape[1] // key.shape[1]
    layer_keys, layer_values = prefix.keys[module.layer_idx], prefix.values[module.layer_idx]
    out = torch.empty_like(query)
    for owner, start, stop in prefix.segments:
        n, width = stop - start, prefix.lengths[owner]
        keys = layer_keys[owner, :, layer_keys.shape[2] - width:].expand(n, -1, -1, -1)
        values = layer_values[owner, :, layer_values.shape[2] - width:].expand(n, -1, -1, -1)
        keys = torch.cat([keys, key[start:stop]], dim=2).repeat_interleave(group, dim=1)
        values = torch.cat([values, value[start:stop]], dim=2).repeat_interleave(group, dim=1)
        mask = torch.ones(length, width + length, dtype=torch.bool, device=query.device).tril(width)
        out[start:stop] = F.scaled_dot_product_attention(query[start:stop], keys, values, attn_mask=mask,
                                                         scale=scaling)
    return out.transpose(1, 2)


def _dispatcher(original: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def dispatch(module, query, key, value, attention_mask, *, shared_prefix: SharedPrefix | None = None,
                 **kwargs):
        if shared_prefix is None:
            eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
            fallback = ALL_ATTENTION_FUNCTIONS.get_interface(original, eager)
            return fallback(module, query, key, value, attention_mask, **kwargs)
        if kwargs.get("softcap") is not None or kwargs.get("sliding_window") is not None:
            raise NotImplementedError("shared-prefix attention supports neither soft-capping nor sliding windows")
        return attention(module, query, key, value, shared_prefix, kwargs.get("scaling")), None

    return dispatch


def enable(model: nn.Module) -> bool:
    """Route ``model``'s attention through the dispatcher; False (and no change) where its attention
    does not go through transformers' attention interface, or uses sliding windows or soft-capping."""
    try:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:  # a transformers without the attention interface
        return False
    config = getattr(model, "config", None)
    original = getattr(config, "_attn_implementation", None)
    if not isinstance(original, str) or not getattr(model, "_supports_attention_backend", False):
        return False
    if (getattr(config, "sliding_window", None) or "sliding_attention" in (getattr(config, "layer_types", None) or ())
            or getattr(config, "attn_logit_softcapping", None)):
        return False  # attention this module does not reproduce
    if original.startswith(NAME_PREFIX):
        return True
    name = NAME_PREFIX + original
    if name not in ALL_ATTENTION_FUNCTIONS:
        ALL_ATTENTION_FUNCTIONS.register(name, _dispatcher(original))
    if original in ALL_MASK_ATTENTION_FUNCTIONS and name not in ALL_MASK_ATTENTION_FUNCTIONS:
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[original])
    config._attn_implementation = name
    return True
