"""Pattern LP bound on the makespan: column generation with HiGHS.

A pattern is one group: a configuration c and how many sequences of each distinct length j it runs,
a_j, with overhead_c + Σ_j a_j·cost_jc ≤ T. A plan of makespan ≤ T is an integer solution of

    min Σ_p gpus_p·λ_p   s.t.  Σ_p a_pj·λ_p ≥ m_j  (every sequence once),  λ ≥ 0,

of value ≤ N. Its LP relaxation bounds that from below. For any duals π ≥ 0 Farley's bound holds,
    LP ≥ π·m / θ,   θ = max_p π·a_p / gpus_p,
so T is infeasible (makespan > T in every plan) once π·m/θ > N. Infeasibility is monotone in T: the
bound is the largest T proven infeasible, searched between the known bound and the incumbent.

Pricing (θ, and new columns) is a bounded knapsack per configuration, solved exactly on a relaxation
that keeps the bound valid: "big" lengths (cost ≥ room/SMALL_SHARE) are integral, small lengths are
fractional. Every true pattern is a relaxed pattern, so the LP is a relaxation of the plan problem.
The knapsack is solved on the costs as they are (partial patterns pruned by Dantzig's bound); where
that grows too large, big lengths' costs are rounded down to room/GRID, an upper bound (at 64 GPUs x
256 sequences the rounding cost the bound ~0.03 %: 1,506.5 against 1,507.0 ms, converged). Nodes are ignored (also a relaxation). Duals are
smoothed towards the best-bound duals (Wentges), which cuts the tailing-off of plain column generation;
smoothed duals move little, so most configurations are bounded from their last pricing and skip the
knapsack. A trial cut short by a deadline keeps its state and goes on when resumed (PatternBound).
"""
from __future__ import annotations

import math
import time

import highspy
import numpy as np

from .instance import Instance

GRID = 8192          # knapsack capacity units per group (big lengths' costs rounded down to a unit)
SMALL_SHARE = 32    # a length costing less than room/SMALL_SHARE is packed fractionally
SMOOTHING = 0.9      # Wentges: price at α·(best-bound duals) + (1 − α)·(LP duals)
FIRST_STEP = 0.3     # the first trial below the incumbent, as a share of the gap
REACH = 0.9          # a trial goes this share of the way from the proven bound to the estimated threshold
SALVAGE_TRIES = 4    # pricings that look for the level a cut-short trial's duals prove
MAX_LENGTHS = 400    # distinct lengths (master rows) beyond which the LP is too slow to pay within seconds


class PatternLP:
    """The restricted master LP over the distinct lengths of `inst`, kept across makespans T."""

    def __init__(self, inst: Instance, threads: int = 1):
        from .backends import new_highs

        _, first, self.item_of, counts = np.unique(inst.lengths, return_index=True, return_inverse=True,
                                                   return_counts=True)  # item_of: each sequence's length row
        self.cost = inst.cost[first]                   # (J, C)
        self.m = counts.astype(float)                  # multiplicities
        self.gpus = inst.gpus.astype(float)
        self.overhead = inst.overhead
        self.N = float(inst.total_gpus)
        self.J, self.C = self.cost.shape
        self.columns: list[tuple] = []  # (config, load without overhead, lengths in it, their counts)
        self.known: dict = {}  # pattern -> its index in columns
        self.enabled: list[bool] = []
        self.last_x = np.zeros(0)  # column values of the last optimal LP
        self.last_value = math.nan  # its value (GPUs): an upper bound on the LP optimum at its T
        self.paused = (None, None, 0.0)  # (T, stability centre, best bound) of a proof cut short
        self.carried = None  # the best-bound duals of the latest trial: the next trial's first centre
        self.exchanged: list[int] = []  # free columns before the patterns: the length j of each (j from j + 1)
        self.h = new_highs(threads)
        self.h.setOptionValue("presolve", "off")  # re-solves start from the last basis ...
        self.h.setOptionValue("simplex_strategy", 4)  # ... which new columns leave primal feasible: primal simplex
        inf = self.h.getInfinity()
        for j in range(self.J):
            self.h.addRow(float(self.m[j]), inf, 0, np.array([], dtype=np.int32), np.array([]))
        self._add_exchanges()

    def _add_exchanges(self) -> None:
        """Dual-optimal inequalities π_j ≤ π_k when length j costs no more than length k on every
        configuration (Ben Amor, Desrosiers & Valério de Carvalho, 2006): as free columns (+1 on j, −1 on
        k), "a group's place for k can run j instead". The LP value is unchanged, since any pattern with k
        replaced by j still fits; the duals are kept ordered, which cuts column generation's
        oscillation. Lengths are sorted, so neighbours suffice (the relation is transitive)."""
        cost = np.where(np.isfinite(self.cost), self.cost, np.inf)
        for j in range(self.J - 1):
            if (cost[j] <= cost[j + 1]).all():
                self.h.addCol(0.0, 0.0, self.h.getInfinity(), 2, np.array([j, j + 1], dtype=np.int32),
                              np.array([1.0, -1.0]))
                self.exchanged.append(j)

    @property
    def exchanges(self) -> int:
        """How many exchange columns precede the patterns in the LP."""
        return len(self.exchanged)

    def add_column(self, c: int, a: np.ndarray, T: float) -> bool:
        """Add pattern (c, a), enabled when it fits T (pricing passes T = inf: a relaxed pattern may run
        slightly past T). A pattern already a column is enabled again when it fits; False when nothing
        changed."""
        nz = np.flatnonzero(a > 1e-12)
        key = (c, nz.tobytes(), np.round(a[nz], 9).tobytes())
        load = float(np.dot(a[nz], self.cost[nz, c]))
        on = self.overhead[c] + load <= T * (1 + 1e-12)
        if key in self.known:
            k = self.known[key]
            if not on or self.enabled[k]:
                return False
            self.h.changeColBounds(self.exchanges + k, 0.0, self.h.getInfinity())
            self.enabled[k] = True
            return True
        self.known[key] = len(self.columns)
        self.h.addCol(float(self.gpus[c]), 0.0, self.h.getInfinity() if on else 0.0, nz.size,
                      nz.astype(np.int32), a[nz].astype(float))
        self.columns.append((c, load, nz, a[nz].astype(float)))
        self.enabled.append(bool(on))
        return True

    def add_solution(self, sol, T: float) -> None:
        """Columns from a plan's groups [(config, sequence indices)], each trimmed to fit T."""
        for c, seqs in sol:
            a = np.bincount(self.item_of[np.asarray(seqs, dtype=int)], minlength=self.J).astype(float)
            cost = np.nan_to_num(self.cost[:, c], posinf=0)  # lengths that do not fit c are not in a
            for j in np.argsort(self.cost[:, c]):  # drop the cheapest lengths until the group fits
                if self.overhead[c] + float(np.dot(a, cost)) <= T:
                    break
                a[j] = 0.0
            if a.any():
                self.add_column(c, a, T)

    def set_makespan(self, T: float) -> bool:
        """Enable the columns that fit T, and singletons for lengths without one; False when some length
        fits no configuration by T (then T is infeasible outright)."""
        fits = self.overhead[None, :] + self.cost <= T
        if not fits.any(axis=1).all():
            return False
        on = np.array([self.overhead[c] + load <= T * (1 + 1e-12) for c, load, _, _ in self.columns], dtype=bool)
        covered = np.zeros(self.J, dtype=bool)
        if on.size:
            idx = np.arange(self.exchanges, self.exchanges + on.size, dtype=np.int32)
            self.h.changeColsBounds(on.size, idx, np.zeros(on.size), np.where(on, self.h.getInfinity(), 0.0))
            self.enabled = on.tolist()
            for (_, _, nz, _), ok in zip(self.columns, on):
                covered[nz] |= ok
        area = np.where(fits, self.gpus[None, :] * self.cost, np.inf)
        for j in np.flatnonzero(~covered):  # a singleton on the cheapest configuration keeps the master feasible
            a = np.zeros(self.J)
            a[j] = 1.0
            self.add_column(int(np.argmin(area[j])), a, T)
        return True

    def infeasible(self, T: float, deadline: float) -> bool | None:
        """Prove that no plan has makespan ≤ T: True when proven, False when the LP allows T, None when the
        deadline (or HiGHS) stopped the proof."""
        room = T - self.overhead
        if self.paused[0] == T:  # a proof of this T cut short by a deadline goes on where it stopped
            _, center, best = self.paused
        elif not self.set_makespan(T):
            return True
        else:
            self.ref_pi, self.ref_value = np.zeros((self.J, self.C)), np.full(self.C, np.inf)  # last exact pricing
            self.last_value = math.nan
            center, best = self._carried_centre(room)
            if best > self.N * (1 + 1e-9):
                return True
        self.paused = (None, None, 0.0)
        while time.monotonic() < deadline:
            # HiGHS's time limit counts this object's total run time, so it is set past what has been used
            self.h.setOptionValue("time_limit", self.h.getRunTime() + max(deadline - time.monotonic(), 1e-3))
            self.h.run()
            if self.h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
                self.paused = (T, center, best)
                return None  # out of time (or numerical trouble): nothing proven yet
            lp = self.h.getInfo().objective_function_value
            solution = self.h.getSolution()
            self.last_x, self.last_value = np.asarray(solution.col_value), lp
            if lp <= self.N * (1 + 1e-9):
                return False
            pi_lp = np.maximum(np.asarray(solution.row_dual), 0.0)
            pi = pi_lp if center is None else SMOOTHING * center + (1 - SMOOTHING) * pi_lp
            theta, new = self._price(pi, room)
            bound = self._farley_of(pi, theta)
            if bound > best:
                best, center = bound, pi
                self.carried = pi
            if best > self.N * (1 + 1e-9):
                return True
            if not new:
                if center is pi_lp or np.allclose(pi, pi_lp) or lp - best <= 1e-7 * lp:
                    return False  # converged: the LP optimum is ≤ N
                center = SMOOTHING * center + (1 - SMOOTHING) * pi_lp  # mis-priced: move towards the LP duals
        self.paused = (T, center, best)
        return None

    def _carried_centre(self, room: np.ndarray) -> tuple[np.ndarray | None, float]:
        """The last trial's best duals, priced at this T: any π ≥ 0 gives Farley's bound, and at a lower T
        (less room, smaller θ) it is at least what it proved there, so a trial given up as too hard
        hands its progress to the next, lower one. (centre, its bound), or (None, 0) at the first trial."""
        if self.carried is None:
            return None, 0.0
        theta, _ = self._price(self.carried, room)
        return self.carried, self._farley_of(self.carried, theta)

    def config_mix(self) -> np.ndarray:
        """Σ λ_p per configuration in the last optimal LP solution: how many groups of each the LP uses."""
        mix = np.zeros(self.C)
        x = self.last_x[self.exchanges:]
        np.add.at(mix, [c for c, _, _, _ in self.columns[:x.size]], x)
        return mix

    def preferences(self) -> np.ndarray:
        """(n, C): the share of each sequence's length that the last restricted master solved to optimality
        (at the last makespan tried, which may be one the LP ruled out) runs on each configuration (Σ over its patterns of λ·count, over the length's multiplicity); zeros before any.
        A length j run in the place of j + 1 (an exchange column, value y) takes y of j + 1's places, in
        proportion to their configurations (longest first, so places passed down twice are followed)."""
        share = np.zeros((self.J, self.C))
        if self.last_x.size == 0:
            return share[self.item_of]
        x = self.last_x[self.exchanges:]
        for k in np.flatnonzero(x > 1e-9):
            c, _, nz, a = self.columns[k]
            share[nz, c] += x[k] * a
        for j, y in sorted(zip(self.exchanged, self.last_x[:self.exchanges]), reverse=True):
            total = share[j + 1].sum()
            if y > 1e-9 and total > 0:
                moved = share[j + 1] * min(y / total, 1.0)
                share[j] += moved
                share[j + 1] -= moved
        return (share / self.m[:, None])[self.item_of]

    def farley(self, pi: np.ndarray, T: float) -> float:
        """Farley's bound π·m/θ at makespan T (GPUs needed), without touching the LP or the pricing state."""
        room = T - self.overhead
        bound = _fractional(pi, self.cost, self.m, room) / self.gpus
        theta = 0.0
        for c in np.argsort(-bound, kind="stable"):
            if bound[c] <= theta:
                break
            theta = max(theta, _knapsack(pi, self.cost[:, c], self.m, room[c])[1] / self.gpus[c])
        return self._farley_of(pi, theta)

    def _farley_of(self, pi: np.ndarray, theta: float) -> float:
        """π·m/θ: GPUs any covering needs when no pattern is worth more than θ per GPU at these duals."""
        return float(pi @ self.m) / theta if theta > 0 else math.inf

    def _price(self, pi: np.ndarray, room: np.ndarray) -> tuple[float, int]:
        """θ = max_c (relaxed knapsack value)/gpus_c; adds each configuration's best pattern when its
        reduced cost is negative. Every configuration is bounded cheaply, the most promising get the exact
        relaxed knapsack: Dantzig's fractional value, or, for a configuration priced before at duals π⁰
        (same T) with value V⁰, V⁰ + Dantzig((π − π⁰)⁺), since every pattern a has
        π·a = π⁰·a + (π − π⁰)·a ≤ V⁰ + (π − π⁰)⁺·a. Smoothed duals move little, so this skips most."""
        bound = _fractional(pi, self.cost, self.m, room)
        seen = np.isfinite(self.ref_value)
        if seen.any():
            delta = np.maximum(pi[:, None] - self.ref_pi[:, seen], 0.0)
            bound[seen] = np.minimum(bound[seen], self.ref_value[seen] +
                                     _fractional(delta, self.cost[:, seen], self.m, room[seen]))
        bound /= self.gpus
        theta, new = 0.0, 0
        for c in np.argsort(-bound, kind="stable"):
            if bound[c] <= theta:
                break  # no configuration left can beat θ
            a, value = _knapsack(pi, self.cost[:, c], self.m, room[c])
            self.ref_pi[:, c], self.ref_value[c] = pi, value
            theta = max(theta, value / self.gpus[c])
            if float(pi @ a) > self.gpus[c] * (1 + 1e-9) and self.add_column(int(c), a, np.inf):
                new += 1
        return theta, new


def _fractional(pi, w, m, cap) -> np.ndarray:
    """Dantzig's bound per configuration (columns of w, rooms cap): the knapsack with every length
    fractional, best value per unit of cost first. pi: values (J,), or one column per configuration."""
    pi = pi if pi.ndim == 2 else pi[:, None]
    usable = np.isfinite(w) & (w <= cap[None, :]) & (pi > 0) & (cap[None, :] > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(usable, pi / w, -1.0)
    order = np.argsort(-ratio, axis=0, kind="stable")
    ws = np.take_along_axis(np.where(usable, m[:, None] * w, 0.0), order, axis=0)
    ps = np.take_along_axis(np.where(usable, m[:, None] * pi, 0.0), order, axis=0)
    spent = np.vstack([np.zeros(w.shape[1]), np.cumsum(ws, axis=0)])
    gain = np.vstack([np.zeros(w.shape[1]), np.cumsum(ps, axis=0)])
    k = np.minimum((spent <= cap[None, :]).sum(axis=0) - 1, w.shape[0] - 1)  # whole lengths that fit
    cols = np.arange(w.shape[1])
    over = np.maximum(cap - spent[k, cols], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        part = np.where(ws[k, cols] > 0, ps[k, cols] * np.minimum(over / ws[k, cols], 1.0), 0.0)
    return np.where(cap > 0, gain[k, cols] + part, 0.0)


PARETO_STATES = 20_000  # partial patterns kept per step of the exact pricing; beyond, the grid's bound is used
PARETO_CORE = 80  # ... and where more pieces than this are left undecided (one step costs ~45 us in numpy: a
#                   ProLong batch at 64 GPUs leaves ~210 of ~270, 10 ms a call against the grid's 3.4 ms)


def _knapsack(pi, w, m, cap) -> tuple[np.ndarray, float]:
    """Best relaxed pattern for one configuration: big lengths integral, small ones fractional; exact
    (_pareto_knapsack), or, where its partial patterns grow past PARETO_STATES, the grid's upper bound
    (_grid_knapsack). Returns (counts per length, value)."""
    if cap <= 0:
        return np.zeros(w.size), 0.0
    usable = np.isfinite(w) & (w <= cap) & (pi > 0)
    big = np.flatnonzero(usable & (w * SMALL_SHARE >= cap))
    small = np.flatnonzero(usable & (w * SMALL_SHARE < cap))
    small = small[np.argsort(-pi[small] / w[small], kind="stable")]  # best value per cost first
    fill = (np.concatenate([[0.0], np.cumsum(m[small] * w[small])]),  # the small lengths' Dantzig curve:
            np.concatenate([[0.0], np.cumsum(m[small] * pi[small])]))  # value = interp(room, *fill)
    found = _pareto_knapsack(pi, w, m, cap, big, small, fill)
    a, value, used = found if found is not None else _grid_knapsack(pi, w, m, cap, big, fill)
    room = cap - used
    for j in small:
        x = min(m[j], room / w[j])
        a[j] += x
        room -= x * w[j]
        if room <= 0:
            break
    return a, value


def _pareto_knapsack(pi, w, m, cap, big, small, fill) -> tuple[np.ndarray, float, float] | None:
    """The relaxed knapsack solved exactly, costs as they are: big lengths as binary-split pieces, kept
    as partial patterns (cost, value) where none costs more and is worth less (Nemhauser-Ullmann), each
    dropped once Dantzig's bound on what it can still take is below the best pattern known. Pieces that
    Dantzig's bound alone decides are decided first (Martello-Toth reduction): with v* the value of a
    greedy pattern, a piece whose leaving out bounds the pattern below v* is in every better one, a piece
    whose taking bounds it below v*, in none. Returns (big lengths' counts, value, their cost), or None
    past PARETO_STATES partial patterns or PARETO_CORE undecided pieces."""
    item, count = _split(big, m)
    pw, pv = w[item] * count, pi[item] * count
    every_w = np.concatenate([pw, m[small] * w[small]])  # pieces, then small lengths
    every_v = np.concatenate([pv, m[small] * pi[small]])
    by_ratio = np.argsort(-every_v / every_w, kind="stable")
    rank = np.empty(by_ratio.size, dtype=int)
    rank[by_ratio] = np.arange(by_ratio.size)
    sorted_w, sorted_v = every_w[by_ratio], every_v[by_ratio]
    cw = np.concatenate([[0.0], np.cumsum(sorted_w)])  # Dantzig's bound at any capacity: interp over these
    cv = np.concatenate([[0.0], np.cumsum(sorted_v)])
    best = _greedy_value(pw, pv, np.argsort(rank[:item.size]), cap, fill)
    inside = cw[rank[:item.size] + 1] <= cap  # taken whole by Dantzig's bound at cap
    keep_in = inside & (np.interp(cap + pw, cw, cv) - pv < best * (1 - 1e-12))
    keep_out = ~inside & (pv + np.interp(cap - pw, cw, cv) < best * (1 - 1e-12))
    room, fixed = cap - float(pw[keep_in].sum()), float(pv[keep_in].sum())
    if room < 0:
        return None
    core = np.flatnonzero(~keep_in & ~keep_out)
    if core.size > PARETO_CORE:
        return None
    core = core[np.argsort(rank[core])]
    states = _pareto_states(pw[core], pv[core], rank[core], rank[item.size:], sorted_w, sorted_v, room,
                            best - fixed, fill)
    if states is None:
        return None
    taken, value, used = states
    a = np.zeros(w.size)
    np.add.at(a, item[keep_in], count[keep_in])
    np.add.at(a, item[core[taken]], count[core[taken]])
    return a, fixed + value, cap - room + used


def _greedy_value(pw, pv, order, cap, fill) -> float:
    """A relaxed pattern's value: pieces in `order` while they fit, then small lengths fractionally."""
    used, value = 0.0, 0.0
    for k in order:
        if used + pw[k] <= cap:
            used, value = used + pw[k], value + pv[k]
    return value + float(np.interp(cap - used, *fill))


def _pareto_states(pw, pv, ranks, small_ranks, sorted_w, sorted_v, room, best, fill):
    """Partial patterns over the core pieces (in value-per-cost order, their ranks in sorted_w/_v), pruned
    by the bound over the pieces after each and every small length. Returns (which core pieces the best
    pattern takes, its value with the small lengths, its pieces' cost), or None past PARETO_STATES."""
    n = pw.size
    later = np.zeros((n, sorted_w.size), dtype=bool)
    later[:, small_ranks] = True
    rows, cols = np.triu_indices(n, 1)
    later[rows, ranks[cols]] = True
    bound_w = np.hstack([np.zeros((n, 1)), np.cumsum(np.where(later, sorted_w, 0.0), axis=1)])
    bound_v = np.hstack([np.zeros((n, 1)), np.cumsum(np.where(later, sorted_v, 0.0), axis=1)])
    W, V = np.zeros(1), np.zeros(1)
    steps = []
    for k in range(n):
        fits = int(np.searchsorted(W + pw[k], room, side="right"))
        Wa, Va = np.concatenate([W, W[:fits] + pw[k]]), np.concatenate([V, V[:fits] + pv[k]])
        src = np.concatenate([np.arange(W.size), np.arange(fits)])
        order = np.lexsort((-Va, Wa))  # by cost, the most valuable first among equal costs
        took = order >= W.size
        Wa, Va, src = Wa[order], Va[order], src[order]
        ok = Va > np.concatenate([[-np.inf], np.maximum.accumulate(Va)[:-1]])  # not dominated
        best = max(best, float((Va[ok] + np.interp(room - Wa[ok], *fill)).max()))
        ok &= Va + np.interp(room - Wa, bound_w[k], bound_v[k]) >= best * (1 - 1e-12)
        if not 0 < ok.sum() <= PARETO_STATES:  # (none left: rounding lost the best pattern's own path)
            return None
        W, V = Wa[ok], Va[ok]
        steps.append((src[ok], took[ok]))
    total = V + np.interp(room - W, *fill)
    s = int(np.argmax(total))
    value, used, taken = float(total[s]), float(W[s]), np.zeros(n, dtype=bool)
    for k in range(n - 1, -1, -1):
        taken[k] = steps[k][1][s]
        s = steps[k][0][s]
    return taken, value, used


def _grid_knapsack(pi, w, m, cap, big, fill) -> tuple[np.ndarray, float, float]:
    """An upper bound on the relaxed knapsack: big lengths' costs rounded down to cap/GRID (every true
    pattern fits the rounded room), small ones fractional. Returns (big lengths' counts, value, the
    rounded room they use)."""
    a = np.zeros(w.size)
    unit = cap / GRID
    dp = np.zeros(GRID + 1)  # dp[u]: best value of big lengths whose rounded costs sum to ≤ u units
    pieces, takes = [], []
    for j, t in zip(*_split(big, m)):
        u = int(w[j] * t / unit)
        if u > GRID:
            continue
        cand = dp[:GRID + 1 - u] + pi[j] * t
        take = cand > dp[u:]  # take[r − u]: taking the piece is best at capacity r
        np.copyto(dp[u:], cand, where=take)
        pieces.append((j, t, u))
        takes.append(take)
    left = np.maximum(cap - unit * np.arange(GRID + 1), 0.0)
    total = dp + np.interp(left, *fill)  # + small lengths, fractionally, in the room left
    best = int(np.argmax(total))
    r = best
    for (j, t, u), take in zip(reversed(pieces), reversed(takes)):
        if r >= u and take[r - u]:
            a[j] += t
            r -= u
    return a, float(total[best]), cap - float(left[best])


def _split(items: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Binary splitting: multiplicity m_j as pieces 1, 2, 4, …, so 0-1 choices make every count ≤ m_j."""
    item, count = [], []
    for j in items:
        left, k = int(m[j]), 1
        while left > 0:
            t = min(k, left)
            item.append(j)
            count.append(t)
            left, k = left - t, 2 * k
    return np.array(item, dtype=int), np.array(count, dtype=float)


def worth_trying(inst: Instance) -> bool:
    return len(np.unique(inst.lengths)) <= MAX_LENGTHS


class PatternBound:
    """The largest makespan proven infeasible, searched in [lower, upper] and resumable: improve() may be
    called again with a later deadline, and a trial cut short by a deadline goes on where it stopped.
    `solutions` (plans of makespan ≈ upper) seed the columns. Until the LP's threshold is estimated,
    trials step down from the incumbent, doubling the step (first_step=None: bisect, for a lower bound
    already tight); a trial's last restricted-master value V ≥ LP(T) estimates the threshold as T·V/N
    (LP(T)·T is nearly flat: more room, proportionally fewer GPUs; an allowed trial's V, just below N, says
    nothing: then bisect), and the next trial goes REACH of the way there: a trial's cost (mostly column
    generation's tail) grows only slowly as it nears the threshold (64 GPUs x 256: 1.5 s at 9 ms below it,
    2.3 s at 1.4 ms), so bold trials prove more. A trial cut short keeps what its duals prove at a lower
    level (salvage); one still open after `patience` seconds (over all calls) is given up as if allowed.
    hi and the estimate only steer the trials: the bound stays proven. `estimate` may be given (e.g. a
    threshold known to be lower)."""

    def __init__(self, inst: Instance, lower: float, upper: float, solutions=(), threads: int = 1,
                 rel_tol: float = 1e-4, first_step: float | None = FIRST_STEP, patience: float = math.inf,
                 estimate: float | None = None):
        self.lp = PatternLP(inst, threads)
        for sol in solutions:
            self.lp.add_solution(sol, upper)
        self.lower, self.upper, self.rel_tol, self.patience = lower, upper, rel_tol, patience
        self.lo, self.hi, self.step = lower, upper, first_step
        self.pending, self.spent = None, 0.0
        self.estimate, self.stalled = estimate, False

    @property
    def exhausted(self) -> bool:
        """Nothing left to prove: the bound has met the lowest makespan the LP allows (to rel_tol)."""
        return self.stalled or self.hi - self.lo <= self.rel_tol * self.upper

    def improve(self, deadline: float) -> float:
        while not self.exhausted and time.monotonic() < deadline:
            T = self.pending if self.pending is not None else self._next_trial()
            if T != self.pending:
                self.spent = 0.0
            started = time.monotonic()
            verdict = self.lp.infeasible(T, deadline)
            self.spent += time.monotonic() - started
            self.pending = T if verdict is None else None
            if verdict is not False and math.isfinite(self.lp.last_value):
                self.estimate = T * self.lp.last_value / self.lp.N  # LP(T)·T is nearly flat: the threshold ≈ T·V/N
            if verdict is None:
                self._salvage(T)
                if self.spent <= self.patience:
                    break  # out of time: resumed on the next call
                verdict, self.pending = False, None  # too hard so near the LP's threshold: try lower
            if verdict:
                self.lo = T
            else:
                self.hi, self.step = T, None if self.step is None else 2 * self.step
        return self.lo

    def _salvage(self, T: float) -> None:
        """A trial cut short still has duals whose Farley bound F falls short of N at T; with less room θ
        falls, so F rises: F·T is nearly flat, so the duals likely prove about T·F/N. A few cheap pricings
        (no LP) find such a level, which the bound keeps while the trial goes on."""
        pi = self.lp.carried
        if pi is None:
            return
        level = T
        for _ in range(SALVAGE_TRIES):
            F = self.lp.farley(pi, level)
            if F > self.lp.N * (1 + 1e-9):
                self.lo = max(self.lo, level)
                return
            level *= F / self.lp.N * (1 - 1e-6)
            if level <= self.lo:
                return

    def tighten(self, upper: float) -> None:
        """A better plan was found: nothing above its makespan needs a trial."""
        self.hi = min(self.hi, upper)
        if self.pending is not None and self.pending >= self.hi:
            self.pending = None

    def _next_trial(self) -> float:
        """Step down from the incumbent (or bisect) until the LP's threshold is estimated; then go REACH of
        the way to it (bisect when it is above hi, a level the LP allows)."""
        top = self.hi if self.estimate is None else min(self.hi, self.estimate)
        if self.estimate is not None and top - self.lo > self.rel_tol * self.upper:
            return self.lo + (REACH if top < self.hi else 0.5) * (top - self.lo)
        if self.lo == self.lower and self.step is not None:
            return max(self.hi - self.step * (self.upper - self.lower), (self.lo + self.hi) / 2)
        return (self.lo + self.hi) / 2


def pattern_bound(inst: Instance, lower: float, upper: float, deadline: float, solutions=(), threads: int = 1,
                  rel_tol: float = 1e-4) -> float:
    """Largest makespan in [lower, upper] proven infeasible by the pattern LP before the deadline (lower
    when none is); see PatternBound."""
    if upper <= lower or time.monotonic() >= deadline:
        return lower
    return PatternBound(inst, lower, upper, solutions, threads, rel_tol).improve(deadline)
