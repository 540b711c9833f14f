"""Step bounds from the group count: many groups mean few, large gradient buckets.

The bucket size is max(40M, 1M·groups) parameters (Megatron-LM's default; LatencyModel.gradient_buckets),
so a plan of thousands of groups has a handful of buckets: its groups wait for every bucket the forward
needs at its start (the embedding's and the first block's) before the forward starts, and those
buckets' reduce-scatter starts only when the backward ends (a TP2 plan of 4,295 groups at 16,384 GPUs
has llama3-8b in two buckets: at least 199 ms exposed, where one piece per layer allows 41 ms; the
heuristic's plan exposed 269 ms). A plan of makespan M in [T_j, T_{j+1}) holds at least
G_min(T_{j+1}) groups (least_groups), so

    step ≥ min( upper, min_j [ T_j + E(T_j, G ≥ G_min(T_{j+1})) ] ),

E the exposed sync of the slowest group with the buckets of some group count ≥ G_min
(LatencyModel.sync_exposed_lower_grouped: the least over those bucketings, which need not fall with the
count: the last bucket is what is left), and upper any step (a plan of makespan ≥ upper takes at least
upper: the best plan's step is used).

least_groups(T): in a plan of makespan ≤ T a group of configuration c holds sequences of cost Σ ≤ T − o_c,
so it counts at least Σ_i cost_ic/(T − o_c) groups, and they use gpus_c GPUs each, N in all. With a_ic =
cost_ic/(T − o_c) and y_ic the share of sequence i on c, G ≥ Σ a_ic·y_ic and Σ gpus_c·a_ic·y_ic ≤ N; for
any μ ≥ 0,
    G ≥ Σ_i min_c a_ic·(1 + μ·gpus_c) − μ·N,
a concave function of μ, maximised by bisection on its slope (the GPUs the cheapest choices use, less N);
unbounded (no plan) when even the least area exceeds N.
"""
from __future__ import annotations

import math
import time

import numpy as np

from .bounds import distinct_lengths

GRID_RATIO = 1.0025  # makespans T_j tried: each 0.25 % above the last (the bound loses at most that) ...
GRID_MAX = 48        # ... and at most this many (coarser over a wide range)
MU_STEPS = 24        # bisection steps on the multiplier
ITEM_RATIO = 1.02    # lengths within 2 % of each other share an item, priced at its least cost


def _items(inst) -> tuple[np.ndarray, np.ndarray]:
    """(least cost rows (B, C), counts (B,)): distinct lengths bucketed within ITEM_RATIO, each bucket at its
    least length's costs (costs rise with the length: a bound for every member)."""
    first, counts = distinct_lengths(inst.lengths)
    rows = inst.distinct_lower_rows(first)
    lengths = inst.lengths[first].astype(float)
    bucket = np.floor(np.log(lengths) / math.log(ITEM_RATIO)).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, np.diff(bucket) > 0])
    return rows[starts], np.add.reduceat(counts, starts)


class GroupCount:
    """least_groups over one family's configurations (see the module's docstring)."""

    def __init__(self, inst) -> None:
        self.cost, self.counts = _items(inst)
        self.gpus, self.over, self.N = inst.gpus.astype(float), inst.overhead.astype(float), float(inst.total_gpus)

    def least_groups(self, T: float) -> float:
        """A lower bound on the groups of any plan of makespan ≤ T (inf: no such plan)."""
        room = T - self.over
        ok = (self.cost + self.over[None, :] <= T) & (room[None, :] > 0)
        if not ok.any(axis=1).all():
            return math.inf
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(ok, self.cost / room[None, :], np.inf)  # (B, C) groups a sequence needs at least
        area = a * self.gpus[None, :]
        if float(area.min(axis=1) @ self.counts) > self.N:
            return math.inf  # the GPUs cannot hold the batch at T

        def value(mu: float) -> tuple[float, float]:
            pay = a * (1.0 + mu * self.gpus)[None, :]  # (inf where c cannot hold the sequence)
            c = pay.argmin(axis=1)
            items = np.arange(pay.shape[0])
            return float(pay[items, c] @ self.counts) - mu * self.N, float(area[items, c] @ self.counts) - self.N

        best, slope = value(0.0)
        if slope <= 0:
            return best
        lo, hi = 0.0, 1.0 / self.gpus.max()
        for _ in range(60):  # bracket: the slope turns ≤ 0 once μ favours the least area enough
            v, slope = value(hi)
            best = max(best, v)
            if slope <= 0:
                break
            lo, hi = hi, 2 * hi
        for _ in range(MU_STEPS):
            mid = (lo + hi) / 2
            v, slope = value(mid)
            best = max(best, v)
            lo, hi = (mid, hi) if slope > 0 else (lo, mid)
        return best


def grouped_step_bound(inst, lat, t_layout: int, mixed: bool, lower: float, upper: float, floor: float = 0.0,
                       first_forward_max_ms: float = math.inf, deadline: float = math.inf) -> float:
    """The family's step bound from its group count (see the module's docstring): its plans use inst's
    configurations, their makespan is ≥ lower, and upper is a step some plan reaches. The ranges are
    visited from the lowest makespan up, and the visit stops once the least so far is at or below floor
    (the family's bound without the group count: nothing gained; returns floor) or below the next range's
    makespan (no later range can be lower). Returns floor when the deadline passes first."""
    if not (math.isfinite(lower) and upper > lower):
        return floor
    steps = min(GRID_MAX, max(1, math.ceil(math.log(upper / lower) / math.log(GRID_RATIO))))
    T = lower * (upper / lower) ** (np.arange(steps + 1) / steps)
    count, best = GroupCount(inst), upper
    for j in range(steps):  # plans of makespan in [T_j, T_{j+1}) hold at least G_min(T_{j+1}) groups
        if best <= floor or T[j] >= best:
            break
        if time.monotonic() > deadline:
            return floor
        least = count.least_groups(float(T[j + 1]))
        if not math.isfinite(least):
            continue  # no plan of such a makespan
        exposed = lat.sync_exposed_lower_grouped(t_layout, [T[j]], [max(math.ceil(least - 1e-6), 1)], mixed,
                                                 first_forward_max_ms)[0]
        best = min(best, float(T[j] + exposed))
    return max(best, floor)
