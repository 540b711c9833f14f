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
from dataclasses import dataclass

import numpy as np

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
    forward_cap: float = math.inf  # no first micro-batch of this family's plans has a longer forward (ms)

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
        return self.step_at(lat, self.bound)

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


def first_forward_cap(lengths, configs, lat) -> float:
    """The longest forward any first micro-batch of a group of these configurations can have on this batch:
    the overhead's forward part plus the most forward a micro-batch of at most max_tokens tokens can hold
    (a fractional knapsack over the batch's sequences, most forward per token first — at least what any
    real micro-batch holds). inf when pricing it would cost more than FORWARD_CAP_CELLS cells."""
    uniq, counts = np.unique(np.asarray(lengths, dtype=np.int64), return_counts=True)
    if not lat.overlap_param_gather or uniq.size * len(configs) > FORWARD_CAP_CELLS:
        return math.inf
    cap = 0.0
    for tp, cp, cross in configs:
        fwd = lat.seq_parts_array(uniq, tp, cp, cross)[0]
        order = np.argsort(-fwd / uniq)
        room, held = lat.max_tokens(tp, cp), 0.0
        for j in order:
            take = min(int(counts[j]), room // int(uniq[j]))
            held += take * fwd[j]
            room -= take * int(uniq[j])
            if take < counts[j]:
                held += fwd[j] * room / uniq[j]  # a fraction of the next one: the relaxation's bound
                break
        cap = max(cap, lat.overhead_parts(tp, cp, cross)[0] + held)
    return cap


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
