"""The numbers a solver sees: configurations, GPUs, overheads and per-sequence costs (no model objects).

cost[i, c] = seq_latency_ms(L_i, config c) (inf where L_i > max_tokens(c)); overhead[c]; gpus[c] = tp·cp.
Dominated configurations are pruned (exactly: c is dropped when another c' has gpus ≤, overhead ≤ and
cost ≤ on every sequence — swapping c for c' in any plan keeps it feasible and no slower).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..latency import LatencyModel

# Input limits (measured in benchmarks/results/reliability_<yyyymm>.md): beyond them a clear ValueError,
# never a memory blow-up. The cost matrix holds distinct lengths x configurations float64 cells.
MAX_SOLVE_SEQUENCES = 65_536
MAX_SOLVE_GPUS = 4_096
MAX_COST_CELLS = 40_000_000  # 320 MB per copy of the cost matrix


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

    def subset(self, keep) -> Instance:
        """The same sequences on the configurations `keep` only."""
        keep = np.asarray(keep)
        return Instance(lengths=self.lengths, configs=[self.configs[c] for c in keep], gpus=self.gpus[keep],
                        overhead=self.overhead[keep], cost=self.cost[:, keep], total_gpus=self.total_gpus,
                        pruned=self.pruned + len(self.configs) - len(keep))

    def dominates(self, d: int, c: int) -> bool:
        """Config d is no worse than c: no more GPUs, no more overhead, no more cost on any sequence."""
        return bool(self.gpus[d] <= self.gpus[c] and self.overhead[d] <= self.overhead[c]
                    and (self.cost[:, d] <= self.cost[:, c]).all())

    def group_load(self, c: int, items) -> float:
        return float(self.overhead[c] + self.cost[list(items), c].sum())


def build_instance(lengths, lat: LatencyModel, prune: bool = True) -> Instance:
    """Price every sequence on every configuration of the cluster; raise when one fits nowhere."""
    lengths = np.asarray(check_lengths(lengths), dtype=np.int64)
    uniq, inverse = np.unique(lengths, return_inverse=True)
    check_size(len(lengths), len(uniq), lat)
    configs, columns, over, g = [], [], [], []
    for tp in lat.cluster.tp_degrees(lat.model):
        cps = np.array([cp for t, cp in lat.cluster.configs(lat.model) if t == tp
                        if lat.max_tokens(t, cp) >= uniq[0] and (cp == 1 or uniq[-1] >= cp)])
        if cps.size == 0:
            continue  # nothing fits, or fewer tokens than ranks: such groups are never useful
        caps = np.array([lat.max_tokens(tp, int(cp)) for cp in cps])
        table = np.where(uniq[:, None] <= caps[None, :], lat.cost_table(uniq, tp, cps), np.inf)
        configs += [(tp, int(cp)) for cp in cps]
        columns.append(table)
        over += [lat.overhead_ms(tp, int(cp)) for cp in cps]
        g += [tp * int(cp) for cp in cps]
    cost_u = np.hstack(columns) if columns else np.zeros((len(uniq), 0))
    if not configs or not np.isfinite(cost_u).any(axis=1).all():
        raise_no_fit(lengths, lat)
    full = Instance(lengths=lengths, configs=configs, gpus=np.array(g), overhead=np.array(over),
                    cost=cost_u[inverse], total_gpus=lat.cluster.gpus)
    # dominance is decided on the distinct lengths' costs: the same answer, fewer rows
    return full.subset(_undominated(full.gpus, full.overhead, cost_u)) if prune else full


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


def check_size(n: int, distinct: int, lat: LatencyModel) -> None:
    """Refuse instances past the supported size before allocating anything large."""
    if n > MAX_SOLVE_SEQUENCES:
        raise ValueError(f"the batch has {n} sequences; at most {MAX_SOLVE_SEQUENCES} are supported")
    if lat.cluster.gpus > MAX_SOLVE_GPUS:
        raise ValueError(f"the cluster has {lat.cluster.gpus} GPUs; at most {MAX_SOLVE_GPUS} are supported")
    cells = distinct * len(lat.cluster.configs(lat.model))
    if cells > MAX_COST_CELLS:
        raise ValueError(f"{distinct} distinct lengths x {len(lat.cluster.configs(lat.model))} configurations = "
                         f"{cells} costs > {MAX_COST_CELLS}: round lengths (e.g. to 64 tokens) or use fewer GPUs")


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
