"""Item text -> token ids cut to ``max_length``, counting what the cut dropped.

Each text is tokenized once (in Rust, in parallel); a long one is cut after tokenizing, keeping
its beginning (the title) and the model's special tokens, so ``source_tokens`` is the exact
untruncated length at no second tokenizer pass.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

from mixlm.schemas.errors import InputError


@dataclass(frozen=True)
class TokenizedItem:
    ids: list[int]  # at most max_length, special tokens included
    source_tokens: int  # the whole text's length, special tokens included

    @property
    def truncated(self) -> bool:
        return self.source_tokens > len(self.ids)


class ItemTokenizer:
    def __init__(self, tokenizer, max_length: int):
        """``tokenizer``: a transformers tokenizer backed by the ``tokenizers`` library (a tokenizer.json)."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise InputError(f"{type(tokenizer).__name__} is not a fast tokenizer; the encoder needs a tokenizer.json")
        self._backend = copy.deepcopy(backend)  # private copy: HF toggles truncation/padding on the shared one
        self._backend.no_truncation()
        self._backend.no_padding()
        self.n_special = self._backend.num_special_tokens_to_add(False)
        if max_length <= self.n_special:
            raise InputError(f"max_length {max_length} leaves no room for text after {self.n_special} special tokens")
        self.max_length = max_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def __call__(self, texts: Sequence[str]) -> list[TokenizedItem]:
        room = self.max_length - self.n_special
        items = []
        for encoding in self._backend.encode_batch_fast(list(texts), add_special_tokens=False):
            source_tokens = len(encoding.ids) + self.n_special
            if len(encoding.ids) > room:
                encoding.truncate(room)
            items.append(TokenizedItem(self._backend.post_process(encoding).ids, source_tokens))
        return items
