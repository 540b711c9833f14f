"""Groups → nodes → GPU ranks.

A cluster is a list of nodes (`node_capacities`: full nodes of gpus_per_node GPUs, then a partial last
node). Inside a node every GPU reaches every other over NVLink, so what matters is how many GPUs of
each node a group takes:
- an *intra-node* group (tp·cp ≤ a node) takes all its GPUs from one node;
- a *cross-node* group takes its cp TP blocks (tp GPUs each) from any nodes: a TP block never crosses.
A node assignment is `[(node, gpus), ...]` per group; `ranks_from_nodes` turns it into rank lists,
TP-fastest (ranks[k*tp:(k+1)*tp] is the TP group of CP rank k).
"""
from __future__ import annotations

from collections.abc import Sequence

NodeShare = list[tuple[int, int]]  # [(node index, GPUs taken there)]


def node_capacities(gpus: int, gpus_per_node: int) -> list[int]:
    """GPUs of each node: full nodes, then the partial last node (if any)."""
    full, rest = divmod(gpus, gpus_per_node)
    return [gpus_per_node] * full + ([rest] if rest else [])


class NodePacker:
    """Greedy packing of groups into nodes' free GPUs (best fit; exact placement is the MIP's job).

    Nodes are kept in buckets by their free GPU count, so a take costs O(gpus_per_node), not O(nodes)."""

    def __init__(self, caps: Sequence[int]) -> None:
        self.free = list(caps)
        self._bucket: list[list[int]] = [[] for _ in range(max(caps, default=0) + 1)]
        for n in reversed(range(len(caps))):
            self._bucket[caps[n]].append(n)  # a stack: the lowest node index on top

    def _move(self, n: int, gpus: int) -> None:
        bucket = self._bucket[self.free[n]]
        if bucket[-1] == n:
            bucket.pop()  # the usual case: the node on top of its bucket
        else:
            bucket.remove(n)
        self.free[n] -= gpus
        self._bucket[self.free[n]].append(n)

    def take(self, tp: int, cp: int, cross: bool) -> NodeShare | None:
        """Reserve GPUs for one group; None (and nothing reserved) when it cannot be placed."""
        size = tp * cp
        if not cross:
            f = next((f for f in range(size, len(self._bucket)) if self._bucket[f]), None)
            if f is None:
                return None
            n = self._bucket[f][-1]  # best fit: the fullest node that holds it
            self._move(n, size)
            return [(n, size)]
        share: dict[int, int] = {}
        need = cp
        # fill the nodes with the fewest whole blocks first: keeps empty nodes for intra-node groups
        for f in range(tp, len(self._bucket)):
            for n in reversed(self._bucket[f]):
                k = min(f // tp, need)
                share[n] = k * tp
                need -= k
                if not need:
                    break
            if not need:
                break
        if need:
            return None
        for n, g in share.items():
            self._move(n, g)
        return sorted(share.items())


def pack_nodes(shapes: Sequence[tuple[int, int, bool]], caps: Sequence[int],
               order: Sequence[int] | None = None) -> list[NodeShare] | None:
    """Node assignment of (tp, cp, cross) groups, or None if the greedy packer fails.

    Default order: intra-node groups largest first, then cross-node groups by decreasing tp."""
    if order is None:
        order = sorted(range(len(shapes)), key=lambda j: _packing_key(shapes[j], j))
    packer = NodePacker(caps)
    out: list[NodeShare | None] = [None] * len(shapes)
    for j in order:
        share = packer.take(*shapes[j])
        if share is None:
            return None
        out[j] = share
    return out  # type: ignore[return-value]


def _packing_key(shape: tuple[int, int, bool], j: int) -> tuple:
    tp, cp, cross = shape
    return (cross, 0 if cross else -tp * cp, -tp, j)


def ranks_from_nodes(tps: Sequence[int], shares: Sequence[NodeShare], gpus_per_node: int) -> list[list[int]]:
    """Rank lists from node assignments. Inside a node, pieces are laid out by decreasing tp, so each
    piece starts at a multiple of its tp (all tps are powers of two dividing the node size)."""
    pieces: dict[int, list[tuple[int, int]]] = {}
    for j, share in enumerate(shares):
        for node, g in share:
            pieces.setdefault(node, []).append((j, g))
    out: list[list[int]] = [[] for _ in shares]
    for node in sorted(pieces):
        offset = node * gpus_per_node
        for j, g in sorted(pieces[node], key=lambda p: (-tps[p[0]], p[0])):
            out[j] += list(range(offset, offset + g))
            offset += g
    return out


def place_groups(shapes: Sequence[tuple[int, int]], gpus: int, gpus_per_node: int) -> list[list[int]]:
    """Ranks of (tp, cp) groups: inside a node where the greedy packer manages it, else across nodes.

    Tries every group inside a node (those that fit one), then lets the groups that do not fit cross
    nodes, then a contiguous layout by decreasing TP (always succeeds when Σ tp·cp ≤ gpus: each group
    starts at a multiple of its tp, so no TP block crosses a node boundary)."""
    sizes = [tp * cp for tp, cp in shapes]
    if sum(sizes) > gpus:
        raise ValueError(f"groups need {sum(sizes)} GPUs, the cluster has {gpus}")
    for tp, _ in shapes:
        if gpus_per_node % tp:
            raise ValueError(f"tp={tp} does not divide gpus_per_node={gpus_per_node}")
    caps = node_capacities(gpus, gpus_per_node)
    inside = [(tp, cp, tp * cp > gpus_per_node) for tp, cp in shapes]
    shares = pack_nodes(inside, caps)
    if shares is None:
        shares = _intra_then_cross(inside, caps)
    if shares is not None:
        return ranks_from_nodes([tp for tp, _ in shapes], shares, gpus_per_node)
    return _contiguous_by_tp(shapes)


def _intra_then_cross(shapes, caps) -> list[NodeShare] | None:
    """Intra-node groups largest first while they fit a node; the others cross nodes."""
    packer = NodePacker(caps)
    out: list[NodeShare | None] = [None] * len(shapes)
    order = sorted(range(len(shapes)), key=lambda j: (-shapes[j][0] * shapes[j][1], -shapes[j][0], j))
    late = []
    for j in order:
        share = None if shapes[j][2] else packer.take(*shapes[j])
        if share is None:
            late.append(j)
        out[j] = share
    for j in sorted(late, key=lambda j: (-shapes[j][0], j)):
        out[j] = packer.take(shapes[j][0], shapes[j][1], True)
        if out[j] is None:
            return None
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
