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


FORWARD_CAP_CELLS = 20_000  # distinct lengths x configurations priced for the first-forward cap, at most


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


def net_forward_caps(lengths, configs, lat) -> np.ndarray | None:
    """For each configuration, a cap on what a group's first micro-batch can hide of the overlapped
    parameter all-gather: its forward minus the extra recompute it pays for being large. A micro-batch
    recomputing k layers holds ≤ tokens_cap(k) tokens, and each of its sequences pays (k − k_i)/layers
    of its own recompute beyond its own class k_i; forward minus that extra, summed, is at most a
    fractional knapsack (values fwd_i − extra_i, weights L_i) — taken over levels k in strides (the
    stride's lowest k for the extra, its highest for the capacity: a cap for every k in it), plus the
    overhead's forward part. The delay the all-gather imposes falls with this net forward, and the extra
    recompute is added to a group's time (see delay_area_bound), so a group waits at least
    delay(net cap) beyond its own-class time. None when pricing it would exceed FORWARD_CAP_CELLS cells."""
    uniq, counts = np.unique(np.asarray(lengths, dtype=np.int64), return_counts=True)
    layers = lat.model.layers
    levels = list(range(0, layers + 1, LEVEL_STRIDE))
    if not lat.overlap_param_gather or uniq.size * len(configs) * len(levels) > 20 * FORWARD_CAP_CELLS:
        return None
    caps = np.empty(len(configs))
    lows = np.array(levels)
    highs = np.minimum(lows + LEVEL_STRIDE - 1, layers)
    for j, (tp, cp, cross) in enumerate(configs):
        fwd, rec_all, _ = lat.seq_parts_array(uniq, tp, cp, cross, recompute_layers=layers)
        own = lat.recompute_layers_array(uniq, tp, cp)
        rooms = np.array([lat.tokens_cap(tp, cp, int(hi)) for hi in highs], dtype=float)
        # a sequence of a higher class than the level's top cannot sit in such a micro-batch
        value = np.where(own[None, :] <= highs[:, None],
                         fwd[None, :] - np.maximum(lows[:, None] - own[None, :], 0) / layers * rec_all[None, :], 0.0)
        caps[j] = lat.overhead_parts(tp, cp, cross)[0] + float(_fractional_knapsacks(value, uniq, counts, rooms).max())
    return caps


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
