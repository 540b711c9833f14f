"""The numbers a solver sees: configurations, GPUs, nodes, overheads and per-sequence costs.

A configuration is (tp, cp, cross, pp): `cross=False` sits inside one node (NVLink prices), `cross=True`
takes its cp·pp TP blocks from any nodes (ring and stage transfers priced on InfiniBand). A (tp, cp, pp)
with tp·cp·pp ≤ the largest node exists in both variants; a larger one only crosses; on a single node
nothing crosses. cost[i, c] = seq_latency_ms(L_i, config c) (inf where L_i > max_tokens(c)); overhead[c];
gpus[c] = tp·cp·pp; node_caps = GPUs of each node (a partial last node included). With pp > 1 the cost is
the last stage's work, a lower bound on what the sequence adds to the pipeline (the 1F1B simulation that
prices the plan adds fill, drain and stalls): solver bounds stay valid, and every plan found is priced by
the simulation before it is compared. `shape(c)` = (tp, cp·pp, cross): what placement sees (TP blocks);
`layout(c)` = tp·pp: GPUs per parameter copy, what the gradient sync depends on.

Pruning (say what was kept, `pruned` counts the rest):
- CP degrees that cannot help: beyond the degree at which the longest sequence stops getting faster on
  that (tp, variant) (shorter sequences gain less from more ranks);
- dominated configurations: c is dropped when some d has gpus ≤, overhead ≤, cost ≤ on every sequence
  AND can be placed wherever c was (d intra replacing an intra c; a cross d whose tp divides c's; a
  cross d inside an intra c's node space) — swapping c for d keeps every plan placeable and no slower.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from ..latency import LatencyModel
from ..latency.base import check_pp, config_name
from ..placement import node_capacities

# Input limits (measured in benchmarks/results/reliability_<yyyymm>.md and scale_<yyyymm>.md): beyond them a clear ValueError,
# never a memory blow-up. The cost matrix holds distinct lengths x configurations float64 cells.
MAX_SOLVE_SEQUENCES = 65_536
MAX_SOLVE_GPUS = 16_384
MAX_COST_CELLS = 40_000_000  # 320 MB per copy of the cost matrix


@dataclass(kw_only=True, slots=True)
class Instance:
    lengths: np.ndarray   # (n,) tokens
    configs: list         # [(tp, cp, cross, pp)] of the C kept configurations
    gpus: np.ndarray      # (C,) tp·cp·pp
    overhead: np.ndarray  # (C,) ms
    cost: np.ndarray      # (n, C) ms, inf where the sequence does not fit
    total_gpus: int
    node_caps: list = None  # GPUs per node; default: one node holding every GPU
    pruned: int = 0       # configurations removed as dominated or useless
    floor: np.ndarray | None = None  # (distinct lengths, C), sorted: lower bounds of the true costs where cost
    #                                   is an estimate (bounds read distinct lengths only; 75 MB less at 16,384 GPUs)
    pricer: object = None  # with floor: (config) -> that configuration's true cost column
    _exact: dict | None = None
    _rows: tuple | None = None

    def __post_init__(self) -> None:
        if self.node_caps is None:
            self.node_caps = [self.total_gpus]
        self.configs = [_as_config(c) for c in self.configs]

    @property
    def n(self) -> int:
        return len(self.lengths)

    def subset(self, keep) -> Instance:
        """The same sequences on the configurations `keep` only."""
        keep = np.asarray(keep, dtype=int)
        return Instance(lengths=self.lengths, configs=[self.configs[c] for c in keep], gpus=self.gpus[keep],
                        overhead=self.overhead[keep], cost=self.cost[:, keep], total_gpus=self.total_gpus,
                        node_caps=self.node_caps, pruned=self.pruned + len(self.configs) - len(keep),
                        floor=None if self.floor is None else self.floor[:, keep], pricer=self.pricer)

    def distinct_lower_rows(self, first: np.ndarray) -> np.ndarray:
        """What bounds are computed on, one row per distinct length (`first`: each one's first sequence, in
        increasing length): the costs (copied once per instance), or where they are estimates their floors."""
        if self.floor is not None:
            return self.floor
        if self._rows is None or self._rows[0] is not first:
            self._rows = (first, self.cost[first])
        return self._rows[1]

    def exact_cost(self, c: int) -> np.ndarray:
        """Column c's true costs (the column itself unless the costs are estimates: then priced once)."""
        if self.floor is None:
            return self.cost[:, c]
        if self._exact is None:
            self._exact = {}
        cfg = self.configs[c]
        if cfg not in self._exact:
            self._exact[cfg] = self.pricer(cfg)
        return self._exact[cfg]

    def shape(self, c: int) -> tuple[int, int, bool]:
        """(tp, TP blocks, cross) of configuration c: what placement sees."""
        tp, cp, cross, pp = self.configs[c]
        return tp, cp * pp, cross

    def layout(self, c: int) -> int:
        """GPUs per parameter copy of configuration c (tp·pp)."""
        return self.configs[c][0] * self.configs[c][3]

    @property
    def pipelined(self) -> bool:
        return any(cfg[3] > 1 for cfg in self.configs)

    def dominates(self, d: int, c: int) -> bool:
        """Config d is no worse than c: no more GPUs, overhead or cost on any sequence, placeable where c was."""
        return bool(self.gpus[d] <= self.gpus[c] and self.overhead[d] <= self.overhead[c]
                    and placeable_instead(self.configs[d], self.configs[c])
                    and (self.cost[:, d] <= self.cost[:, c]).all())

    def index(self, tp: int, cp: int, cross: bool, pp: int = 1) -> int:
        """Column of configuration (tp, cp, cross, pp); ValueError when it is not in the instance."""
        try:
            return self.configs.index((tp, cp, bool(cross), pp))
        except ValueError:
            raise ValueError(f"{config_name(tp, cp, pp)} ({'cross-node' if cross else 'intra-node'}) is not a "
                             "configuration of this instance") from None

    def group_load(self, c: int, items) -> float:
        return float(self.overhead[c] + self.cost[list(items), c].sum())


def _as_config(c) -> tuple[int, int, bool, int]:
    """(tp, cp), (tp, cp, cross) or (tp, cp, cross, pp) → (tp, cp, cross, pp)."""
    c = tuple(c)
    return (int(c[0]), int(c[1]), bool(c[2]) if len(c) > 2 else False, int(c[3]) if len(c) > 3 else 1)


def placeable_instead(d: tuple, c: tuple) -> bool:
    """Group d can take c's GPUs (given gpus_d ≤ gpus_c); see _placeable_matrix."""
    return bool(_placeable_matrix([d, c])[0, 1])


def build_instance(lengths, lat: LatencyModel, prune: bool = True,
                   only: tuple | None = None, all_cps: bool = False, pp_degrees=None,
                   grid: bool = False) -> Instance:
    """Price every sequence on every configuration worth pricing; raise when one fits nowhere.

    prune=False keeps dominated configurations (CP degrees that cannot help are never priced);
    only=(tp, cp) or (tp, cp, pp) prices that configuration alone (both variants where they exist),
    whether it helps or not; all_cps=True prices every CP degree (the exhaustive oracle's configuration
    space); pp_degrees: the pipeline degrees searched (default: see check_pp_degrees). Pricing is vectorised and always completes (a plan, even the warm start, needs it).
    grid=True (a short limit's pricing): where the distinct lengths are many (more than GRID_SAVING times
    the grid's points), only a geometric grid of them is priced (see grid_costs); the costs are then
    estimates and `floor` bounds them from below."""
    lengths = np.asarray(check_lengths(lengths), dtype=np.int64)
    uniq, inverse = np.unique(lengths, return_inverse=True)
    check_size(len(lengths), 0, lat)
    caps_nodes = node_capacities(lat.cluster.gpus, lat.cluster.gpus_per_node)
    degrees = check_pp_degrees(pp_degrees, lat) if only is None else [1]
    if only is None:
        layouts = [lay for lay in lat.fitting_layouts() if lay[1] in degrees]
        kinds = [(tp, pp, cross, useful_cps(lat, tp, cross, uniq, caps_nodes, all_cps, pp))
                 for tp, pp in layouts for cross in _variants(caps_nodes)]
    else:
        tp, cp, pp = (*only, 1) if len(only) == 2 else only
        kinds = [(tp, pp, cross, np.array([cp])) for cross in _variants(caps_nodes)
                 if (tp * cp * pp <= max(caps_nodes) or cross) and (cp * pp > 1 or not cross)]
    check_size(len(lengths), len(uniq) * sum(k[3].size for k in kinds), lat)
    points = grid_points(uniq) if grid and only is None else None
    kinds = [k for k in kinds if k[3].size]  # (none: nothing fits, or fewer tokens than ranks: never useful)
    width = sum(k[3].size for k in kinds)
    cost_u = np.empty((len(uniq), width))  # filled in place, kind by kind (no stacking copies: 51 MB each
    floor_u = np.empty((len(uniq), width)) if points is not None else None  # for a 1M-token batch on 4,096 GPUs)
    configs, over, g = [], [], []
    for tp, pp, cross, cps in kinds:
        caps = np.array([lat.max_tokens(tp, int(cp), pp) for cp in cps])
        cols = slice(len(configs), len(configs) + cps.size)
        if points is None:
            cost_u[:, cols] = lat.cost_table(uniq, tp, cps, cross, pp)
        else:
            cost_u[:, cols], floor_u[:, cols] = grid_costs(uniq, points, lat, tp, cps, cross, pp)
        for table in (cost_u, floor_u) if points is not None else (cost_u,):
            view = table[:, cols]
            view[uniq[:, None] > caps[None, :]] = np.inf
        configs += [(tp, int(cp), cross, pp) for cp in cps]
        over += lat.overhead_array(tp, cps, cross, pp).tolist()
        g += [tp * int(cp) * pp for cp in cps]
    if only is None and (not configs or not np.isfinite(cost_u).any(axis=1).all()):
        raise_no_fit(lengths, lat, pp_degrees)
    full = Instance(lengths=lengths, configs=configs, gpus=np.array(g), overhead=np.array(over),
                    cost=cost_u[inverse], total_gpus=lat.cluster.gpus, node_caps=caps_nodes,
                    pruned=_cp_degrees_not_priced(lat, caps_nodes, len(configs), degrees))
    if points is not None:
        full.floor = floor_u
        full.pricer = lambda cfg: _true_column(lat, uniq, cfg)[inverse]
    if not prune:
        return full
    # dominance is decided on the distinct lengths' costs: the same answer, fewer rows
    return full.subset(_undominated(full.gpus, full.overhead, cost_u, full.configs))


GRID_RATIO = 1.02   # grid pricing: buckets of lengths 2 % wide (log scale), each priced at its least and largest
GRID_SAVING = 3     # ... used only where that prices at most a third of the distinct lengths


def grid_points(uniq: np.ndarray) -> np.ndarray | None:
    """Indices into the sorted distinct lengths of the grid priced instead of all of them: the least and
    the largest length of each GRID_RATIO bucket (log scale), so every length lies between two grid
    lengths at most 2 % apart (a bucket's own, or the largest of one and the least of the next when it
    is itself one of them); None when that saves too little."""
    bucket = np.floor(np.log(uniq / uniq[0]) / np.log(GRID_RATIO)).astype(np.int64)
    starts = np.r_[True, bucket[1:] != bucket[:-1]]
    ends = np.r_[bucket[1:] != bucket[:-1], True]
    points = np.flatnonzero(starts | ends)
    return points if GRID_SAVING * len(points) <= len(uniq) else None


def grid_costs(uniq: np.ndarray, points: np.ndarray, lat: LatencyModel, tp: int, cps: np.ndarray, cross: bool,
               pp: int) -> tuple[np.ndarray, np.ndarray]:
    """(estimate, floor) of every distinct length's cost on (tp, cps, cross, pp), pricing the grid alone.
    Estimate: forward + backward and the recompute of every layer interpolated linearly between the grid
    lengths around (both smooth in the length: the attention's quadratic term moves them by ~(2 %)²/8 of
    a cost between points 2 % apart), the recompute charged at the length's own k (a step in the length,
    computed exactly). Floor: the cost of the grid length at or below (costs never fall as a sequence
    grows: every kernel time, ring transfer and k is nondecreasing in its tokens), a valid lower bound.
    A length between two buckets' grid lengths (which may be far apart: empty buckets between) is itself
    a grid length, so interpolation spans at most one bucket."""
    G = uniq[points]
    fwd, rec_all, bwd, k_grid = lat.cost_parts_table(G, tp, cps, cross, pp)
    grid_cost = lat.cost_of_parts(fwd, rec_all, bwd, k_grid)  # the true costs of the grid lengths
    below = np.searchsorted(G, uniq, side="right") - 1           # the grid length ≤ each length
    above = np.minimum(below + 1, len(G) - 1)
    span = np.maximum(G[above] - G[below], 1)
    w = ((uniq - G[below]) / span)[:, None]
    fixed = fwd + bwd
    estimate = (1 - w) * fixed[below] + w * fixed[above]
    rec = (1 - w) * rec_all[below] + w * rec_all[above]
    k = lat.recompute_layers_array(uniq[:, None], tp, cps[None, :].astype(np.int64), pp)
    estimate = lat.cost_of_parts(estimate, rec, 0.0, k)
    exact = np.zeros(len(uniq), dtype=bool)
    exact[points] = True
    return np.where(exact[:, None], grid_cost[below], estimate), grid_cost[below]


def _true_column(lat: LatencyModel, uniq: np.ndarray, cfg: tuple) -> np.ndarray:
    """The distinct lengths' true costs on one configuration (inf where a length does not fit)."""
    tp, cp, cross, pp = cfg
    cost = lat.cost_table(uniq, tp, np.array([cp]), cross, pp)[:, 0]
    return np.where(uniq <= lat.max_tokens(tp, cp, pp), cost, np.inf)


def _variants(caps_nodes: list[int]) -> tuple[bool, ...]:
    return (False, True) if len(caps_nodes) > 1 else (False,)


def check_pp_degrees(pp_degrees, lat: LatencyModel) -> list[int]:
    """The pipeline degrees to search: each must split the layers evenly (ValueError naming it otherwise);
    those beyond the cluster are dropped. Default: none (pp = 1) when the model fits without stages, else
    every divisor of the layers with which it fits. Stages cost a fill-and-drain bubble and the LM head's
    imbalance and save only memory (weights split over stages), and the solver's costs for them are lower
    bounds (the 1F1B simulation prices the plans): searched when asked for, or when memory needs them."""
    if pp_degrees is None:
        fitting = sorted({pp for _, pp in lat.fitting_layouts()})
        return [1] if 1 in fitting else fitting
    if isinstance(pp_degrees, (int, np.integer)) or not len(pp_degrees):
        raise ValueError(f"pp_degrees={pp_degrees!r}: give a non-empty list of pipeline degrees, e.g. (1, 2, 4)")
    for pp in pp_degrees:
        check_pp(pp, lat.model.layers)
    kept = sorted({int(pp) for pp in pp_degrees if pp <= lat.cluster.gpus})
    if not kept:
        raise ValueError(f"pp_degrees {list(pp_degrees)}: {min(pp_degrees)} pipeline stages need at least "
                         f"{min(pp_degrees)} GPUs; the cluster has {lat.cluster.gpus}")
    return kept


def useful_cps(lat: LatencyModel, tp: int, cross: bool, uniq: np.ndarray, caps_nodes: list[int],
               all_cps: bool = False, pp: int = 1) -> np.ndarray:
    """CP degrees of (tp, variant) worth pricing: placeable, holding the shortest sequence, and no more than
    the degree at which the longest sequence is fastest. (A cap at ⌈L_max/128⌉ ranks, one attention tile
    each, is not safe: fuzzing found 92-token sequences that still run faster on 2 ranks, whose linear
    layers halve.)"""
    if cross:  # TP blocks the cluster holds (cp·pp per group); one block never crosses
        most, least = sum(c // tp for c in caps_nodes) // pp, 2 if pp == 1 else 1
    else:
        most, least = max(caps_nodes) // (tp * pp), 1
    # max_tokens never falls as CP ranks are added: the degrees holding a length are a suffix (bisected,
    # not scanned: 4096 GPUs give 4096 CP degrees of TP1 across nodes)
    cps = np.arange(_least_holding(lat, tp, least, most, uniq[0], pp), most + 1, dtype=int)
    if cps.size <= 1 or all_cps:
        return cps
    first = _least_holding(lat, tp, int(cps[0]), most, uniq[-1], pp)
    if first > most:
        return cps
    return cps[cps <= _fastest_cp(lat, tp, cross, first, most, int(uniq[-1]), pp)]


_FASTEST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # per step model: {(tp, cross, cps, L): cp}


def _fastest_cp(lat: LatencyModel, tp: int, cross: bool, first: int, most: int, length: int, pp: int = 1) -> int:
    """The CP degree in first..most on which a sequence of `length` tokens runs fastest (overhead
    included), remembered per step model: a step of a dataset mostly has the same longest sequence (the
    context). Every degree is priced in two array passes (one overhead_ms call per degree took a third
    of pricing 4,096 sequences on 1,024 GPUs)."""
    memo = _FASTEST.setdefault(lat, {})
    key = (tp, cross, first, most, length, pp)
    if key not in memo:
        cps = np.arange(first, most + 1)
        total = lat.cost_table(np.array([length]), tp, cps, cross, pp)[0] + lat.overhead_array(tp, cps, cross, pp)
        memo[key] = int(cps[int(np.argmin(total))])  # the first (least) degree among equals
    return memo[key]


def _least_holding(lat: LatencyModel, tp: int, least: int, most: int, length: int, pp: int = 1) -> int:
    """The least cp in least..most with max_tokens(tp, cp) ≥ length (most + 1 when none): bisection on
    max_tokens, nondecreasing in cp (each rank adds memory)."""
    lo, hi = least, most + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if lat.max_tokens(tp, mid, pp) >= length:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _cp_degrees_not_priced(lat: LatencyModel, caps_nodes: list[int], priced: int, degrees=(1,)) -> int:
    every = sum(len(_variants(caps_nodes)) * (lat.cluster.gpus // tp) for tp in lat.cluster.tp_degrees(lat.model))
    every += sum(len(_variants(caps_nodes)) * (lat.cluster.gpus // (tp * pp)) for tp, pp in lat.layouts()
                 if pp > 1 and pp in degrees)
    return max(0, every - priced)


def _undominated(g: np.ndarray, o: np.ndarray, cost: np.ndarray, configs: list | None = None) -> np.ndarray:
    """Indices of configurations no other dominates (ties: the lower index survives)."""
    C = len(g)
    big = np.where(np.isfinite(cost), cost, 1e300)
    sample = big[np.unique(np.linspace(0, len(big) - 1, min(len(big), 16)).astype(int))]
    # cheap filter on a few lengths, then an exact check on all of them
    cand = (g[:, None] <= g[None, :]) & (o[:, None] <= o[None, :]) & \
           (sample[:, :, None] <= sample[:, None, :]).all(axis=0)  # cand[d, c]: d may dominate c
    if configs is not None:
        cand &= _placeable_matrix(configs)
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


def _placeable_matrix(configs: list) -> np.ndarray:
    """[d, c]: group d can take group c's GPUs (given gpus_d ≤ gpus_c): both inside a node; or d crosses and
    its TP blocks tile c's (tp_d | tp_c) or c's node space (c intra: any GPUs of one node hold d's blocks)."""
    tp = np.array([c[0] for c in configs])
    cross = np.array([c[2] if len(c) > 2 else False for c in configs], dtype=bool)
    d_cross, c_cross = cross[:, None], cross[None, :]
    divides = (tp[None, :] % tp[:, None]) == 0
    return np.where(d_cross, ~c_cross | divides, ~c_cross)


def check_size(n: int, cells: int, lat: LatencyModel) -> None:
    """Refuse instances past the supported size before allocating anything large."""
    if n > MAX_SOLVE_SEQUENCES:
        raise ValueError(f"the batch has {n} sequences; at most {MAX_SOLVE_SEQUENCES} are supported")
    if lat.cluster.gpus > MAX_SOLVE_GPUS:
        raise ValueError(f"the cluster has {lat.cluster.gpus} GPUs; at most {MAX_SOLVE_GPUS} are supported (the "
                         "largest cluster whose time and memory were measured: 65,536 sequences planned on a 10 s "
                         "limit in under 11 s and 0.7 GB; plan a larger job as several clusters)")
    if cells > MAX_COST_CELLS:
        raise ValueError(f"{cells} costs (distinct lengths x configurations worth pricing) > {MAX_COST_CELLS}: "
                         "round the lengths (--round-lengths 64) or use fewer GPUs")


def check_lengths(lengths) -> list[int]:
    if isinstance(lengths, np.ndarray) and lengths.ndim == 1 and lengths.dtype.kind in "iu" \
            and lengths.size and lengths.min() > 0:
        return lengths.tolist()  # an integer array: checked at once (a step of 16K sequences, every solve)
    out = list(lengths)
    if not out:
        raise ValueError("the batch is empty: give at least one sequence length")
    for i, x in enumerate(out):
        if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x <= 0:
            raise ValueError(f"sequence {i} has length {x!r}: lengths must be positive integers")
    return [int(x) for x in out]


def largest_sequence(lat: LatencyModel, pp_degrees=None) -> int:
    """The most tokens any group of the cluster holds with these pipeline degrees; ValueError when the
    model fits with none of them."""
    allowed = check_pp_degrees(pp_degrees, lat)
    layouts = [(tp, pp) for tp, pp in lat.fitting_layouts() if pp in allowed]
    if not layouts:
        raise ValueError(f"{lat.model.name} fits on no (TP, PP) with pipeline degrees {allowed} on {lat.cluster.gpus} "
                         f"GPUs; it fits with {sorted({pp for _, pp in lat.fitting_layouts()})}")
    return max(lat.max_tokens(tp, lat.cluster.gpus // (tp * pp), pp) for tp, pp in layouts)


def raise_no_fit(lengths, lat: LatencyModel, pp_degrees=None) -> None:
    """ValueError naming the longest sequence that fits no configuration and the largest that does."""
    best = largest_sequence(lat, pp_degrees)
    for i, x in enumerate(lengths):
        if x > best:
            raise ValueError(f"sequence {i} has {int(x)} tokens; the largest that fits any (TP, CP, PP) group of "
                             f"{lat.cluster.gpus} GPUs is {best} tokens")
    raise ValueError("no configuration can hold the batch")
