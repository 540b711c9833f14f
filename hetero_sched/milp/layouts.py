"""Step bounds by sync layout: every plan belongs to one family (t, mixed).

The sync a plan pays depends on its smallest TP degree t (the layout): a plan whose groups all have TP t
("pure") gathers nothing before the reduce-scatter; a plan that also holds a larger TP ("mixed") first
gathers that group's gradient shards to the layout. So, for the step objective,

    step ≥ min over families f of  bound_f + sync_lower(t_f, bound_f, mixed_f),

where bound_f is a makespan bound over the family's plans: for mixed t, the bound of every plan with
TP ≥ t (the slice the search covers); for pure t, the bound of the plans with TP t only, which is
higher (fewer configurations) and often what lifts the step bound, since the mixed families pay the
extra gather. The bound is only as high as its lowest family, so the time left after the searches
goes to the pattern LP of whichever family is lowest at each moment (tighten). With a core to spare, the
pure family's LP runs in a worker process from the start of its slice's search (see remote), and tighten
reads it while raising the others here.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from .bounds import overhead_area_bound
from .patterns import PatternBound
from .remote import RemoteBound

CHUNK_S = 1.0  # pattern LP time per turn before the lowest family is chosen again
POLL_S = 0.05  # how often a family searched in a worker is read while nothing is left to do here
PATIENCE_SHARE = 0.35  # of the time left: how long one trial may stay open before a lower one is tried


TABLE_CELLS = 2_000_000  # items x configurations x recompute levels priced for the waits, at most
BUCKET_CELLS = TABLE_CELLS  # distinct lengths x configurations x levels beyond which lengths are bucketed


@dataclass
class Family:
    t: int
    mixed: bool
    bound: float
    search: PatternBound | None = None
    start: Callable | None = None  # start(upper) -> PatternBound | None, built when first needed
    remote: RemoteBound | None = None  # or its pattern LP searched in a worker
    forward_cap: float = math.inf  # no first micro-batch of this family's plans hides more (ms, net_forward_caps)
    delayed: float = 0.0  # a bound on max over groups of (own-class time + what the first micro-batch costs it):
    # the all-gather wait and its extra recompute (delay_area_bound, first_penalties)
    grouped: float = 0.0  # a step bound from the group count's buckets (groups.grouped_step_bound)

    def poll(self) -> None:
        """Read the worker's bound; one that failed hands the family back to a search here."""
        if self.remote is not None:
            self.bound = max(self.bound, self.remote.poll())
            if self.remote.failed:
                self.stop_remote()

    def stop_remote(self) -> None:
        if self.remote is not None:
            self.bound = max(self.bound, self.remote.close())
            self.remote = None

    @property
    def open(self) -> bool:
        """Its own pattern LP (here) can still be raised."""
        return self.remote is None and ((self.search is not None and not self.search.exhausted)
                                        or (self.search is None and self.start is not None))

    def step(self, lat) -> float:
        return max(self.step_at(lat, self.bound), self.step_after_waits(lat), self.grouped)

    def step_after_waits(self, lat) -> float:
        """The step bound from `delayed` (the all-gather waits already in it): the reduce-scatter after."""
        if not math.isfinite(self.delayed):
            return math.inf
        if self.delayed <= 0:
            return 0.0
        return self._after_waits(lat, self.delayed)

    def _after_waits(self, lat, delayed: float) -> float:
        return delayed + lat.sync_exposed_lower_ms(self.t, delayed, mixed=self.mixed, waits_included=True)

    def step_at(self, lat, makespan: float) -> float:
        """The step bound of this family's plans were its makespan bound `makespan`."""
        if not math.isfinite(makespan):
            return math.inf
        return makespan + lat.sync_exposed_lower_ms(self.t, makespan, mixed=self.mixed,
                                                    first_forward_max_ms=self.forward_cap)

    def delayed_for(self, lat, step: float) -> float:
        """The `delayed` at which step_after_waits reaches `step` (it rises with delayed)."""
        return _reaching(lambda d: self._after_waits(lat, d), 0.0, step, step)

    def top(self, lat, best_step: float) -> float:
        """The makespan at which this family's step bound reaches best_step: no need to prove more."""
        return _reaching(lambda m: self.step_at(lat, m), self.bound, best_step, best_step)

    @property
    def name(self) -> str:
        return f"TP{self.t} {'mixed' if self.mixed else 'only'}"


def _reaching(rising, lo: float, hi: float, target: float) -> float:
    """Bisection on a rising function: the least x in [lo, hi] (to 50 halvings) with rising(x) ≥ target."""
    for _ in range(50):
        mid = (lo + hi) / 2
        if rising(mid) < target:
            lo = mid
        else:
            hi = mid
    return hi


LEVELS_MAX = 33  # recompute levels priced in net_forward_caps, at most (stride 1 up to 32 layers: exact)
STRIDE_MAX = 4  # a coarser stride proves too little to be worth its time
BUCKET_RATIO = 1.02  # lengths within 2 % of each other share an item where the distinct lengths are too many


@dataclass
class ForwardTables:
    """What the waits bound prices, per item: a distinct length, or (where the distinct lengths x
    configurations x recompute levels would pass BUCKET_CELLS) a bucket of lengths within
    BUCKET_RATIO of each other, whose least and largest lengths are priced: every quantity the bound needs
    is monotone in the length (forward, recompute, own class), so the bucket's ends bracket each member."""
    lo: np.ndarray      # (B,) least length of each item
    hi: np.ndarray      # (B,) largest length
    counts: np.ndarray  # (B,) sequences in it
    tokens: np.ndarray  # (B,) their tokens
    item: np.ndarray    # (U,) the item of each distinct length (increasing)
    parts: list         # per configuration: (forward at lo, at hi, recompute of every layer at lo, own class at lo, at hi)
    stride: int         # recompute levels priced: 0, stride, 2·stride, …

    def of(self, cols) -> ForwardTables:
        """The same items on configurations cols only."""
        return replace(self, parts=[self.parts[c] for c in cols])


def _level_stride(layers: int, cells_per_level: int = 0) -> int:
    """Levels k are priced in strides (the stride's lowest k for the extra, its highest for the room: a cap
    for every k in between). Stride 1 is exact: a stride of 4 left the cap of 1-GPU groups at 297 ms
    where no micro-batch without a long sequence reaches 221 ms (64 GPUs, llama3-8b). Coarser where the
    items and the configurations are many (cells_per_level: items x configurations), so that the tables
    stay within TABLE_CELLS."""
    stride = max(1, -(-layers // (LEVELS_MAX - 1)))
    while cells_per_level * (layers // stride + 1) > TABLE_CELLS and stride < layers:
        stride += 1
    return stride


def forward_tables(lengths, configs, lat) -> ForwardTables | None:
    """The waits bound's items (distinct lengths, or buckets of them: see ForwardTables) priced on every
    configuration; None without the overlap, or when even buckets would need a stride beyond STRIDE_MAX
    times the model's finest one (see _level_stride)."""
    uniq, counts = np.unique(np.asarray(lengths, dtype=np.int64), return_counts=True)
    layers = lat.model.layers
    item = np.arange(uniq.size)
    if uniq.size * len(configs) * (layers // _level_stride(layers) + 1) > BUCKET_CELLS:
        bucket = np.floor(np.log(uniq) / np.log(BUCKET_RATIO)).astype(np.int64)
        item = np.r_[0, np.cumsum(np.diff(bucket) > 0)]
    starts = np.flatnonzero(np.r_[True, np.diff(item) > 0])
    lo, hi = uniq[starts], uniq[np.r_[starts[1:] - 1, uniq.size - 1]]
    stride = _level_stride(layers, lo.size * len(configs))
    if not lat.overlap_param_gather or stride > STRIDE_MAX * _level_stride(layers):
        return None
    ends = np.unique(np.r_[lo, hi])
    parts = []
    for tp, cp, cross, _ in configs:
        fwd, rec_all, _ = lat.seq_parts_array(ends, tp, cp, cross, recompute_layers=layers)
        own = lat.recompute_layers_array(ends, tp, cp)
        at_lo, at_hi = np.searchsorted(ends, lo), np.searchsorted(ends, hi)
        parts.append((fwd[at_lo], fwd[at_hi], rec_all[at_lo], own[at_lo], own[at_hi]))
    return ForwardTables(lo, hi, np.add.reduceat(counts, starts), np.add.reduceat(uniq * counts, starts), item,
                         parts, stride)


def net_forward_caps(tables: ForwardTables, configs, lat) -> np.ndarray:
    """For each configuration (tables.parts[j] for configs[j]), a cap on what a group's first micro-batch
    can hide of the overlapped parameter all-gather: its forward minus the extra recompute it pays for
    being large. A micro-batch recomputing k layers holds ≤ tokens_cap(k) tokens, and each of its
    sequences pays (k − k_i)/layers of its own recompute beyond its own class k_i; forward minus that
    extra, summed, is at most a fractional knapsack (weights: tokens) — taken over levels k (in strides:
    the stride's lowest k for the extra, its highest for the room), plus the overhead's forward part. An
    item's value per token is taken at most: its largest length's forward over its least length, less its
    least extra (least recompute per token, largest own class). The delay the all-gather imposes falls
    with this net forward (see first_penalties, which also charges the extra). Returns (C,)."""
    levels = _levels(lat.model.layers, tables.stride)
    kept = np.ones((1, tables.lo.size), dtype=bool)
    return np.array([lat.overhead_parts(tp, cp, cross)[0] + _net_knapsacks(tables, part, lat, tp, cp, levels, 1.0,
                                                                            kept)[0].max()
                     for (tp, cp, cross, _), part in zip(configs, tables.parts)])


HIDE_SHARES = (0.4, 0.7, 1.0)  # the shares P at which first_penalties weighs a forward against its extra (1: the cap)
PENALTY_STRIDE = 2  # recompute levels per stride for P < 1, at least (256 GPUs x 1,024: 1.5x faster than 1,
                    # the same bound)


def first_penalties(tables: ForwardTables, configs, lat, allgather: float, keep=None) -> np.ndarray:
    """For each configuration (tables.parts[j] for configs[j]), a lower bound on what any group of it pays for
    its first micro-batch beyond its sequences' own-class time: that micro-batch's extra recompute X plus the
    all-gather's wait delay(F) = max_p (c_p − F·pos_p)⁺ (F its forward; one piece per layer: see
    LatencyModel.least_gather_delays). For weights w_p ≥ 0 with Σ w_p ≤ 1 (a max is at least any such mean),

        X + delay(F) ≥ Σ w_p·c_p − (P·F − X),   P = Σ w_p·pos_p,

    and the most Σ w_p·c_p can be for a given P is ĉ(P), the upper concave envelope of the points (pos_p, c_p)
    and (0, 0). Over a micro-batch recomputing k layers, P·F − X is at most a fractional knapsack (room
    tokens_cap(k), value per token P·forward − extra, taken at most as in net_forward_caps), so such a group
    pays at least max_P [ĉ(P) − knapsack_k(P)] (P in 0 and HIDE_SHARES), and every group at least the least of
    that over k. P = 1 is net_forward_caps' cap (ĉ(1) is the whole all-gather); a smaller P charges the extra
    recompute of a micro-batch grown to hide the all-gather, which the cap nets against the forward at full
    weight although each layer's wait falls only with the forward before it: a 1-GPU group of 9K documents
    recomputing every layer holds 43K tokens whose forward, 1.25 s, hides the 447-ms all-gather, for 0.86 s
    of extra recompute. The result is never below the wait of the cap (least_gather_delays of it), which the
    envelope at every piece's position would give. keep[j]: (R, items) — R penalties of configuration j,
    each over the items its row keeps (see wait_tiers). Returns (C,) without keep, (R, C) with it."""
    t = tables
    layers = lat.model.layers
    fine = _levels(layers, t.stride)
    coarse = _levels(layers, t.stride * -(-PENALTY_STRIDE // t.stride))  # (each fine stride within one coarse)
    block = np.searchsorted(coarse[0], fine[0], side="right") - 1  # the coarse level of each fine one
    starts = np.flatnonzero(np.r_[True, np.diff(block) > 0])  # each coarse level's first fine one
    hull = _gather_envelope(*lat.layer_pieces(), allgather, np.r_[0.0, HIDE_SHARES])
    rows = 1 if keep is None else keep[0].shape[0]
    out = np.empty((rows, len(configs)))
    for j, ((tp, cp, cross, _), part) in enumerate(zip(configs, t.parts)):
        kept = np.ones((1, t.lo.size), dtype=bool) if keep is None else keep[j]
        forward_part = lat.overhead_parts(tp, cp, cross)[0]
        whole = forward_part + _net_knapsacks(t, part, lat, tp, cp, fine, 1.0, kept)  # (R, fine levels)
        cap = whole.max(axis=1)  # net_forward_caps' cap
        # P = 1 at the fine levels, least over each coarse block; P = 0: the pieces needed at the start
        paid = np.maximum(hull[0], np.minimum.reduceat(hull[-1] - whole, starts, axis=1))
        for P, c in zip(HIDE_SHARES[:-1], hull[1:-1]):
            paid = np.maximum(paid, c - P * forward_part - _net_knapsacks(t, part, lat, tp, cp, coarse, P, kept))
        out[:, j] = np.maximum(paid.min(axis=1), lat.least_gather_delays(allgather, cap))
    return out[0] if keep is None else out


def _levels(layers: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Recompute levels in strides: each stride's lowest k (for the extra) and highest (for the room)."""
    lows = np.arange(0, layers + 1, stride)
    return lows, np.minimum(np.r_[lows[1:] - 1, layers], layers)


def _net_knapsacks(t: ForwardTables, part: tuple, lat, tp: int, cp: int, levels: tuple, P: float,
                   kept: np.ndarray) -> np.ndarray:
    """Per row of kept and level: the most a micro-batch of that level's stride holds of P·forward − extra
    recompute (a fractional knapsack; see first_penalties), without the overhead. (R, levels)."""
    _, fwd_hi, rec_lo, own_lo, own_hi = part
    lows, highs = levels
    layers = lat.model.layers
    rooms = np.array([lat.tokens_cap(tp, cp, int(hi)) for hi in highs], dtype=float)
    held = own_lo[None, :] <= highs[:, None]  # an item of a higher class than the stride's top cannot sit in it
    extra = np.maximum(lows[:, None] - own_hi[None, :], 0) / layers * (rec_lo / t.hi)  # (levels, B) per token
    value = np.where(held, (P * fwd_hi / t.lo - extra) * t.tokens, 0.0)
    return _fractional_knapsacks(value, t.tokens.astype(float), rooms, kept)


def _gather_envelope(shares: np.ndarray, positions: np.ndarray, allgather: float, at: np.ndarray) -> np.ndarray:
    """ĉ(P) at each P of `at`: the upper concave envelope of (0, 0) and the pieces' (pos_p, c_p), c_p the
    all-gather's completion of piece p (see first_penalties)."""
    x = np.r_[0.0, positions]
    y = np.r_[0.0, allgather * np.cumsum(shares)]
    a, b = np.meshgrid(np.arange(x.size), np.arange(x.size), indexing="ij")
    out = np.empty(len(at))
    for k, P in enumerate(at):
        ok = (x[a] <= P) & (x[b] >= P)
        span = x[b] - x[a]
        with np.errstate(divide="ignore", invalid="ignore"):
            mid = np.where(span > 0, y[a] + (y[b] - y[a]) * (P - x[a]) / span, np.maximum(y[a], y[b]))
        out[k] = mid[ok].max()  # (the pieces span positions 0 to 1: some pair brackets every P)
    return out


WAIT_TIERS = 20  # forward thresholds (multiples of 1/WAIT_TIERS of the all-gather) that rank a group's largest sequence
LAMBDA_SCALES = (1.0, 0.75, 0.5, 0.25)  # Lagrangian multipliers tried (shares of what an anchor saves)


def wait_tiers(tables: ForwardTables, cols, configs, lat, allgather: float, memo: dict | None = None,
               deadline: float = math.inf) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(least and largest tier of each item on each configuration (B, C) — a length's tier: how many of
    the thresholds θ_r = r/WAIT_TIERS·allgather, r = 1…WAIT_TIERS, its forward reaches —, and the least
    wait of a group of each tier on each configuration (R, C), R = WAIT_TIERS + 1): a group whose
    sequences are all of tier ≤ r starts with a micro-batch of those sequences alone (items whose least
    tier is ≤ r), so it pays at least their first_penalties (its wait and that micro-batch's extra
    recompute). The last row (every sequence) is first_penalties over the whole batch. memo: columns
    already computed for this all-gather, by configuration index (the pure family's are the mixed one's).
    cols: indices into tables.parts (the full list of configurations); configs[j]: the configuration of
    cols[j]. None when the deadline passes first, or would pass before the tiers are all priced."""
    memo = {} if memo is None else memo
    theta = np.arange(1, WAIT_TIERS + 1) / WAIT_TIERS * allgather
    low = np.stack([np.searchsorted(theta, tables.parts[c][0], side="right") for c in cols], axis=1)
    high = np.stack([np.searchsorted(theta, tables.parts[c][1], side="right") for c in cols], axis=1)
    started, todo = time.monotonic(), [j for j, c in enumerate(cols) if c not in memo]
    for done, j in enumerate(todo):
        now = time.monotonic()  # (projected once a quarter is priced: the first configurations are the slowest)
        if now > deadline or (4 * done >= len(todo) and (now - started) / done * (len(todo) - done) > deadline - now):
            return None  # (what is left would not be priced in time: given up at once, not at the deadline)
        memo[cols[j]] = _tier_waits(tables.of([cols[j]]), configs[j], low[:, j], lat, allgather)
    waits = np.stack([memo[c] for c in cols], axis=1)
    return low, high, np.maximum.accumulate(waits[::-1], axis=0)[::-1]  # a lower tier never waits less


def _tier_waits(tables: ForwardTables, config: tuple, low: np.ndarray, lat, allgather: float) -> np.ndarray:
    """One configuration's least wait per tier (see wait_tiers): the penalties of the tiers its items reach
    (the others keep the same items as the tier below them, or none)."""
    present = np.unique(low)
    keep = np.vstack([low[None, :] <= present[:, None], np.zeros((1, low.size), dtype=bool)])  # last: no item
    waits = first_penalties(tables, [config], lat, allgather, keep=[keep])[:, 0]
    row = np.searchsorted(present, np.arange(WAIT_TIERS + 1), side="right") - 1  # the largest present tier ≤ r
    return waits[row]  # (row −1: the last, empty one)


def tiered_delay_bound(inst, tables: ForwardTables, cols, lat, t_layout: int, lower: float, upper: float,
                       memo: dict | None = None, deadline: float = math.inf) -> float:
    """delay_area_bound with groups ranked by their largest sequence (wait_tiers): a group of tier r holds
    only sequences of tier ≤ r, so it waits W_r; unless r = 0 it holds one of tier r at least (its anchor).
    In the area argument a group of configuration c and tier r needs gpus·Σ cost/(T − o − W_r) ≤ gpus
    GPUs, and 1 ≤ its anchors, so for any λ ≥ 0 adding λ·(Σ cost/(T − o − W_r) − anchors) ≤ 0 keeps it
    valid: each sequence pays the least over configurations and tiers at or above its own of
    (gpus + λ)·cost/(T − o − W_r) − λ·[its tier is r], and the sum over the batch (TieredArea._need) must
    fit N GPUs. An item (a bucket of lengths) pays with its least cost, from its least tier, and is
    refunded at every tier between its least and largest: no more than any of its sequences. T is
    infeasible when some λ ≥ 0 makes the sum exceed N (TieredArea.proves). Bisection keeps only T proven
    infeasible, so the result is a bound whatever λ does to monotonicity; at the deadline, the best proven
    so far (`lower` when the tiers are not all priced)."""
    _, _, allgather = lat.sync_parts([t_layout])
    tiers = wait_tiers(tables, cols, inst.configs, lat, allgather, memo, deadline)
    if tiers is None:
        return lower
    area = TieredArea(inst, tables, *tiers)
    lo, hi = lower, max(upper, lower)
    if area.proves(hi):
        return hi
    for _ in range(40):
        if hi - lo <= 1e-4 * hi or time.monotonic() > deadline:
            break
        mid = (lo + hi) / 2
        if area.proves(mid):
            lo = mid
        else:
            hi = mid
    return lo


ASCENT_STEPS = 60  # Polyak steps on the multipliers per makespan tried (64 GPUs x 256: a proof takes 25-70)


class TieredArea:
    """The Lagrangian area relaxation of tiered_delay_bound, over items (B) x options (O). An option is a
    configuration and a band of consecutive tiers that wait alike on it (a group of the band holds items
    whose least tier is at most the band's top, waits the band's wait, and, unless the band holds tier 0,
    holds an item reaching the band: a relaxation of the band's tiers); at 64 GPUs x 256 about 400
    options instead of 21 tiers x 85 configurations."""

    def __init__(self, inst, tables: ForwardTables, low: np.ndarray, high: np.ndarray, waits: np.ndarray):
        first = np.unique(inst.lengths, return_index=True)[1]
        starts = np.flatnonzero(np.r_[True, np.diff(tables.item) > 0])
        cost = np.minimum.reduceat(inst.distinct_lower_rows(first), starts, axis=0)  # (B, C): least costs
        # bands: tiers r..top of configuration c with waits[r] == waits[top] (waits never rise with r)
        tops = waits[:-1] != waits[1:]  # (R-1, C): tier r is the top of its band
        top, c = np.nonzero(np.vstack([tops, np.ones((1, waits.shape[1]), dtype=bool)]))
        order = np.lexsort((top, c))
        top, c = top[order], c[order]
        bottom = np.where(np.r_[True, c[1:] != c[:-1]], 0, np.r_[0, top[:-1] + 1])
        self.config, self.wait = c, waits[top, c]
        self.base = waits[0, c]  # the wait of the configuration's lowest band
        self.cost, self.gpus, self.over = cost[:, c], inst.gpus[c].astype(float), inst.overhead[c]
        self.admissible = low[:, c] <= top[None, :]  # (B, O)
        self.anchored = bottom > 0  # options whose groups hold an anchor: the only ones λ may weigh
        self.anchors = self.admissible & (high[:, c] >= bottom[None, :]) & self.anchored[None, :]
        self.counts = tables.counts.astype(float)
        self.N = float(inst.total_gpus)
        self.lam = None  # the multipliers of the last proof: where the next one starts

    def proves(self, T: float) -> bool:
        """Some λ ≥ 0 proves T infeasible. Tried: λ = s·gpus·(W_0 − W)/(T − o − W_0), s in LAMBDA_SCALES
        (at s = 1 an anchor buys its group what it saves against a group of the lowest band), then
        ASCENT_STEPS Polyak steps λ ← (λ + (1.01·N − need)/|g|²·g)⁺ from the last proof's λ (g: need's
        subgradient); at 64 GPUs x 256 (seed 11) the steps took the TP1 mixed family's bound from 1,623 to
        1,674 ms."""
        caps = T - self.over - self.wait  # (O,)
        usable = self.admissible & (self.cost <= caps[None, :]) & (caps[None, :] > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(usable, self.cost / caps[None, :], np.inf)  # of a group's room
            lowest = T - self.over - self.base
            rule = np.where((lowest > 0) & self.anchored, self.gpus * (self.base - self.wait) / lowest, 0.0)
        for s in LAMBDA_SCALES:
            if self._need(share, s * rule)[0] > self.N * (1 + 1e-9):
                return True
        lam = rule if self.lam is None else self.lam
        for _ in range(ASCENT_STEPS):
            need, slope = self._need(share, lam)
            if need > self.N * (1 + 1e-9):
                self.lam = lam
                return True
            norm = float(slope @ slope)
            if not math.isfinite(need) or norm <= 0:
                return False
            # λ ≥ 0, and 0 where no anchor is held: there λ·(Σ share − anchors) ≤ 0 would not hold
            lam = np.where(self.anchored, np.maximum(lam + (1.01 * self.N - need) / norm * slope, 0.0), 0.0)
        return False

    def _need(self, share: np.ndarray, lam: np.ndarray) -> tuple[float, np.ndarray]:
        """GPUs the batch needs at multipliers lam (O,), and the subgradient: per option, Σ over the items
        that chose it of count·(share − anchor)."""
        pay = (self.gpus + lam)[None, :] * share - lam[None, :] * self.anchors
        choice = pay.argmin(axis=1)
        items = np.arange(pay.shape[0])
        least = pay[items, choice]
        if not np.isfinite(least).all():
            return math.inf, np.zeros_like(lam)
        slope = np.bincount(choice, weights=self.counts * (share[items, choice] - self.anchors[items, choice]),
                            minlength=lam.size)
        return float(self.counts @ least), slope


def _fractional_knapsacks(value: np.ndarray, weight: np.ndarray, rooms: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Per row of kept (R) and of value (one knapsack each, room rooms[l]): the most value its room holds of
    the items that row keeps (item u: weight[u] tokens, value[l, u] in all), fractions allowed: best value
    per token first. Returns (R, levels). Each level is sorted once; a row's left-out items weigh nothing."""
    value = np.maximum(value, 0.0)
    order = np.argsort(-value / weight[None, :], axis=1, kind="stable")  # (levels, B)
    w = weight[order]  # items' tokens, in each level's order
    v = np.take_along_axis(value, order, axis=1)
    k = kept[:, order]  # (R, levels, B)
    wk = np.where(k, w[None], 0.0)
    before = np.cumsum(wk, axis=2) - wk  # tokens taken before each item
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(k, np.clip((rooms[None, :, None] - before) / w[None], 0.0, 1.0), 0.0)
    return (share * v[None]).sum(axis=2)


def delay_area_bound(inst, waits: np.ndarray, upper: float) -> float:
    """A bound on max over groups of (own-class time + all-gather wait) for plans of one layout: every group
    of configuration c pays at least waits[c] beyond its own-class time (first_penalties: the layout's
    all-gather, one piece per layer, a lower bound under any bucketing), so the overhead area bound holds
    with each overhead raised by that."""
    raised = replace(inst, overhead=inst.overhead + waits)
    return overhead_area_bound(raised, upper)


def step_bound(families: list[Family], lat) -> float:
    return min(f.step(lat) for f in families)


def tighten(families: list[Family], lat, best_step: float, deadline: float) -> list[str]:
    """Raise the lowest family's bound with its pattern LP until the deadline, it reaches best_step, or
    it cannot rise further; a family searched in a worker is read, and meanwhile the lowest of the others
    is worked on here. Returns notes of what moved."""
    first = {f.name: f.bound for f in families}
    for f in families:
        if f.remote is not None:
            f.remote.tighten(f.top(lat, best_step))
    while time.monotonic() < deadline:
        for f in families:
            f.poll()
        if min(f.step(lat) for f in families) >= best_step:
            break  # the gap is closed
        here = [f for f in families if f.open and f.step(lat) < best_step]
        if not here:
            if not any(f.remote is not None and not f.remote.exhausted for f in families):
                break  # nothing left to raise
            time.sleep(min(POLL_S, max(deadline - time.monotonic(), 0.0)))
            continue
        f = min(here, key=lambda f: f.step(lat))
        top = f.top(lat, best_step)
        if f.search is None:
            f.search, f.start = f.start(top), None
            if f.search is None:
                continue
        f.search.tighten(top)
        before, started = f.bound, time.monotonic()
        f.search.patience = PATIENCE_SHARE * (deadline - started)  # an open trial gives way to a lower one
        f.bound = max(f.bound, f.search.improve(min(deadline, started + CHUNK_S)))
        if f.bound == before and time.monotonic() - started < 0.01 and not f.search.exhausted:
            f.search.stalled = True  # the LP gave up at once (numerical trouble): nothing more to gain
    for f in families:
        f.stop_remote()
    return [f"{f.name} makespan bound {first[f.name]:.1f} -> {f.bound:.1f} ms" for f in families
            if f.bound > first[f.name]]
