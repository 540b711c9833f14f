"""Valid lower bounds on the makespan (true costs, ms)."""
from __future__ import annotations

import numpy as np

from .instance import Instance


def longest_sequence_bound(inst: Instance) -> float:
    """max_i min_c (overhead_c + cost_ic): sequence i's group runs at least that long."""
    return float(np.min(inst.overhead[None, :] + inst.cost, axis=1).max())


def area_bound(inst: Instance) -> float:
    """GPU-time: Σ_c gpus_c·load_c ≤ N·T and every load ≥ its sequences' costs, one overhead at least:
    T ≥ (Σ_i min_c gpus_c·cost_ic + min_c gpus_c·overhead_c) / N."""
    work = np.min(inst.gpus[None, :] * inst.cost, axis=1).sum()
    return float((work + np.min(inst.gpus * inst.overhead)) / inst.total_gpus)


def simple_bound(inst: Instance) -> float:
    return max(longest_sequence_bound(inst), area_bound(inst))


def overhead_area_bound(inst: Instance, upper: float, rel_tol: float = 1e-7) -> float:
    """Area bound that charges each group's overhead.

    In a plan of makespan T every group of config c has Σ_{i∈group} cost_ic ≤ T − overhead_c, so
    Σ_{i∈group} gpus_c·cost_ic/(T − overhead_c) ≤ gpus_c; summed over groups:
        f(T) = Σ_i min_{c: overhead_c + cost_ic ≤ T} gpus_c·cost_ic / (T − overhead_c) ≤ N.
    f decreases in T, so the optimum is > every T with f(T) > N: bisect for that threshold."""
    lo = simple_bound(inst)
    if _area_need(inst, upper) > inst.total_gpus:  # upper is feasible by construction; guard anyway
        return lo
    hi = upper
    if _area_need(inst, lo) <= inst.total_gpus:
        return lo
    while hi - lo > rel_tol * hi:
        mid = (lo + hi) / 2
        if _area_need(inst, mid) > inst.total_gpus:
            lo = mid
        else:
            hi = mid
    return lo


def _area_need(inst: Instance, T: float) -> float:
    room = T - inst.overhead  # (C,)
    ok = (inst.cost + inst.overhead[None, :] <= T) & (room[None, :] > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        need = np.where(ok, inst.gpus[None, :] * inst.cost / room[None, :], np.inf)
    return float(need.min(axis=1).sum())
