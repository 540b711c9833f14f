"""Groups → GPU ranks. A TP group never spans nodes; CP groups avoid node crossings where possible."""
from __future__ import annotations

from collections.abc import Sequence


def place_groups(shapes: Sequence[tuple[int, int]], gpus: int, gpus_per_node: int) -> list[list[int]]:
    """Ranks of each (tp, cp) group, TP-fastest (ranks[k*tp:(k+1)*tp] = CP rank k's TP group).

    First try: largest groups first, each at the first tp-aligned free block that stays inside one
    node when it fits in a node (block-aligned otherwise). If that packs badly, fall back to one
    contiguous layout ordered by decreasing TP, which always succeeds when Σ tp·cp ≤ gpus: each group
    then starts at a multiple of its tp (earlier sizes are multiples of larger powers of two), so no TP
    block crosses a node boundary (tp divides gpus_per_node)."""
    sizes = [tp * cp for tp, cp in shapes]
    if sum(sizes) > gpus:
        raise ValueError(f"groups need {sum(sizes)} GPUs, the cluster has {gpus}")
    for tp, _ in shapes:
        if gpus_per_node % tp:
            raise ValueError(f"tp={tp} does not divide gpus_per_node={gpus_per_node}")
    placed = _first_fit_in_nodes(shapes, gpus, gpus_per_node)
    return placed if placed is not None else _contiguous_by_tp(shapes)


def _first_fit_in_nodes(shapes, gpus, gpn) -> list[list[int]] | None:
    free = [True] * gpus
    out: list[list[int] | None] = [None] * len(shapes)
    order = sorted(range(len(shapes)), key=lambda j: (-shapes[j][0] * shapes[j][1], -shapes[j][0], j))
    for j in order:
        tp, cp = shapes[j]
        size = tp * cp
        step = gpn if size >= gpn else tp
        start = next((s for s in range(0, gpus - size + 1, step)
                      if all(free[s:s + size]) and (size > gpn or s // gpn == (s + size - 1) // gpn)), None)
        if start is None:
            return None
        free[start:start + size] = [False] * size
        out[j] = list(range(start, start + size))
    return out  # type: ignore[return-value]


def _contiguous_by_tp(shapes) -> list[list[int]]:
    order = sorted(range(len(shapes)), key=lambda j: (-shapes[j][0], -shapes[j][1], j))
    out: list[list[int]] = [[] for _ in shapes]
    offset = 0
    for j in order:
        size = shapes[j][0] * shapes[j][1]
        out[j] = list(range(offset, offset + size))
        offset += size
    return out


def nodes_spanned(ranks: Sequence[int], gpus_per_node: int) -> int:
    return len({r // gpus_per_node for r in ranks})


def tp_group_inside_node(ranks: Sequence[int], tp: int, gpus_per_node: int) -> bool:
    return all(nodes_spanned(ranks[k:k + tp], gpus_per_node) == 1 for k in range(0, len(ranks), tp))
