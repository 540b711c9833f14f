"""Greedy packers shared by the WLB-LLM baseline, the warm start and the plan builder."""
from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np


def least_loaded_assignment(costs: Sequence[float], bins: int, start: float = 0.0) -> list[list[int]]:
    """Longest-processing-time first: items by decreasing cost, each onto the least-loaded bin.

    Returns the item indices of each bin. Ties go to the lower bin index (deterministic)."""
    if bins <= 0:
        raise ValueError(f"bins must be positive, got {bins!r}")
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    heap = [(start, b) for b in range(bins)]
    out: list[list[int]] = [[] for _ in range(bins)]
    for i in order:
        load, b = heapq.heappop(heap)
        out[b].append(i)
        heapq.heappush(heap, (load + costs[i], b))
    return out


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


def earliest_finish_assignment(cost: np.ndarray, group_config: np.ndarray, start_load: np.ndarray,
                               order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Assign items (in `order`) one by one to the group where they would finish first.

    cost: (n, C) per-item cost per config (inf where it does not fit); group_config: (G,) config of
    each group; start_load: (G,) initial loads (the overheads). Returns (group of each item, loads)."""
    loads = start_load.astype(float).copy()
    where = np.full(cost.shape[0], -1)
    for i in order:
        finish = loads + cost[i, group_config]
        g = int(np.argmin(finish))
        if not np.isfinite(finish[g]):
            raise ValueError(f"item {int(i)} fits no group")
        where[i] = g
        loads[g] = finish[g]
    return where, loads
