"""Micro-batch packing for the plan builder (the baselines' replica packers live in baselines/)."""
from __future__ import annotations

from collections.abc import Sequence


def pack_micro_batches(lengths: Sequence[int], ids: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing of sequences into micro-batches of at most `capacity` tokens."""
    if any(lengths[i] > capacity for i in ids):
        raise ValueError(f"a sequence exceeds the micro-batch capacity {capacity}")
    batches: list[list[int]] = []
    room: list[int] = []
    for i in sorted(ids, key=lambda i: (-lengths[i], i)):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                batches[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            batches.append([i])
            room.append(capacity - lengths[i])
    return batches
