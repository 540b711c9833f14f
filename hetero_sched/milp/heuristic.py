"""Fast primal heuristic: search on the makespan T (galloping up from the lower bound, then bisecting)
with a first-fit-decreasing cover, then local search. Used as the MIP's warm start and, at scales the
MIP cannot build, as the answer.

cover(T): sequences hardest-first; each unplaced one opens a group of the most GPU-time-efficient
configuration ('efficient') or the smallest ('smallest') that runs it within T and can still be placed
on the nodes (greedy best fit), which is then filled,
longest-first, with every unplaced sequence that still fits before T. Polishing: spare GPUs become extra
groups of the most area-efficient configuration that still places; then move/swap local search on the
slowest group (configurations unchanged, so the placement stays valid).
"""
from __future__ import annotations

import time
from bisect import bisect_left

import numpy as np

from ..placement import NodePacker
from .bounds import distinct_lengths
from .instance import Instance

Solution = list  # [(config index, np.ndarray of item indices)]


def makespan(inst: Instance, sol: Solution) -> float:
    return max(inst.group_load(c, items) for c, items in sol)


def gpus_used(inst: Instance, sol: Solution) -> int:
    return int(sum(inst.gpus[c] for c, _ in sol))


RULES = ("efficient", "smallest")
GALLOP_START = 0.0025  # first cover trial: 0.25 % above the lower bound
GUESS_STEPS = (0.0, 0.01, 0.03)  # a guessed T, then 1 % and 3 % above it
MAX_STALE_RESTARTS = 200  # restarts in a row without improvement before the heuristic stops early


def cover(inst: Instance, T: float, order: np.ndarray, rule: str = "smallest",
          prefer: np.ndarray | None = None) -> Solution | None:
    """First-fit-decreasing cover with groups that finish by T; None when it needs more than N GPUs.

    rule: which configuration a sequence that opens a group gets, among those running it by T —
    'smallest' (fewest GPUs, then least overhead) or 'efficient' (least GPU-time per unit of room,
    gpus·cost/(T − overhead)). prefer (n, C), with 'efficient': configurations of larger prefer[i] first
    (the pattern LP's mix: PatternLP.preferences), efficiency breaking ties."""
    unplaced = np.ones(inst.n, dtype=bool)
    sol: Solution = []
    packer = NodePacker(inst.node_caps)
    by_size = np.lexsort((inst.overhead, inst.gpus))
    room_c = np.maximum(T - inst.overhead, 1e-12)
    fill = _Filler(inst, order)
    for i in order:
        if not unplaced[i]:
            continue
        ok = by_size[inst.overhead[by_size] + inst.cost[i, by_size] <= T]
        if rule != "smallest":
            ok = ok[np.argsort(inst.gpus[ok] * inst.cost[i, ok] / room_c[ok], kind="stable")]
            if prefer is not None:
                ok = ok[np.argsort(-prefer[i, ok], kind="stable")]
        c = next((int(c) for c in ok if packer.take(*inst.shape(c)) is not None), None)
        if c is None:
            return None
        unplaced[i] = False
        fill.placed(i)
        room = T - inst.overhead[c] - inst.cost[i, c]
        members = [i] + fill(c, room, unplaced)
        unplaced[members] = False
        sol.append((c, np.array(members)))
    return sol


class _Filler:
    """First-fit filling of a group, in `order`, with the sequences still unplaced. Where configuration c's
    costs do not rise along the order (the usual case: the order is by difficulty, which grows with
    length, and so do costs), the sequences that fit a room are a suffix of the order, found by bisection,
    and the first unplaced one there by a skip list (path-compressed): a fill costs O(taken · log n), not
    O(n) (a 65,536-sequence cover took seconds); elsewhere the scan of _fill. The members are those of
    the scan but for rounding: the room is reduced sequence by sequence rather than by running sums."""

    def __init__(self, inst: Instance, order: np.ndarray) -> None:
        self.inst, self.order = inst, np.asarray(order)
        self.order_list = self.order.tolist()
        self.pos = np.empty(inst.n, dtype=np.int64)
        self.pos[self.order] = np.arange(inst.n)
        self.skip = list(range(inst.n + 1))  # skip[p] = p while position p is unplaced
        self.columns: dict[int, tuple[list, list] | None] = {}

    def placed(self, i: int) -> None:
        p = int(self.pos[i])
        self.skip[p] = p + 1

    def _column(self, c: int):
        if c not in self.columns:
            costs = self.inst.cost[self.order, c]
            sorted_ = bool((costs[1:] <= costs[:-1]).all())  # inf (does not fit) first, then falling
            self.columns[c] = (costs.tolist(), (-costs).tolist()) if sorted_ else None
        return self.columns[c]

    def _next_free(self, p: int) -> int:
        skip, root = self.skip, p
        while skip[root] != root:
            root = skip[root]
        while skip[p] != root:
            skip[p], p = root, skip[p]
        return root

    def __call__(self, c: int, room: float, unplaced: np.ndarray) -> list[int]:
        column = self._column(c)
        if column is None:
            taken = _fill(self.order[unplaced[self.order]], self.inst.cost[:, c], room)
            for i in taken:
                self.placed(i)
            return taken
        costs, rising = column
        n, skip, order, taken, p = len(costs), self.skip, self.order_list, [], 0
        while True:
            q = self._next_free(max(p, bisect_left(rising, -room)))  # first unplaced that fits the room
            if q >= n:
                return taken
            taken.append(order[q])
            skip[q] = q + 1
            room -= costs[q]
            p = q + 1


def _fill(candidates: np.ndarray, cost: np.ndarray, room: float) -> list[int]:
    """Scan candidates in order, taking each that still fits in the room (first-fit). Vectorised by runs:
    jump to the next candidate that fits, then take the longest run after it whose running total fits
    (each of those fits when its turn comes); room only shrinks, so skipped candidates never fit later."""
    taken: list[int] = []
    costs = cost[candidates]
    pos = 0
    while pos < candidates.size:
        fits = np.flatnonzero(costs[pos:] <= room)
        if fits.size == 0:
            break
        k = pos + int(fits[0])
        run = np.cumsum(costs[k:])
        m = max(1, int(np.searchsorted(run, room, side="right")))  # costs[k] ≤ room: at least one
        taken.extend(int(c) for c in candidates[k:k + m])
        room -= float(run[m - 1])
        pos = k + m
    return taken


def least_gpu_time(inst: Instance) -> np.ndarray:
    """Each sequence's least GPU-time over configurations: how hard it is to place."""
    return np.min(inst.cost * inst.gpus[None, :], axis=1)


def default_order(inst: Instance) -> np.ndarray:
    """Sequences by decreasing least GPU-time (the hardest first)."""
    return np.argsort(-least_gpu_time(inst), kind="stable")


def _until(deadline: float, sol: Solution, per_group_s: float) -> float:
    """The deadline less the time to place and price a plan as large as sol."""
    return deadline - per_group_s * len(sol)


def binary_search_cover(inst: Instance, lo: float, hi: float, deadline: float, rel_tol: float = 1e-4,
                        order: np.ndarray | None = None, rule: str = "smallest", guess: float | None = None,
                        per_group_s: float = 0.0, prefer: np.ndarray | None = None):
    """Smallest T in [lo, hi] (to rel_tol) whose cover fits the cluster; None if even hi fails.
    Trials gallop up from the lower bound (GALLOP_START above it, doubling) before bisecting: with a
    good bound the answer lies just above it, and each cover of a large batch costs a fraction of a
    second. guess: a T tried first instead of hi (a short limit may allow one cover: it should be a
    good one); hi is tried only if it fails."""
    order = default_order(inst) if order is None else order
    best = None
    if guess is not None:  # then a little higher (GUESS_STEPS), before hi
        for T in (guess * (1 + up) for up in GUESS_STEPS):  # the guess itself even past the deadline
            if not lo < T < hi or (T > guess and time.monotonic() >= deadline):
                break
            best = cover(inst, T, order, rule, prefer)
            if best is not None:
                break
            lo = T
    best = best or cover(inst, hi, order, rule, prefer)
    if best is None:
        return None
    deadline = _until(deadline, best, per_group_s)
    hi = min(hi, makespan(inst, best))
    step, last_s = GALLOP_START, 0.0
    while hi - lo > rel_tol * hi and time.monotonic() + last_s < deadline:  # (a cover that would end past it
        # is not started: at 16,384 GPUs one takes 0.3-0.5 s)
        mid = min(lo * (1 + step), (lo + hi) / 2)
        started = time.monotonic()
        sol = cover(inst, mid, order, rule, prefer)
        last_s = time.monotonic() - started
        if sol is None:
            lo, step = mid, 2 * step
        else:
            best, hi = sol, min(mid, makespan(inst, sol))
    return best


def add_spare_groups(inst: Instance, sol: Solution, efficiency: np.ndarray | None = None) -> Solution:
    """Spend idle GPUs on empty groups of the configurations that run the batch most cheaply per GPU
    (placed after the solution's groups, in order, as the cover placed them)."""
    packer = NodePacker(inst.node_caps)
    for c, _ in sol:
        if packer.take(*inst.shape(c)) is None:
            return list(sol)  # not placeable in this order: add nothing
    efficiency = spare_efficiency(inst) if efficiency is None else efficiency
    sol = list(sol)
    for c in np.argsort(efficiency, kind="stable"):
        while np.isfinite(efficiency[c]) and sum(packer.free) >= inst.gpus[c] \
                and packer.take(*inst.shape(c)) is not None:
            sol.append((int(c), np.array([], dtype=int)))
    return sol


def spare_efficiency(inst: Instance) -> np.ndarray:
    """Each configuration's median GPU-time over the sequences it holds (inf: none); all columns at once
    (one at a time took 0.4 s at 806 configurations x 16,387 sequences)."""
    first, counts = distinct_lengths(inst.lengths)  # the median of the sequences' values, over distinct rows
    value = inst.cost[first] * inst.gpus[None, :]
    value = np.where(np.isfinite(value), value, np.inf)
    ranked, weight = value, np.broadcast_to(counts[:, None], value.shape)
    if not (value[1:] >= value[:-1]).all():  # rows are by length and costs rise with it: sorted but for ties
        order = np.argsort(value, axis=0, kind="stable")
        ranked, weight = np.take_along_axis(value, order, axis=0), counts[order]
    held = np.cumsum(np.where(np.isfinite(ranked), weight, 0.0), axis=0)  # sequences up to each rank
    total = held[-1]
    cols = np.arange(value.shape[1])
    lo = np.minimum((held < ((total - 1) // 2 + 1)[None, :]).sum(axis=0), len(held) - 1)  # the middle two
    hi = np.minimum((held < (total // 2 + 1)[None, :]).sum(axis=0), len(held) - 1)       # sequences' ranks
    middle = np.where(lo == hi, ranked[lo, cols], (ranked[lo, cols] + ranked[hi, cols]) / 2)
    return np.where(total > 0, middle, np.inf)


def local_search(inst: Instance, sol: Solution, deadline: float, max_rounds: int = 100000) -> Solution:
    """Move or swap a sequence out of the slowest group while that lowers the pair's larger load."""
    cfg = np.array([c for c, _ in sol])
    where = np.full(inst.n, -1)
    for g, (_, items) in enumerate(sol):
        where[items] = g
    loads = np.array([inst.group_load(c, items) for c, items in sol])
    for _ in range(max_rounds):
        if time.monotonic() > deadline or not _improve(inst, cfg, where, loads):
            break
    return [(int(c), items) for c, items in zip(cfg, members_by_group(where, len(cfg)))]


def members_by_group(where: np.ndarray, groups: int) -> list:
    """[(ascending item ids of group g)] for g < groups: one sort (a scan per group is O(n·G): 0.3 s at
    65,536 sequences in 5,000 groups)."""
    kept = np.flatnonzero(where >= 0)
    by = kept[np.argsort(where[kept], kind="stable")]
    return np.split(by, np.cumsum(np.bincount(where[kept], minlength=groups))[:-1])


def _improve(inst: Instance, cfg: np.ndarray, where: np.ndarray, loads: np.ndarray) -> bool:
    top = int(np.argmax(loads))
    peak = loads[top]
    items = np.flatnonzero(where == top)
    # costs gathered as needed: the (n, G) matrix of every item in every group's configuration would
    # take 2.6 GB at 65,536 sequences in 5,000 groups
    best = (peak, None)
    for i in items:  # moves: i leaves the top group for group h
        row = inst.cost[i, cfg]
        new_h = loads + row
        new_h[top] = np.inf
        h = int(np.argmin(new_h))
        worst = max(new_h[h], peak - row[top])
        if worst < best[0] - 1e-9:
            best = (worst, ("move", i, h))
    if best[1] is None and items.size:  # swaps: i out of top, j from h into top
        others = np.flatnonzero(where != top)
        if others.size:
            hs = where[others]
            into_top = inst.cost[others, cfg[top]]
            own = inst.cost[others, cfg[hs]]
            for i in items:
                row = inst.cost[i, cfg]
                new_top = peak - row[top] + into_top
                new_h = loads[hs] - own + row[hs]
                worst = np.maximum(new_top, new_h)
                k = int(np.argmin(worst))
                if worst[k] < best[0] - 1e-9:
                    best = (worst[k], ("swap", i, int(others[k])))
    if best[1] is None:
        return False
    kind, i, x = best[1]
    cost = inst.cost
    if kind == "move":
        loads[top] -= cost[i, cfg[top]]
        loads[x] += cost[i, cfg[x]]
        where[i] = x
    else:
        h = where[x]
        loads[top] += cost[x, cfg[top]] - cost[i, cfg[top]]
        loads[h] += cost[i, cfg[h]] - cost[x, cfg[h]]
        where[i], where[x] = h, top
    return True


def polish(inst: Instance, sol: Solution, deadline: float, efficiency: np.ndarray | None = None) -> Solution:
    sol = local_search(inst, add_spare_groups(inst, sol, efficiency), deadline)
    return [(c, items) for c, items in sol if items.size]


def heuristic_solution(inst: Instance, lower: float, upper: float, deadline: float, seed: int = 0,
                       restarts: bool = True, guess: float | None = None,
                       per_group_s: float = 0.0) -> Solution | None:
    """Binary-searched covers under both opening rules, polished; then, until the deadline, restarts
    with the order perturbed (seeded). Returns the best found, or None when no cover fits. guess: the
    first T tried (see binary_search_cover). per_group_s: what placing and pricing a plan costs per
    group; once a cover is found, the search stops that much before the deadline (a plan of 5,000 groups
    takes seconds to build)."""
    best, best_ms = None, np.inf
    covers = []  # both rules' covers first, then polish the better first (at scale polishing takes seconds)
    for rule in RULES:
        if covers and time.monotonic() >= deadline:
            break
        sol = binary_search_cover(inst, lower, upper, deadline, rule=rule, guess=guess, per_group_s=per_group_s)
        if sol is not None:
            covers.append(sol)
            deadline = min(deadline, _until(deadline, sol, per_group_s))
    efficiency = spare_efficiency(inst) if covers else None
    for sol in sorted(covers, key=lambda s: makespan(inst, s)):
        if best is not None and time.monotonic() >= deadline:
            break
        sol = polish(inst, sol, deadline, efficiency)
        if makespan(inst, sol) < best_ms:
            best, best_ms = sol, makespan(inst, sol)
    if best is None or not restarts:
        return best
    rng = np.random.default_rng(seed)
    key = least_gpu_time(inst)
    stale = 0
    for attempt in range(10_000):
        if time.monotonic() >= deadline or stale >= MAX_STALE_RESTARTS or best_ms <= lower:
            break
        stale += 1
        order = np.argsort(-key * rng.lognormal(0, 0.3, size=inst.n), kind="stable")
        sol = binary_search_cover(inst, lower, best_ms, deadline, order=order, rule=RULES[attempt % 2])
        if sol is None:
            continue
        sol = polish(inst, sol, deadline, efficiency)
        ms = makespan(inst, sol)
        if ms < best_ms:
            best, best_ms, stale = sol, ms, 0
    return best
