"""Large-neighbourhood search on a plan's assignment, and configuration swaps towards the pattern LP's mix.

rebalance: the slowest group and NEIGHBOURS others (drawn in proportion to their idle GPU-time) give up
their sequences, which CP-SAT reassigns among them to minimise the largest of their loads,
    min z  s.t.  Σ_g x_ig = 1 (each sequence once),  overhead_g + Σ_i cost_ig·x_ig ≤ z  (each group g),
costs rounded up to microseconds (so z bounds the true loads), warm-started from the current assignment.
A move is kept when the true largest load of those groups falls. Configurations never change, so the
plan's node placement stays valid. Small neighbourhoods solve in milliseconds and go where single
moves and swaps (heuristic.local_search) are stuck: many groups finishing within a few ms of each other.

swap_towards: the heuristic picks each group's configuration greedily; the pattern LP's fractional
solution says which configurations an optimal mix uses. A group whose configuration the LP uses less
than the plan does takes one of the same GPU count that the LP uses more (placement is re-checked by
the caller); rebalance then redistributes the sequences.
"""
from __future__ import annotations

import time

import numpy as np

from .backends import new_cpsat
from .heuristic import Solution
from .instance import Instance

NEIGHBOURS = 2        # groups freed with the slowest one; one more after each GROW_AFTER failures in a row
GROW_AFTER = 20
MAX_NEIGHBOURS = 5
SUB_LIMIT_S = 0.1     # CP-SAT time per neighbourhood
MAX_STALE = 100       # neighbourhoods in a row without improvement before stopping
MICROSECONDS = 1000.0  # costs are in ms; CP-SAT works on integers


def rebalance(inst: Instance, sol: Solution, deadline: float, seed: int = 0) -> Solution:
    """The same groups (configurations and order) with sequences moved so the makespan is no larger."""
    cfg = np.array([c for c, _ in sol], dtype=int)
    if len(cfg) < 2:
        return list(sol)
    where = np.empty(inst.n, dtype=int)
    for g, (_, items) in enumerate(sol):
        where[items] = g
    cost = inst.cost[:, cfg]
    loads = _loads(inst, cfg, cost, where, np.arange(len(cfg)))
    rng = np.random.default_rng(seed)
    stale = 0
    while stale < MAX_STALE and time.monotonic() < deadline:
        size = min(NEIGHBOURS + stale // GROW_AFTER, MAX_NEIGHBOURS)
        groups = _neighbourhood(loads, inst.gpus[cfg], size, rng)
        moved = _reassign(inst, cfg, cost, where, groups, deadline, seed)
        new = None if moved is None else _loads(inst, cfg, cost, moved, groups)
        if new is not None and new.max() < loads[groups].max() - 1e-9:
            where, loads[groups], stale = moved, new, 0
        else:
            stale += 1
    return [(int(c), np.flatnonzero(where == g)) for g, c in enumerate(cfg)]


def _loads(inst: Instance, cfg: np.ndarray, cost: np.ndarray, where: np.ndarray, groups) -> np.ndarray:
    """Load of each of `groups` (overhead + its sequences' costs) under the assignment `where`."""
    return inst.overhead[cfg[groups]] + np.array([cost[where == g, g].sum() for g in groups])


def _neighbourhood(loads: np.ndarray, gpus: np.ndarray, size: int, rng) -> np.ndarray:
    top = int(np.argmax(loads))
    others = np.delete(np.arange(loads.size), top)
    idle = (loads[top] - loads[others]) * gpus[others] + 1e-9
    pick = rng.choice(others, size=min(size, others.size), replace=False, p=idle / idle.sum())
    return np.concatenate([[top], pick]).astype(int)


def _reassign(inst, cfg, cost, where, groups, deadline, seed) -> np.ndarray | None:
    """CP-SAT's reassignment of the sequences of `groups` (a new `where`), or None when it found none."""
    from ortools.sat.python import cp_model  # imported when needed: it costs ~0.2 GB of memory

    items = np.flatnonzero(np.isin(where, groups))
    m = cp_model.CpModel()
    x = {}
    for i in items:
        row = []
        for g in groups:
            if np.isfinite(cost[i, g]):
                x[i, g] = m.new_bool_var("")
                m.add_hint(x[i, g], bool(where[i] == g))
                row.append(x[i, g])
        m.add_exactly_one(row)
    scaled = {key: int(np.ceil(cost[key] * MICROSECONDS)) for key in x}
    over = {g: int(np.ceil(inst.overhead[cfg[g]] * MICROSECONDS)) for g in groups}
    now = max(over[g] + sum(scaled[i, g] for i in items if where[i] == g) for g in groups)
    z = m.new_int_var(0, now, "z")  # the current assignment is a solution
    for g in groups:
        m.add(sum(w * x[key] for key, w in scaled.items() if key[1] == g) + over[g] <= z)
    m.minimize(z)
    solver = new_cpsat(max(min(SUB_LIMIT_S, deadline - time.monotonic()), 0.001), threads=1, seed=seed)
    if solver.solve(m) not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    moved = where.copy()
    for (i, g), v in x.items():
        if solver.value(v):
            moved[i] = g
    return moved


def swap_towards(inst: Instance, sol: Solution, mix: np.ndarray) -> Solution | None:
    """sol with configurations swapped, group by group, towards the LP mix (LP weight per configuration)
    within each GPU count; None when nothing changes. A group keeps its sequences (each must still fit)."""
    used = np.bincount([c for c, _ in sol], minlength=len(inst.configs)).astype(float)
    out, changed = list(sol), False
    for k, (c, items) in enumerate(sol):
        if mix[c] >= used[c] - 0.5:
            continue  # the LP uses c about as much as the plan does
        same = np.flatnonzero((inst.gpus == inst.gpus[c]) & (mix - used >= 0.5))
        same = [d for d in same[np.argsort(used[same] - mix[same])] if np.isfinite(inst.cost[items, d]).all()]
        if same:
            d = int(same[0])
            out[k] = (d, items)
            used[c] -= 1
            used[d] += 1
            changed = True
    return out if changed else None
