"""Valid lower bounds on the makespan (true costs, ms)."""
from __future__ import annotations

import math

import numpy as np

from .instance import Instance


def longest_sequence_bound(inst: Instance) -> float:
    """max_i min_c (overhead_c + cost_ic): sequence i's group runs at least that long."""
    cost, _ = _distinct_rows(inst)
    return float(np.min(inst.overhead[None, :] + cost, axis=1).max())


def area_bound(inst: Instance) -> float:
    """GPU-time: Σ_c gpus_c·load_c ≤ N·T and every load ≥ its sequences' costs, one overhead at least:
    T ≥ (Σ_i min_c gpus_c·cost_ic + min_c gpus_c·overhead_c) / N."""
    cost, weight = _distinct_rows(inst)
    work = np.min(inst.gpus[None, :] * cost, axis=1) @ weight
    return float((work + np.min(inst.gpus * inst.overhead)) / inst.total_gpus)


def _distinct_rows(inst: Instance) -> tuple[np.ndarray, np.ndarray]:
    """The cost rows of the distinct lengths and how many sequences each stands for (65,536 sequences
    at 128K have a third as many lengths)."""
    first, counts = distinct_lengths(inst.lengths)
    return inst.distinct_lower_rows(first), counts


_DISTINCT: list = [None, None]  # [lengths array, (first, counts)]: the slices of one solve share their lengths


def distinct_lengths(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first index of each distinct length, how many sequences have it, as floats), remembered for the
    last lengths array seen (every slice and family of a solve is a subset of one instance: same array)."""
    if _DISTINCT[0] is not lengths:
        _, first, counts = np.unique(lengths, return_index=True, return_counts=True)
        _DISTINCT[:] = [lengths, (first, counts.astype(float))]
    return _DISTINCT[1]


def simple_bound(inst: Instance) -> float:
    return max(longest_sequence_bound(inst), area_bound(inst))


class LayoutBounds:
    """simple_bound_of for unions of layouts (GPUs per parameter copy), each layout's columns reduced once:
    per distinct length the least finish (overhead + cost) and least GPU-time on it, and its least
    GPU-overhead; a union's bound takes the minimum over its layouts (a short limit's slices and
    families are such unions: eight column subsets copied and reduced took 11-15 ms at 1,024 GPUs)."""

    def __init__(self, inst: Instance) -> None:
        first, self.weight = distinct_lengths(inst.lengths)
        rows = inst.distinct_lower_rows(first)
        layouts = np.array([inst.layout(c) for c in range(len(inst.configs))])
        self.total_gpus = inst.total_gpus
        self.per_layout = {}
        for u in np.unique(layouts):
            cols = np.flatnonzero(layouts == u)
            cost = rows[:, cols]
            self.per_layout[int(u)] = (np.min(inst.overhead[cols][None, :] + cost, axis=1),
                                       np.min(inst.gpus[cols][None, :] * cost, axis=1),
                                       float(np.min(inst.gpus[cols] * inst.overhead[cols])))

    def of(self, keep) -> float:
        """simple_bound of the configurations whose layout passes keep(layout); inf when some length fits none."""
        parts = [v for u, v in self.per_layout.items() if keep(u)]
        if not parts:
            return math.inf
        finish = np.min([p[0] for p in parts], axis=0)
        if not np.isfinite(finish).all():
            return math.inf
        work = np.min([p[1] for p in parts], axis=0) @ self.weight
        return max(float(finish.max()), float((work + min(p[2] for p in parts)) / self.total_gpus))


def overhead_area_bound(inst: Instance, upper: float, rel_tol: float = 1e-7) -> float:
    """Area bound that charges each group's overhead.

    In a plan of makespan T every group of config c has Σ_{i∈group} cost_ic ≤ T − overhead_c, so
    Σ_{i∈group} gpus_c·cost_ic/(T − overhead_c) ≤ gpus_c; summed over groups:
        f(T) = Σ_i min_{c: overhead_c + cost_ic ≤ T} gpus_c·cost_ic / (T − overhead_c) ≤ N.
    f decreases in T, so the optimum is > every T with f(T) > N: the threshold is bracketed and found by
    a safeguarded secant on 1/f (nearly linear in T: f ≈ work/(T − overhead)), a few evaluations
    instead of ~40 bisections; see _AreaNeed for what one evaluation costs."""
    return area_bracket(inst, upper, rel_tol)[0]


def area_bracket(inst: Instance, upper: float, rel_tol: float = 1e-7, first: bool = False,
                 estimate: bool = False, simple: float | None = None) -> tuple[float, float]:
    """(lo, hi): f(lo) > N (so lo is a valid makespan bound, or the simple bound), f(hi) ≤ N (the area
    relaxation allows hi; hi ≤ upper). first=True stops after the first estimate of the threshold (two
    or three evaluations): a short limit's target for the heuristic's first cover. estimate=True: on the
    instance's costs even where they are estimates (a target, not a bound: lo is then no bound).
    simple: simple_bound(inst) when the caller has it."""
    lo = simple_bound(inst) if simple is None else simple
    need = _AreaNeed(inst, estimate)
    N = inst.total_gpus
    f_lo = need(lo)
    if f_lo <= N:
        return lo, lo
    guess = lo * f_lo / N  # f·(T − overhead) ≈ constant puts the threshold at or below lo·f(lo)/N
    if first and guess < upper:
        f_guess = need(guess)
        if f_guess <= N:
            return lo, guess
        return guess, upper
    f_hi = need(upper)
    if f_hi > N:  # upper is feasible by construction; guard anyway
        return lo, upper
    hi = upper
    if lo < guess < hi:
        f_guess = need(guess)
        if f_guess > N:
            lo, f_lo = guess, f_guess
        else:
            hi, f_hi = guess, f_guess
    g_lo, g_hi = 1 / f_lo - 1 / N, 1 / max(f_hi, 1e-300) - 1 / N  # increasing in T; < 0 below the threshold
    side = 0
    while hi - lo > rel_tol * hi:
        width = hi - lo
        T = lo - g_lo * width / (g_hi - g_lo) if math.isfinite(g_hi) and g_hi > g_lo else (lo + hi) / 2
        T = min(max(T, lo + 0.02 * width), hi - 0.02 * width)  # safeguard: every trial shrinks the bracket
        need.narrow(lo, hi)
        f = need(T)
        g = 1 / f - 1 / N
        if f > N:
            lo, g_lo = T, g
            if side == -1:
                g_hi /= 2  # Illinois: the same end kept twice, the other end's weight halved
            side = -1
        else:
            hi, g_hi = T, g
            if side == 1:
                g_lo /= 2
            side = 1
    return lo, hi


class _AreaNeed:
    """f(T) of overhead_area_bound over the distinct lengths (weighted by their counts). Once the bracket
    [lo, hi] is narrow, each row keeps only the configurations that can be its minimum somewhere in it: c
    with gpus_c·cost_ic/(hi − overhead_c) ≤ the row's least value at lo (each value only falls as T
    rises): at 1024 GPUs a handful of 154 columns, so an evaluation costs a few per cent of the first."""

    NARROW = 0.1  # relative bracket width below which rows are pruned

    def __init__(self, inst: Instance, estimate: bool = False) -> None:
        first, self.weight = distinct_lengths(inst.lengths)
        cost = inst.cost[first] if estimate else inst.distinct_lower_rows(first)
        self.work = inst.gpus[None, :] * cost                       # (m, C) gpus·cost
        self.finish = cost + inst.overhead[None, :]                 # (m, C) a group of one sequence
        self.over = np.broadcast_to(inst.overhead[None, :], cost.shape)
        self.pruned = False

    def __call__(self, T: float) -> float:
        room = T - self.over
        ok = (self.finish <= T) & (room > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            value = np.where(ok, self.work / room, np.inf)
        return float(value.min(axis=1) @ self.weight)

    def narrow(self, lo: float, hi: float) -> None:
        if self.pruned or hi - lo > self.NARROW * hi:
            return
        with np.errstate(divide="ignore", invalid="ignore"):
            at_lo = np.where((self.finish <= lo) & (lo - self.over > 0), self.work / (lo - self.over), np.inf)
            at_hi = np.where((self.finish <= hi) & (hi - self.over > 0), self.work / (hi - self.over), np.inf)
        keep = at_hi <= at_lo.min(axis=1, keepdims=True) * (1 + 1e-9)  # never the minimum in [lo, hi] otherwise
        rows, cols = np.nonzero(keep)                                  # row-major: each row's columns in turn
        per_row = np.bincount(rows, minlength=keep.shape[0])
        slot = np.arange(rows.size) - np.repeat(np.cumsum(per_row) - per_row, per_row)
        shape = (keep.shape[0], int(per_row.max()))
        work, finish, over = np.full(shape, np.inf), np.full(shape, np.inf), np.zeros(shape)
        work[rows, slot], finish[rows, slot], over[rows, slot] = self.work[rows, cols], self.finish[rows, cols], \
            self.over[rows, cols]
        self.work, self.finish, self.over, self.pruned = work, finish, over, True
