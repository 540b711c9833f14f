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


FORWARD_CAP_CELLS = 100_000  # distinct lengths x configurations priced for the waits (x9 recompute levels), at most


@dataclass
class Family:
    t: int
    mixed: bool
    bound: float
    search: PatternBound | None = None
    start: Callable | None = None  # start(upper) -> PatternBound | None, built when first needed
    remote: RemoteBound | None = None  # or its pattern LP searched in a worker
    forward_cap: float = math.inf  # no first micro-batch of this family's plans hides more (ms, net_forward_caps)
    delayed: float = 0.0  # a bound on max over groups of (own-class time + all-gather wait) (delay_area_bound)

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
        return max(self.step_at(lat, self.bound), self.step_after_waits(lat))

    def step_after_waits(self, lat) -> float:
        """The step bound from `delayed` (the all-gather waits already in it): the reduce-scatter after."""
        if not math.isfinite(self.delayed):
            return math.inf
        if self.delayed <= 0:
            return 0.0
        return self.delayed + lat.sync_exposed_lower_ms(self.t, self.delayed, mixed=self.mixed, waits_included=True)

    def step_at(self, lat, makespan: float) -> float:
        """The step bound of this family's plans were its makespan bound `makespan`."""
        if not math.isfinite(makespan):
            return math.inf
        return makespan + lat.sync_exposed_lower_ms(self.t, makespan, mixed=self.mixed,
                                                    first_forward_max_ms=self.forward_cap)

    def top(self, lat, best_step: float) -> float:
        """The makespan at which this family's step bound reaches best_step: no need to prove more."""
        lo, hi = self.bound, best_step
        for _ in range(50):
            mid = (lo + hi) / 2
            if self.step_at(lat, mid) < best_step:
                lo = mid
            else:
                hi = mid
        return hi

    @property
    def name(self) -> str:
        return f"TP{self.t} {'mixed' if self.mixed else 'only'}"


LEVEL_STRIDE = 4  # recompute levels priced together in net_forward_caps (a valid cap for every level in between)


def forward_tables(lengths, configs, lat) -> tuple | None:
    """(distinct lengths, their counts, per configuration (forward, recompute of every layer, own class)
    of each distinct length); None without the overlap, or when it would exceed FORWARD_CAP_CELLS·20."""
    uniq, counts = np.unique(np.asarray(lengths, dtype=np.int64), return_counts=True)
    levels = lat.model.layers // LEVEL_STRIDE + 1
    if not lat.overlap_param_gather or uniq.size * len(configs) * levels > 20 * FORWARD_CAP_CELLS:
        return None
    parts = []
    for tp, cp, cross, _ in configs:
        fwd, rec_all, _ = lat.seq_parts_array(uniq, tp, cp, cross, recompute_layers=lat.model.layers)
        parts.append((fwd, rec_all, lat.recompute_layers_array(uniq, tp, cp)))
    return uniq, counts, parts


def net_forward_caps(tables, configs, lat, left_out=None) -> np.ndarray:
    """For each configuration, a cap on what a group's first micro-batch can hide of the overlapped
    parameter all-gather: its forward minus the extra recompute it pays for being large. A micro-batch
    recomputing k layers holds ≤ tokens_cap(k) tokens, and each of its sequences pays (k − k_i)/layers
    of its own recompute beyond its own class k_i; forward minus that extra, summed, is at most a
    fractional knapsack (values fwd_i − extra_i, weights L_i) — taken over levels k in strides (the
    stride's lowest k for the extra, its highest for the capacity: a cap for every k in it), plus the
    overhead's forward part. The delay the all-gather imposes falls with this net forward, and the extra
    recompute is added to a group's time (see delay_area_bound), so a group waits at least
    delay(net cap) beyond its own-class time. left_out[j]: distinct lengths a group of configuration j
    is known not to hold (see anchored_delay_bound)."""
    uniq, counts, parts = tables
    layers = lat.model.layers
    lows = np.arange(0, layers + 1, LEVEL_STRIDE)
    highs = np.minimum(lows + LEVEL_STRIDE - 1, layers)
    caps = np.empty(len(configs))
    for j, ((tp, cp, cross, _), (fwd, rec_all, own)) in enumerate(zip(configs, parts)):
        rooms = np.array([lat.tokens_cap(tp, cp, int(hi)) for hi in highs], dtype=float)
        # a sequence of a higher class than the level's top cannot sit in such a micro-batch
        held = (own[None, :] <= highs[:, None])
        if left_out is not None:
            held &= ~left_out[j][None, :]
        value = np.where(held, fwd[None, :] - np.maximum(lows[:, None] - own[None, :], 0) / layers * rec_all[None, :],
                         0.0)
        caps[j] = lat.overhead_parts(tp, cp, cross)[0] + float(_fractional_knapsacks(value, uniq, counts, rooms).max())
    return caps


ANCHOR_SHARE = 0.5  # a sequence whose forward alone hides this share of the all-gather is an anchor


def anchored_delay_bound(inst, tables, cols, caps, lat, t_layout: int, lower: float, upper: float) -> float:
    """delay_area_bound counting anchors: a group holding no anchor (a sequence whose forward alone reaches
    ANCHOR_SHARE of the layout's all-gather on its configuration) waits at least the delay of the net cap
    without anchors (Ws); one holding an anchor, the delay of the full cap (Wb); each anchor sits in one
    group. In the area argument a group of type τ needs Σ gpus·cost/(T − o − W_τ) GPUs, and an anchored
    group needs 1 ≤ its anchors, so for any λ_c ≥ 0 adding λ_c·(Σ cost/(T − o − Wb) − anchors) ≤ 0 keeps
    it valid; per sequence the least of (small: gpus·cost/(T − o − Ws), not for anchors) and (anchored:
    (gpus + λ)·cost/(T − o − Wb) − λ·anchor) summed over the batch must fit N GPUs. λ_c = gpus·(Ws −
    Wb)/(T − o − Ws): one anchor then buys its group the wait it saves. Bisection keeps only T proven
    infeasible, so the result is a bound whatever λ does to monotonicity."""
    uniq, counts, parts = tables
    _, _, allgather = lat.sync_parts([t_layout])
    fwd = np.stack([parts[c][0] for c in cols], axis=1)  # (U, C)
    anchor = fwd >= ANCHOR_SHARE * allgather
    small = net_forward_caps((uniq, counts, [parts[c] for c in cols]), inst.configs, lat, left_out=list(anchor.T))
    w_big = lat.least_gather_delays(allgather, caps)
    w_small = np.maximum(lat.least_gather_delays(allgather, small), w_big)
    cost = inst.cost[np.unique(inst.lengths, return_index=True)[1]]  # (U, C): one row per distinct length
    gpus, over = inst.gpus.astype(float), inst.overhead

    def infeasible(T: float) -> bool:
        cap_s, cap_b = T - over - w_small, T - over - w_big
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = np.where(cap_s > 0, gpus * (w_small - w_big) / cap_s, 0.0)
            a_s = np.where(~anchor & (cost <= cap_s) & (cap_s > 0), gpus * cost / cap_s, np.inf)
            a_b = np.where((cost <= cap_b) & (cap_b > 0), (gpus + lam) * cost / cap_b - lam * anchor, np.inf)
        need = np.minimum(a_s, a_b).min(axis=1)
        return bool(np.isinf(need).any() or float((counts * need).sum()) > inst.total_gpus * (1 + 1e-9))

    lo, hi = lower, max(upper, lower)
    if infeasible(hi):
        return hi
    for _ in range(40):
        if hi - lo <= 1e-7 * hi:
            break
        mid = (lo + hi) / 2
        if infeasible(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _fractional_knapsacks(value: np.ndarray, weight: np.ndarray, counts: np.ndarray, rooms: np.ndarray) -> np.ndarray:
    """Per row of value (one knapsack each, room rooms[r]): the most value its room holds of these items
    (each counts[j] times, weight[j] tokens each), fractions allowed: best value per token first."""
    value = np.maximum(value, 0.0)
    order = np.argsort(-value / weight[None, :], axis=1, kind="stable")
    w = (weight * counts)[order].astype(float)  # whole items' tokens, in each row's order
    v = np.take_along_axis(value, order, axis=1) * counts[order]
    before = np.cumsum(w, axis=1) - w  # tokens taken before each item
    share = np.clip((rooms[:, None] - before) / w, 0.0, 1.0)  # the fraction of each item that fits
    return (share * v).sum(axis=1)


def delay_area_bound(inst, caps: np.ndarray, lat, t_layout: int, upper: float) -> float:
    """A bound on max over groups of (own-class time + all-gather wait) for plans of layout t_layout: every
    group of configuration c waits at least delay(caps[c]) (the layout's all-gather, one piece per layer:
    a lower bound under any bucketing), so the overhead area bound holds with each overhead raised by that."""
    _, _, allgather = lat.sync_parts([t_layout])
    waits = lat.least_gather_delays(allgather, caps)
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
