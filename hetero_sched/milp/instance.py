"""The numbers a solver sees: configurations, GPUs, overheads and per-sequence costs (no model objects).

cost[i, c] = seq_latency_ms(L_i, config c) (inf where L_i > max_tokens(c)); overhead[c]; gpus[c] = tp·cp.
Dominated configurations are pruned (exactly: c is dropped when another c' has gpus ≤, overhead ≤ and
cost ≤ on every sequence — swapping c for c' in any plan keeps it feasible and no slower).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..latency import LatencyModel


@dataclass(kw_only=True, slots=True)
class Instance:
    lengths: np.ndarray   # (n,) tokens
    configs: list         # [(tp, cp)] of the C kept configurations
    gpus: np.ndarray      # (C,) tp·cp
    overhead: np.ndarray  # (C,) ms
    cost: np.ndarray      # (n, C) ms, inf where the sequence does not fit
    total_gpus: int
    pruned: int = 0       # configurations removed as dominated or useless

    @property
    def n(self) -> int:
        return len(self.lengths)

    def fits(self) -> np.ndarray:
        return np.isfinite(self.cost)

    def group_load(self, c: int, items) -> float:
        return float(self.overhead[c] + self.cost[list(items), c].sum())


def build_instance(lengths, lat: LatencyModel, prune: bool = True) -> Instance:
    """Price every sequence on every configuration of the cluster; raise when one fits nowhere."""
    lengths = np.asarray(check_lengths(lengths), dtype=np.int64)
    uniq, inverse = np.unique(lengths, return_inverse=True)
    configs, cost_u, over, g = [], [], [], []
    for tp, cp in lat.cluster.configs(lat.model):
        cap = lat.max_tokens(tp, cp)
        if cap < uniq[0]:
            continue
        if cp > 1 and uniq[-1] / cp < 1:  # fewer tokens than ranks: such a group is never useful
            continue
        col = np.where(uniq <= cap, lat.seq_latency_array(uniq, tp, cp), np.inf)
        configs.append((tp, cp))
        cost_u.append(col)
        over.append(lat.overhead_ms(tp, cp))
        g.append(tp * cp)
    if not configs or not np.isfinite(np.array(cost_u)).any(axis=0).all():
        raise_no_fit(lengths, lat)
    cost_u = np.array(cost_u).T
    inst_cfg = np.arange(len(configs))
    pruned = 0
    if prune:
        keep = _undominated(np.array(g), np.array(over), cost_u)
        pruned = len(configs) - keep.size
        inst_cfg = keep
    return Instance(lengths=lengths, configs=[configs[c] for c in inst_cfg], gpus=np.array(g)[inst_cfg],
                    overhead=np.array(over)[inst_cfg], cost=cost_u[inverse][:, inst_cfg],
                    total_gpus=lat.cluster.gpus, pruned=pruned)


def _undominated(g: np.ndarray, o: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Indices of configurations no other dominates (ties: the lower index survives)."""
    C = len(g)
    big = np.where(np.isfinite(cost), cost, 1e300)
    sample = big[np.unique(np.linspace(0, len(big) - 1, min(len(big), 16)).astype(int))]
    # cheap filter on a few lengths, then an exact check on all of them
    cand = (g[:, None] <= g[None, :]) & (o[:, None] <= o[None, :]) & \
           (sample[:, :, None] <= sample[:, None, :]).all(axis=0)  # cand[d, c]: d may dominate c
    np.fill_diagonal(cand, False)
    dominated = np.zeros(C, dtype=bool)
    for c in range(C):
        for d in np.flatnonzero(cand[:, c]):
            if dominated[d]:
                continue
            if (big[:, d] <= big[:, c]).all():
                equal = g[d] == g[c] and o[d] == o[c] and (big[:, d] == big[:, c]).all()
                if not equal or d < c:
                    dominated[c] = True
                    break
    return np.flatnonzero(~dominated)


def check_lengths(lengths) -> list[int]:
    out = list(lengths)
    if not out:
        raise ValueError("the batch is empty: give at least one sequence length")
    for i, x in enumerate(out):
        if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x <= 0:
            raise ValueError(f"sequence {i} has length {x!r}: lengths must be positive integers")
    return [int(x) for x in out]


def raise_no_fit(lengths, lat: LatencyModel) -> None:
    """ValueError naming the longest sequence that fits no configuration and the largest that does."""
    best = max(lat.max_tokens(tp, cp) for tp, cp in lat.cluster.configs(lat.model))
    for i, x in enumerate(lengths):
        if x > best:
            raise ValueError(f"sequence {i} has {int(x)} tokens; the largest that fits any (TP, CP) group of "
                             f"{lat.cluster.gpus} GPUs is {best} tokens")
    raise ValueError("no configuration can hold the batch")
