"""Batching by token budget with length bucketing.

A padded batch costs ``longest * count`` token positions, so capping that product bounds
memory whatever the item lengths; cutting batches from items sorted by length keeps the
padding small. The order is a pure function of the lengths (ties by index): deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from mixlm.schemas.errors import InputError


def token_budget_batches(lengths: Sequence[int], budget: int) -> Iterator[list[int]]:
    """Index batches with ``max(length) * len(batch) <= budget``; an item over budget goes alone."""
    if budget < 1:
        raise InputError(f"token budget must be positive, got {budget}")
    batch: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (lengths[i], i)):
        longest = max(lengths[index], 1)  # ascending order: the newest item is the batch's longest
        if batch and longest * (len(batch) + 1) > budget:
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch
