"""Step bounds by sync layout: every plan belongs to one family (t, mixed).

The sync a plan pays depends on its smallest TP degree t (the layout): a plan whose groups all have TP t
("pure") gathers nothing before the reduce-scatter; a plan that also holds a larger TP ("mixed") first
gathers that group's gradient shards to the layout. So, for the step objective,

    step ≥ min over families f of  bound_f + sync_lower(t_f, bound_f, mixed_f),

where bound_f is a makespan bound over the family's plans: for mixed t, the bound of every plan with
TP ≥ t (the slice the search covers); for pure t, the bound of the plans with TP t only, which is
higher (fewer configurations) and often what lifts the step bound, since the mixed families pay the
extra gather. The bound is only as high as its lowest family, so the time left after the searches
goes to the pattern LP of whichever family is lowest at each moment (tighten).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from .patterns import PatternBound

CHUNK_S = 1.0  # pattern LP time per turn before the lowest family is chosen again
PATIENCE_SHARE = 0.35  # of the time left: how long one trial may stay open before a lower one is tried


@dataclass
class Family:
    t: int
    mixed: bool
    bound: float
    search: PatternBound | None = None
    start: Callable | None = None  # start(upper) -> PatternBound | None, built when first needed

    def step(self, lat) -> float:
        if not math.isfinite(self.bound):
            return math.inf
        return self.bound + lat.sync_exposed_lower_ms(self.t, self.bound, mixed=self.mixed)

    def top(self, lat, best_step: float) -> float:
        """The makespan at which this family's step bound reaches best_step: no need to prove more."""
        lo, hi = self.bound, best_step
        for _ in range(50):
            mid = (lo + hi) / 2
            if mid + lat.sync_exposed_lower_ms(self.t, mid, mixed=self.mixed) < best_step:
                lo = mid
            else:
                hi = mid
        return hi

    @property
    def name(self) -> str:
        return f"TP{self.t} {'mixed' if self.mixed else 'only'}"


def step_bound(families: list[Family], lat) -> float:
    return min(f.step(lat) for f in families)


def tighten(families: list[Family], lat, best_step: float, deadline: float) -> list[str]:
    """Raise the lowest family's bound with its pattern LP until the deadline, it reaches best_step, or
    it cannot rise further. Returns notes of what moved."""
    moved: dict[str, tuple[float, float]] = {}
    while time.monotonic() < deadline:
        f = min(families, key=lambda f: f.step(lat))
        if f.step(lat) >= best_step:
            break  # the gap is closed
        top = f.top(lat, best_step)
        if f.search is None and f.start is not None:
            f.search, f.start = f.start(top), None
        if f.search is None or f.search.exhausted:
            break
        f.search.tighten(top)
        before, started = f.bound, time.monotonic()
        f.search.patience = PATIENCE_SHARE * (deadline - started)  # an open trial gives way to a lower one
        f.bound = max(f.bound, f.search.improve(min(deadline, started + CHUNK_S)))
        moved[f.name] = (moved.get(f.name, (before,))[0], f.bound)
        if f.bound == before and time.monotonic() - started < 0.01:
            break  # the LP gave up at once (numerical trouble): nothing more to gain
    return [f"{name} makespan bound {a:.1f} -> {b:.1f} ms" for name, (a, b) in moved.items() if b > a]
