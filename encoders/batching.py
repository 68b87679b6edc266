"""Batching by token budget with length bucketing.

Sorting by length before cutting batches keeps padding small, and capping
``longest * count`` keeps a batch of long items from spiking memory.
"""

from __future__ import annotations

from collections.abc import Sequence


def token_budget_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Index batches with ``max(length) * len(batch) <= budget``; an over-long item goes alone."""
    if budget < 1:
        raise ValueError("token budget must be positive")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = max(lengths[index], 1)  # sorted ascending: the newest item is the longest
        if current and longest * (len(current) + 1) > budget:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches
