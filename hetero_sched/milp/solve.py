"""hs.solve: warm start (best placed WLB-LLM plan) → heuristic → exact MIP → the best plan, priced and bounded."""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..latency import LatencyModel
from ..latency.base import GroupStepEnds
from ..placement import nodes_spanned, pack_nodes, ranks_from_nodes
from ..plan import Plan, SolveResult, check_objective, objective_key
from ..specs import Cluster
from .backends import BACKENDS, BUILD_SHARE, BuildTimeout, build_seconds, run_backend
from .bounds import LayoutBounds, area_bracket, distinct_lengths, overhead_area_bound, simple_bound
from .formulation import build_milp, decode, decode_nodes, estimate_size, hint_values
from .groups import grouped_step_bound
from .heuristic import binary_search_cover, heuristic_solution, makespan, polish
from .instance import Instance, _undominated, build_instance, check_lengths, grid_points
from .layouts import (
    Family,
    delay_area_bound,
    first_penalties,
    forward_tables,
    net_forward_caps,
    step_bound,
    tiered_delay_bound,
    tighten,
)
from .lns import rebalance, swap_towards
from .patterns import PatternBound, worth_trying
from .polish import MIN_S_PER_GROUP, polish_step
from .remote import STARTUP_S, RemoteBound

OPTIMAL_GAP = 1e-6
MAX_MIP_VARIABLES = 60_000  # beyond this the slot MIP is not built: heuristic + bounds answer
# ... and beyond this, under a time limit, the pattern LP and LNS (which need the clock) run instead: measured
# at 10 s (2 threads), CP-SAT proved slices of 3,962 and 4,781 variables optimal (16 GPUs x 33-40) but
# returned no plan on slices of 9,477-58,760 (16 GPUs x 81 to 64 x 256) and only a weak bound at 7,456
# (16 x 64: makespan gap 1.54 % against 0.12 % with the LP)
MIP_BEFORE_PATTERNS_VARIABLES = 6_000
HEURISTIC_SHARE = 0.3       # of the time limit, when the MIP runs after it
PATTERNS_HEURISTIC_SHARE = 0.1  # ... and when the pattern LP and LNS do
PATTERN_SHARE = 0.35        # of the time left, for the pattern LP before the configuration swaps
TURN_S = 0.5                # with the LP in a worker: the LP here and LNS rounds take turns of this long
LNS_SHARE = 0.4             # of the time left then, for rebalancing (it stops earlier once stuck)
LP_COVER_SHARE = 0.1        # of the time left after the first pattern LP, for covers that open groups on its mix,
                            # then as much of what is left for polishing the best of them
MILP_VARS_PER_S = 150_000   # build_milp's own pace here (24 GPUs x 256 sequences: 47,672 variables in 0.32 s)
WAITS_MIN_S = 2.0          # seconds left below which the step bound does without the all-gather's waits
WAITS_MAX_SEQUENCES = 2048  # beyond, no waits in the step bound: 1.8 s for 4 ms at 1,024 GPUs x 4,096, 6 s for
                            # nothing at 16,384 x 65,536 (the relaxation finds every group an anchor)
TIERS_MARGIN = 0.005       # a family's tiers aim this far past the next family's step bound (fewer turns between them)
WAITS_SHARE = 0.2          # of the time left, at most, for the waits (the tiers: ~1 s at 64 GPUs x 256 and 256 x 1,024)
RESERVE_PLANS = 4           # plan pricings kept back per slice (heuristic's, MIP's, the final one, slack)
ALLOWANCE_SHARE, ALLOWANCE_MIN_S = 0.25, 0.05  # a run may end this far past its limit: max(25 %, 0.05 s)
QUICK_FACTOR = 10           # a limit leaving less than this many pricings' time after the warm start is short:
                            # cheap bounds, first covers aimed near the area bound, no pattern LP or LNS
BUILD_REPRICES = 5          # building a plan (packing, ordering, pricing) and its final pricing, in repricings
FIRST_SHARE = 0.5           # of the time left, at least, for the step objective's makespan search (see _slice_share)
QUICK_FLOOR_S = 0.25        # ... and one leaving less than this always is (the pattern LP's search would leave the
                            # heuristic 10 % of it: at 64 GPUs a 0.1 s plan came out 12 % slower than a 0.05 s one)
QUICK_MAX_S = 5.0           # ... but a limit leaving more than this is never short: the overhead area bound is
                            # worth its cost there (a 1M-context batch on 4,096 GPUs prices for ~1 s)
UNSTAGED_SHARE = 0.4        # of the time left, for the search without stages when stages are optional
PIPELINE_SHARE = 0.2        # of the time left, for a search on estimated pipeline costs when stages are searched
QUICK_SLACK = 0.006         # the first cover's T above the area relaxation's threshold estimate
GUESS_MIN_SEQUENCES = 2048  # beyond, every limit's first covers are aimed so (one cover of 65,536 sequences takes
                            # ~0.4 s: galloping up from the bound, a slice given 2.3 s of a 10 s step solve at
                            # 16,384 GPUs returned its cover at the warm start's makespan)
QUICK_GPUS_PER_GROUP = 3.5  # a short limit's plan has about one group per this many GPUs (17-19 groups on 64 GPUs,
                            # 264-320 on 1,024, 711-1,057 on 4,096, 5,052 on 16,384) ...
REPRICES_PER_GROUP = 4.5    # ... each costing about this many repricings of a group of the warm start (a cover
                            # ~35 us, building ~70 us, a group repriced ~23 us here) ...
SEQ_PRICINGS_PER_CELL = 0.12  # ... plus copying the slice, the area target, the order and the spare groups'
                              # medians: ~60 ns per sequence x configuration, against ~0.5 us a sequence repriced
QUICK_RESERVE_PLANS = 1     # ... a short limit's (its final plan is not priced again)
QUICK_GRACE = 0.5           # of the allowance past a short limit (max(25 %, 0.05 s)) its searches may use
QUICK_REPEAT = 1.5          # a short limit's next slice is searched only with this many times the last one's search
                            # left (4,096 GPUs at 1 s: the second took 0.65 s against 0.41 s, ending at 1.33 s)
GRID_MIN_DISTINCT = 6_000   # distinct lengths from which a limit under QUICK_MAX_S may price a grid of them
FEWER_GROUPS_GAIN = 0.01   # a cover on larger groups is tried where halving the groups saves this share of the makespan
FEWER_GROUPS_HEURISTIC_SHARE = 0.5  # ... the heuristic then has this share of the slice's time
FEWER_GROUPS_SLACK = 0.005  # ... and the cover's first T is the heuristic's makespan this much higher
POLISH_SHARE = 0.15         # of the time left after the bounds, for the step polish of the plans found (see polish):
                            # it converges in 0.1-1.4 s at 64 GPUs x 256 (seed 31's TP2 plan: 1,739 -> 1,630 ms)
POLISH_SHARE_ALONE = 0.3    # ... and where no pattern LP can raise a bound after the search (beyond 400 distinct
                            # lengths): at 16,384 GPUs the 2,890-group plan needs 1.45 s to start, and 15 % left it
                            # 1.31 s in two runs of three (unpolished: 3,663 ms; polished: 3,623)


def solve(lengths, cluster: Cluster, lat: LatencyModel, *, backend: str = "cpsat", time_limit_s: float = 10.0,
          threads: int = 2, seed: int = 0, rel_gap: float = OPTIMAL_GAP / 10,
          deterministic_limit: float | None = None, objective: str = "step",
          round_lengths: int | None = None, pp_degrees=None) -> Plan:
    """Plan one step: groups of different (TP, CP) placed on nodes, sequences assigned.

    objective='step' (default) minimises makespan + exposed gradient sync: the search runs once per
    smallest TP degree (the sync's layout depends on it) and keeps the plan with the least step time;
    objective='makespan' minimises the slowest group. The returned plan is the best of the solver's
    plans and the warm start (the best placed homogeneous WLB-LLM plan on the same objective), all
    recomputed from their placement: never worse than WLB-LLM on the objective. round_lengths=r prices
    lengths rounded up to a multiple of r (fewer distinct lengths; costs stay upper bounds); the plan is
    priced on the true lengths. threads: the backends' threads; with 2 or more, the step objective's
    bound may also run one pattern LP in a worker process (see milp.remote). pp_degrees: the pipeline
    degrees searched, each dividing the layers (default: 1 when the model fits without stages, else every
    divisor with which it fits: instance.check_pp_degrees); groups of different degrees mix like groups of different TP. The search runs once
    per smallest layout (GPUs per parameter copy, tp·pp) under the step objective. With threads ≥ 2 a
    pattern LP bound may run in a worker process: the step objective's pure family (milp.remote), or,
    where no worker runs, the searched slice's LP (see _patterns_and_lns)."""
    start = time.monotonic()
    _check_args(cluster, lat, backend, time_limit_s, threads, seed, rel_gap, objective, round_lengths,
                deterministic_limit)
    deadline = start + time_limit_s
    from ..baselines.wlb_llm import best_homogeneous_plan

    true_lengths = np.asarray(check_lengths(lengths), dtype=np.int64)
    priced = _rounded(true_lengths, round_lengths)
    full = _priced(priced, lat, pp_degrees, time_limit_s if deterministic_limit is None else math.inf)
    clock = {"pricing": time.monotonic() - start}
    warm = best_homogeneous_plan(full, lat, objective)
    clock["warm start"] = time.monotonic() - start - clock["pricing"]
    # the searches' bounds hold for the rounded-up costs only: the reported ones are proven before the search
    # (within the limit) on the lengths rounded down
    low = _bound_on_lengths_rounded_down(true_lengths, round_lengths, lat, pp_degrees, warm.makespan_ms) \
        if round_lengths else None
    repricing = _pricing_seconds(warm, lat)
    reserve = repricing * RESERVE_PLANS  # placing and pricing the plans found, after the search
    per_group_s = repricing * BUILD_REPRICES / len(warm.groups)  # building a plan found, per group
    # a short limit (little time left for what pricing took): simple bounds, first covers aimed (see README)
    left = deadline - time.monotonic()
    short = min(max(QUICK_FACTOR * clock["pricing"], QUICK_FLOOR_S), QUICK_MAX_S)
    quick = deterministic_limit is None and (left < short or full.floor is not None)
    if quick:  # the final plan is not priced again (Plan.refresh) and the heuristic keeps back its own building
        reserve = repricing * QUICK_RESERVE_PLANS
    # a short limit's searches may run into half the limit's allowance: without it no plan but the warm start
    # comes back at 0.1 s on 1,024 GPUs (pricing, the warm start and one plan's building take about that)
    allowance = allowance_s(time_limit_s)
    first_end = max(deadline, start + time_limit_s + QUICK_GRACE * allowance) if quick else deadline
    # ... and none may build a plan past the allowance itself (its final pricing kept back)
    allowance_end = start + time_limit_s + allowance - reserve if quick else math.inf
    tps = sorted({full.layout(c) for c in range(len(full.configs))})  # smallest layouts a plan may have
    mins = LayoutBounds(full) if quick else None
    slices = [_slice(full, warm, t, mins) for t in (tps if objective == "step" else tps[:1])]
    # the all-gather's waits in the step bound cost ~1 s at 64 GPUs x 256: not on limits under WAITS_MIN_S nor
    # beyond WAITS_MAX_SEQUENCES, at most WAITS_SHARE of the time left (all under a work limit: the same bound
    # on every run)
    waits = None
    if objective == "step" and not quick and not full.pipelined and full.n <= WAITS_MAX_SEQUENCES and (
            deterministic_limit is not None or deadline - time.monotonic() > WAITS_MIN_S):
        waits = _waits_bounds(slices, full, lat, warm.step_ms, math.inf if deterministic_limit is not None
                              else time.monotonic() + WAITS_SHARE * (deadline - time.monotonic()))
    clock["bounds"] = time.monotonic() - start - clock["pricing"] - clock["warm start"]
    plans, notes, bounds = [("warm start", warm)] + _per_micro_batch(warm, lat), {}, {}
    if full.pipelined and not quick:
        if any(cfg[3] == 1 for cfg in full.configs):  # stages are optional: the search without them first
            left = (deadline - reserve - time.monotonic()) * UNSTAGED_SHARE
            unstaged = solve(true_lengths, cluster, lat, backend=backend, time_limit_s=max(left, 0.0),
                             threads=threads, seed=seed, rel_gap=rel_gap, objective=objective,
                             deterministic_limit=deterministic_limit, round_lengths=round_lengths, pp_degrees=(1,))
            plans.append(("the search without stages", unstaged))
        plans += _pipeline_estimate_plans(full, lat, warm, _share(PIPELINE_SHARE, deadline - reserve), seed,
                                          per_group_s, deterministic_limit)
    families = [f for sl in slices for f in sl.families]
    polishing = objective == "step" and not quick and not full.pipelined and deterministic_limit is None
    no_pattern_lp = not worth_trying(full)  # (it reads the lengths alone: the same for every slice)
    polish_s = (POLISH_SHARE_ALONE if no_pattern_lp else POLISH_SHARE) * max(deadline - reserve - time.monotonic(),
                                                                             0.0) if polishing else 0.0
    reserve += polish_s  # (the searches end that much earlier)
    beside = objective == "step" and deterministic_limit is None and not round_lengths and threads >= 2
    try:
        # most promising slice first; under the step objective the makespan search (every configuration)
        # comes first, so that the step objective never loses to the makespan objective's plan
        todo = sorted(slices, key=lambda sl: sl.step_lower(lat))
        if objective == "step" and quick:  # one slice may be all a short limit searches: the likeliest first
            todo.sort(key=lambda sl: step_estimate(sl, full, lat))
        elif objective == "step":
            todo.sort(key=lambda sl: sl.min_tp != tps[0])
        first, last_search_s = True, 0.0
        while todo:
            sl = todo.pop(0)
            best = min(objective_key(p, objective)[0] for _, p in plans)
            if objective == "step" and sl.step_lower(lat) >= best:
                bounds[sl.min_tp] = sl.lower
                notes[sl.min_tp] = f"{_unit(full)}>={sl.min_tp}: not searched (its step bound {sl.step_lower(lat):.1f} ms " \
                                   f">= the best plan's {best:.1f} ms)"
                continue
            if beside and not any(f.remote for f in families):
                sl.start_beside(lat, best, deadline - reserve - time.monotonic())
            now = time.monotonic()
            share = _slice_share(sl, todo, lat, best, first, quick)
            end = first_end if quick else deadline
            slice_deadline = now + (end - reserve - now) * share
            first_search, first = first, False
            if quick and sl.make is not None:  # no time for a cover and its plan: not even the slice is built
                # (what the last slice's search took is a floor: each cover runs to its end past the deadline)
                expected = max(_quick_search_seconds(sl, full, warm, repricing), QUICK_REPEAT * last_search_s)
                if now + expected > end - reserve:
                    bounds[sl.min_tp] = sl.lower
                    notes[sl.min_tp] = f"{_unit(full)}>={sl.min_tp}: no time left for a first cover and its plan " \
                                       f"(~{1e3 * expected:.0f} ms here): warm start kept, simple bounds"
                    continue
            if first_search or time.monotonic() < deadline - reserve:
                sl.build(full, warm)  # (a short limit's later slices: only when time is left to search them)
            found, bounds[sl.min_tp], notes[sl.min_tp], search = _search(
                sl, full, lat, slice_deadline, backend, threads, seed, rel_gap, deterministic_limit, quick,
                per_group_s, allowance_end, fewer_groups=polishing,
                spare_core=threads >= 2 and deterministic_limit is None and not any(f.remote for f in families))
            last_search_s = time.monotonic() - now
            sl.searched(bounds[sl.min_tp], search, threads, deterministic_limit)
            plans += found
        if polishing:  # its share, or half of what the searches left (the rest raises the step bound), or all of
            reserve -= polish_s  # it where no bound can be raised (no family has a pattern LP: beyond 400 lengths)
            now = time.monotonic()
            left = deadline - reserve - now
            raising = any(f.open or f.remote is not None for f in families) or waits is not None
            plans += _polished(plans, lat, families, now + (max(polish_s, left / 2) if raising else left))
        if objective == "step" and not quick and not full.pipelined and not round_lengths:
            _group_count_bounds(slices, lat, min(p.step_ms for _, p in plans),
                                math.inf if deterministic_limit is not None else deadline - reserve)
        if waits is not None and deterministic_limit is None and not round_lengths:  # aimed at the best plan now
            waits.raise_lowest(min(p.step_ms for _, p in plans), deadline - reserve)
        if objective == "step" and deterministic_limit is None and not round_lengths and full.floor is None:
            best = min(p.step_ms for _, p in plans)
            moved = tighten(families, lat, best, deadline - reserve)
            if moved:
                notes[max(tps) + 1] = "time left to the step bound: " + "; ".join(moved)
            for sl in slices:  # the mixed family's LP covers the whole slice: a makespan bound for all its plans
                bounds[sl.min_tp] = max(bounds[sl.min_tp], sl.families[1].bound)
    finally:
        for f in families:
            f.stop_remote()
    clock["search"] = time.monotonic() - start - sum(clock.values())
    if round_lengths:
        plans = [(who, _on_true_lengths(p, true_lengths, lat)) for who, p in plans]
    who, plan = min(plans, key=lambda wp: (*objective_key(wp[1], objective), wp[0] != "warm start"))
    plan.baseline = dict(warm.baseline)
    if round_lengths:
        makespan_bound, step_bound = low, min(low + lat.sync_exposed_lower_ms(t, low) for t in tps)
    else:
        makespan_bound = bounds[tps[0]]
        per_layout = _layout_step_bounds(lat, bounds, tps, mins or LayoutBounds(full)) if objective != "step" \
            else None
        step_bound = max(_step_bound(lat, families, per_layout), bounds[tps[0]])
    plan.solver = SolveResult(backend=backend, status="feasible",  # (a work limit replaces the clock's)
                              time_limit_s=time_limit_s if deterministic_limit is None else None,
                              work_limit=deterministic_limit, threads=threads,
                              seed=seed, objective=objective, makespan_bound_ms=makespan_bound,
                              step_bound_ms=step_bound)
    plan.refresh(lat)  # every candidate was built (or the warm start repriced) by lat; only solver and baseline set
    s = plan.solver
    s.status = "optimal" if s.gap <= OPTIMAL_GAP else ("baseline" if who == "warm start" else "feasible")
    rounding = f"lengths priced rounded up to {round_lengths}, bounds on them rounded down; " if round_lengths else ""
    s.wall_s = time.monotonic() - start
    clock["placing and pricing the plans"] = s.wall_s - sum(clock.values())
    spent = ", ".join(f"{k} {1e3 * v:.0f} ms" for k, v in clock.items())
    grid = "lengths priced on a grid (estimated costs, bounds on their floors), " if full.floor is not None else ""
    order = "layouts in order of an estimated step, " if objective == "step" else ""
    budget = (f" | short limit: {grid}simple bounds, {order}first covers aimed at the area bound's T, no pattern "
              f"LP or LNS, searches may use half the allowance past the limit; {spent}") if quick \
        else f" | time: {spent}"
    if deterministic_limit is not None:
        budget = ""  # under a work limit the message, like the plan, is the same on every run
    if objective == "step" and not round_lengths and not full.pipelined and families and s.gap > OPTIMAL_GAP:
        notes[max(tps) + 2] = _binding_family(families, lat, s.step_bound_ms)
    elif objective != "step" and not round_lengths:
        t, (low, step) = min(per_layout.items(), key=lambda kv: kv[1][1])
        notes[max(tps) + 2] = f"step bound {s.step_bound_ms:.1f} ms: plans whose smallest {_unit(full)} is {t} " \
                              f"take {low:.1f} ms at least (makespan) plus {step - low:.1f} ms of sync"
    s.message = f"objective {objective}; {rounding}plan from {who}; " + " | ".join(notes[t] for t in sorted(notes)) \
        + budget
    return plan


def allowance_s(time_limit_s: float) -> float:
    """How far past its limit a run may end (model building and the final plan included)."""
    return max(ALLOWANCE_SHARE * time_limit_s, ALLOWANCE_MIN_S)


def _priced(lengths: np.ndarray, lat: LatencyModel, pp_degrees, limit_s: float) -> Instance:
    """The full instance. Where the limit will be short whatever pricing takes (under QUICK_FLOOR_S, or at
    least GRID_MIN_DISTINCT distinct lengths whose full pricing would leave the limit short: see solve's
    quick), a grid of the lengths is priced instead of all (build_instance's grid: estimated costs,
    their floors for the bounds): 1,024 GPUs x 4,096 sequences priced in 31 ms instead of 42-56 ms,
    16,384 x 65,536 in 0.13-0.45 s instead of 0.28-0.75 s."""
    uniq = np.unique(lengths)
    if limit_s < QUICK_FLOOR_S or (uniq.size >= GRID_MIN_DISTINCT and limit_s < QUICK_MAX_S):
        started = time.monotonic()
        full = build_instance(lengths, lat, prune=False, pp_degrees=pp_degrees, grid=True)
        if full.floor is None:
            return full
        # pricing every distinct length would take about this grid's time times how many more lengths there
        # are than grid points; were the limit short even then (see solve's quick), keep the grid
        exact_s = (time.monotonic() - started) * uniq.size / len(grid_points(uniq))
        if limit_s < QUICK_FLOOR_S or limit_s - exact_s < min(max(QUICK_FACTOR * exact_s, QUICK_FLOOR_S), QUICK_MAX_S):
            return full
    return build_instance(lengths, lat, prune=False, pp_degrees=pp_degrees)


def _quick_search_seconds(sl: Slice, full: Instance, warm: Plan, repricing: float) -> float:
    """What a short limit's search of slice sl takes at least to return a plan (a first cover, its polish
    and its building), from what repricing the warm start took: per group of the plan to come (in
    repricings of one of the warm start's groups, which may be few and large: 26 on 4,096 GPUs for a
    1M-token batch) and per configuration of the slice (a column as long as the batch, in repricings of
    the whole batch). At 16,384 GPUs x 65,536 sequences ~1.6 s, against ~55 ms at 1,024 x 4,096."""
    groups = full.total_gpus / QUICK_GPUS_PER_GROUP
    return repricing * (groups * REPRICES_PER_GROUP / max(len(warm.groups), 1) + sl.configs * SEQ_PRICINGS_PER_CELL)


def _slice_share(sl: Slice, todo: list, lat: LatencyModel, best: float, first: bool, quick: bool) -> float:
    """The share of the time left that slice sl gets. On a short limit, an equal share of what is left for
    each slice still to search (the estimated step that orders them can be wrong: at 128 GPUs it ranked
    TP2 before TP4, whose plan was 10 % faster; a first cover of each is worth more than restarts on one).
    Otherwise first (under the step objective, the makespan search over every configuration) at least
    FIRST_SHARE, or its share of the configurations, then each slice in proportion to what it can still
    win over the best plan's step, best − its step bound (a slice whose bound is near the best plan has
    little to search for)."""
    if quick:  # (those whose step bound is below the best plan: the others will not be searched)
        return 1.0 / (1 + sum(x.step_lower(lat) < best for x in todo))
    if first:
        if not todo:
            return 1.0
        weight = [x.configs for x in [sl] + todo]
        return max(FIRST_SHARE, weight[0] / max(sum(weight), 1))
    win = [max(best - x.step_lower(lat), 0.0) for x in [sl] + todo]
    return win[0] / sum(win) if sum(win) > 0 else 1.0 / (1 + len(todo))


def step_estimate(sl: Slice, full: Instance, lat: LatencyModel) -> float:
    """What a plan of slice sl likely takes over the step (not a bound; it orders a short limit's slices):
    its makespan bound, plus the exposed sync of a group that starts with a full micro-batch of
    median-length sequences on the slice's fastest-starting configuration of its smallest layout. The
    step bound lets the slowest group hide the all-gather behind a forward of up to half its makespan,
    but a balanced plan's short-document groups start with their cap's worth of tokens: at 1,024 GPUs
    the TP1 slice's bound was 3,074 ms and its plan's step 3,640 ms (596 ms exposed), the TP2 slice's
    3,206 and 3,269 ms."""
    if not math.isfinite(sl.lower):
        return math.inf
    median = max(int(np.median(full.lengths)), 1)
    layout = [cfg for cfg in full.configs if cfg[0] * cfg[3] == sl.min_tp]
    least = min((cfg[1] for cfg in layout), default=0)  # the fewest ranks hold the fewest tokens
    first = min((_full_forward_ms(lat, cfg, median) for cfg in layout if cfg[1] == least), default=math.inf)
    return sl.lower + lat.sync_exposed_lower_ms(sl.min_tp, sl.lower, first_forward_max_ms=first)


def _full_forward_ms(lat: LatencyModel, cfg: tuple, length: int) -> float:
    """Forward of a micro-batch filled to (tp, cp, cross, pp)'s cap (recomputing nothing) with sequences
    of `length` tokens, overhead's forward part included; inf where none fits."""
    tp, cp, cross, pp = cfg
    cap = lat.tokens_cap(tp, cp, 0, pp)
    if cap < length:
        return math.inf
    fwd = lat.seq_parts_array(np.array([length]), tp, cp, cross, 0, pp)[0][0]
    return float(lat.overhead_parts(tp, cp, cross, pp)[0] + fwd * (cap // length))


def _per_micro_batch(warm: Plan, lat: LatencyModel) -> list[tuple[str, Plan]]:
    """The warm start's groups with each micro-batch at its own least k (cheaper than WLB-LLM's one global
    setting whenever they differ): a candidate like any plan found."""
    if lat.recompute != "auto" or all(len(set(g.recompute_layers)) == 1 and g.recompute_layers[0] == 0
                                      for g in warm.groups):
        return []
    plan = Plan.build(warm.lengths, [(g.tp, g.cp, g.pp, g.sequence_ids) for g in warm.groups], lat,
                      ranks=[g.ranks for g in warm.groups])
    return [("WLB-LLM's groups with per-micro-batch recompute", plan)]


def _pricing_seconds(plan: Plan, lat: LatencyModel) -> float:
    """How long placing and pricing one plan of this size takes here (the warm start, priced again)."""
    started = time.monotonic()
    plan.reprice(lat)
    return time.monotonic() - started


def _step_bound(lat: LatencyModel, families: list, per_layout: dict | None) -> float:
    """Step objective (per_layout None): the lowest family's bound (see layouts). Makespan objective (one
    slice searched): the least of per_layout's (_layout_step_bounds)."""
    if per_layout is None:
        return step_bound(families, lat)
    return min(step for _, step in per_layout.values())


def _layout_step_bounds(lat: LatencyModel, bounds: dict, tps: list[int],
                        layouts: LayoutBounds) -> dict[int, tuple[float, float]]:
    """The makespan objective's (M_t, step bound M_t + least exposed sync of t) per smallest layout t, M_t the
    most of the whole space's makespan bound and the simple bound of the configurations of layout ≥ t (a
    plan whose smallest layout is t uses only those): at 16,384 GPUs x 65,536 the TP8 layout's 10 ms of
    sync no longer sets the step bound (3,279 -> 3,354 ms)."""
    lows = {t: max(bounds[tps[0]], layouts.of(lambda u, t=t: u >= t)) for t in tps}
    return {t: (lows[t], lows[t] + lat.sync_exposed_lower_ms(t, lows[t]) if math.isfinite(lows[t]) else math.inf)
            for t in tps}  # (a layout that cannot hold the batch: no plan, inf, not inf·0 = nan)


def _rounded(lengths: np.ndarray, r: int | None) -> np.ndarray:
    return lengths if not r else (-(-lengths // r)) * r


def _bound_on_lengths_rounded_down(lengths: np.ndarray, r: int, lat: LatencyModel, pp_degrees,
                                   upper: float) -> float:
    """A makespan bound that holds for the true lengths when the search priced them rounded up to a multiple
    of r (whose bounds only hold for those costs): the simple and overhead area bounds on the lengths rounded
    down (costs rise with the length, so each is at most the true one). upper: the makespan of a plan priced
    on the lengths rounded up (at least its true makespan)."""
    low = build_instance(np.maximum(lengths // r * r, 1), lat, pp_degrees=pp_degrees)
    return overhead_area_bound(low, max(upper, simple_bound(low)))


def _on_true_lengths(plan: Plan, lengths: np.ndarray, lat: LatencyModel) -> Plan:
    """The same groups and ranks, priced on the true lengths (each ≤ its rounded length)."""
    ids = [g.sequence_ids for g in plan.groups]
    p = Plan.build(lengths, [(g.tp, g.cp, g.pp, i) for g, i in zip(plan.groups, ids)], lat,
                   ranks=[g.ranks for g in plan.groups])
    p.baseline = plan.baseline
    return p


@dataclass
class Slice:
    """The configurations with tp ≥ min_tp (undominated among them), the warm start as their solution when
    it is one, and the cheap makespan bound; inst is None when some sequence fits none of them. pure:
    the configurations with tp = min_tp alone (None when they cannot hold the batch). families: the
    step bound's two families of this layout (see layouts)."""
    min_tp: int
    inst: Instance | None
    warm_sol: tuple | None = None
    upper: float = 1e12
    lower: float = math.inf
    pure: Instance | None = None
    families: tuple = ()
    found: Callable | None = None  # told of the heuristic's plan (the worker's search steers by it)
    configs: int = 0  # configurations the slice may use
    make: Callable | None = None  # builds inst, warm_sol and upper when the slice is searched (short limits)

    def build(self, full: Instance, warm: Plan) -> None:
        """The slice's instance, when only its bounds were computed (see _slice)."""
        if self.make is not None:
            self.inst, self.make = self.make(), None
            self.warm_sol = _as_solution(full, self.inst, warm) if _layout_of(warm) >= self.min_tp else None
            self.upper = makespan(self.inst, self.warm_sol[0]) if self.warm_sol else 1e12

    @cached_property
    def size(self) -> int:
        """Variables of this slice's slot MIP (estimate_size, computed once)."""
        return estimate_size(self.inst)

    def step_lower(self, lat) -> float:
        """No plan whose smallest TP is min_tp takes less, over the whole step."""
        return min((f.step(lat) for f in self.families), default=math.inf)

    def start_beside(self, lat, best_step: float, seconds: float) -> None:
        """With a core to spare: the pure family's pattern LP in a worker, while this slice is searched
        (see remote). Not where the slice's MIP runs (it proves both families) or time is short."""
        pure = self.families[0]
        if (self.pure is None or self.inst is None or seconds < 2 * STARTUP_S or not worth_trying(self.pure)
                or self.size <= _mip_most(worth_trying(self.inst))):
            return
        upper = pure.top(lat, best_step)
        if upper > pure.bound and sys.executable:
            try:
                pure.remote = RemoteBound(self.pure, pure.bound, upper, seconds)
            except OSError:
                return  # no process to be had here: the family is searched after the slice, as without a core
            self.found = lambda plan: pure.remote and pure.remote.tighten(
                pure.top(lat, min(best_step, plan.step_ms)))

    def searched(self, bound: float, search, threads: int, det_limit) -> None:
        """The slice's search proved `bound` (a bound on both families) and may have a pattern LP."""
        pure, mixed = self.families
        mixed.bound, mixed.search = max(mixed.bound, bound), search
        pure.bound = max(pure.bound, bound)
        if self.pure is not None and det_limit is None and worth_trying(self.pure):  # (used if no worker)
            pure.start = lambda upper: _pure_search(self.pure, pure.bound, upper, threads, search)


def _slice(full: Instance, warm: Plan, min_tp: int, quick: LayoutBounds | None = None) -> Slice:
    """quick (the full instance's LayoutBounds): the simple bounds only (a pass over the distinct lengths'
    costs instead of the overhead area bound's search); the slice's instance (dominated
    configurations kept: the bounds are the same with them, a dominated configuration is never a row's
    minimum) is built only if the slice is searched, and none of the pure family (its pattern LP will
    not run)."""
    if quick is not None:
        cols = np.array([c for c in range(len(full.configs)) if full.layout(c) >= min_tp], dtype=int)
        lower = quick.of(lambda u: u >= min_tp)
        if not math.isfinite(lower):
            return Slice(min_tp, None, families=(Family(min_tp, False, math.inf), Family(min_tp, True, math.inf)))
        pure_lower = max(lower, quick.of(lambda u: u == min_tp))
        return Slice(min_tp, None, lower=lower, families=(Family(min_tp, False, pure_lower),
                                                          Family(min_tp, True, lower)),
                     configs=cols.size, make=lambda: full.subset(cols))
    inst = _configs_where(full, lambda tp: tp >= min_tp)
    if inst is None:
        return Slice(min_tp, None, families=(Family(min_tp, False, math.inf), Family(min_tp, True, math.inf)))
    warm_sol = _as_solution(full, inst, warm) if _layout_of(warm) >= min_tp else None
    upper = makespan(inst, warm_sol[0]) if warm_sol else 1e12
    lower = overhead_area_bound(inst, upper)
    pure = _configs_where(full, lambda tp: tp == min_tp)
    pure_lower = max(lower, overhead_area_bound(pure, 1e12)) if pure is not None else math.inf
    return Slice(min_tp, inst, warm_sol, upper, lower, pure,
                 (Family(min_tp, False, pure_lower), Family(min_tp, True, lower)), configs=len(inst.configs))


class _Waits:
    """Each family's bounds from the overlapped all-gather (layouts.net_forward_caps, first_penalties): the cap
    on what its slowest group's first micro-batch hides and the area bound with what every group pays at
    least for its first micro-batch, over every configuration its plans may use (dominated ones included:
    their waits differ); then groups ranked by their largest sequence (layouts.tiered_delay_bound), for the
    lowest family (raise_lowest)."""

    def __init__(self, slices: list, full: Instance, lat: LatencyModel, upper: float, tables) -> None:
        self.slices, self.full, self.lat, self.tables = slices, full, lat, tables
        caps = net_forward_caps(tables, full.configs, lat)
        self.columns, self.memos = {}, {}
        self.tried: dict = {}  # per family: the most its tiers were asked to prove in full time (delayed, ms)
        for sl in slices:
            memo, waits = {}, None  # one layout's waits per configuration: its two families share them
            for fam in sl.families:
                cols = np.array([c for c, cfg in enumerate(full.configs)
                                 if (cfg[0] >= fam.t if fam.mixed else cfg[0] == fam.t)], dtype=int)
                if not cols.size or fam.step(lat) >= upper:
                    continue
                fam.forward_cap = float(caps[cols].max())
                if waits is None:
                    waits = first_penalties(tables, full.configs, lat, lat.sync_parts([fam.t])[2])
                fam.delayed = delay_area_bound(full.subset(cols), waits[cols], 1e12)
                if math.isfinite(fam.delayed):
                    self.columns[id(fam)], self.memos[id(fam)] = cols, memo

    def raise_lowest(self, upper: float, deadline: float = math.inf) -> None:
        """The tiers of the lowest family, aimed TIERS_MARGIN past the next family's step bound (no higher: the
        step bound is the least over families) and no higher than upper (a step some plan reaches), until the
        lowest family cannot rise (at 64 GPUs x 256: 0.4-1.5 s; aiming at the warm start took 3.0 s) or the
        deadline passes (then the best they proved: see tiered_delay_bound). A family whose tiers were asked as
        much before, with the time to answer, is not asked again."""
        families = [f for sl in self.slices for f in sl.families]
        while self.columns and time.monotonic() < deadline:
            fam = min(families, key=lambda f: f.step(self.lat))
            target = min([upper] + [f.step(self.lat) for f in families if f is not fam]) * (1 + TIERS_MARGIN)
            if id(fam) not in self.columns or fam.step(self.lat) >= upper:
                return  # no tiers for the lowest family: the bound cannot rise further here
            goal = fam.delayed_for(self.lat, min(target, upper))
            if goal <= self.tried.get(id(fam), -math.inf):
                return  # its tiers were asked this much before and could not: the bound cannot rise further here
            cols = self.columns[id(fam)]
            fam.delayed = max(fam.delayed, tiered_delay_bound(self.full.subset(cols), self.tables, cols, self.lat,
                                                              fam.t, fam.delayed, goal, self.memos[id(fam)],
                                                              deadline))
            if time.monotonic() < deadline:  # (a proof cut short by the deadline may be asked again)
                self.tried[id(fam)] = goal


def _waits_bounds(slices: list, full: Instance, lat: LatencyModel, upper: float,
                  deadline: float = math.inf) -> _Waits | None:
    """The families' all-gather waits bounds (_Waits), their tiers raised until the deadline; None without
    the overlap or where the batch is too large to price them (layouts.forward_tables)."""
    tables = forward_tables(full.lengths, full.configs, lat)
    if tables is None:
        return None
    waits = _Waits(slices, full, lat, upper, tables)
    waits.raise_lowest(upper, deadline)
    return waits


def _group_count_bounds(slices: list, lat: LatencyModel, best: float, deadline: float) -> None:
    """Each family's step bound from its group count (see groups), lowest family first, while time is left:
    where the bucket size grows with the groups (Megatron's max(40M, 1M·groups)) a plan of many groups
    pays for its large buckets."""
    families = [(f, sl.pure if not f.mixed else sl.inst) for sl in slices for f in sl.families]
    for fam, inst in sorted(families, key=lambda fi: fi[0].step(lat)):
        if inst is None or fam.step(lat) >= best or time.monotonic() > deadline:
            continue
        fam.grouped = grouped_step_bound(inst, lat, fam.t, fam.mixed, fam.bound, best, fam.step(lat),
                                         fam.forward_cap, deadline)


def _binding_family(families: list, lat: LatencyModel, bound: float) -> str:
    """Which family of plans sets the step bound `bound` (the least over families, see layouts), and from
    what."""
    f = min(families, key=lambda x: x.step(lat))
    if f.step(lat) < bound * (1 - 1e-9):
        return f"step bound {bound:.1f} ms set by the makespan bound (every family's is lower)"
    source = ("its makespan bound plus its least exposed sync" if f.step(lat) <= f.step_at(lat, f.bound)
              else "its makespan bound plus the all-gather waits by tier" if f.step_after_waits(lat) >= f.grouped
              else "its makespan bound by group count plus the exposed sync of that many groups' buckets")
    plans = f"smallest TP is {f.t}, beside larger ones" if f.mixed else f"groups all have TP {f.t}"
    return f"step bound {bound:.1f} ms set by the {f.name} family (plans whose {plans}): {source}"


def _unit(full: Instance) -> str:
    """What the slices are keyed by in notes: the smallest TP, or with stages the smallest TP·PP."""
    return "TPxPP" if full.pipelined else "TP"


def _layout_of(plan: Plan) -> int:
    """The smallest layout (tp·pp) among a plan's groups."""
    return min(g.tp * g.pp for g in plan.groups)


def _configs_where(full: Instance, keep_tp, prune: bool = True) -> Instance | None:
    """The undominated configurations (all when not prune) whose layout (tp·pp) passes keep_tp; None when
    some sequence fits none."""
    allowed = np.array([c for c in range(len(full.configs)) if keep_tp(full.layout(c))], dtype=int)
    if allowed.size == 0:
        return None
    first, _ = distinct_lengths(full.lengths)
    rows = full.cost[first][:, allowed]  # dominance and fit on the distinct lengths: the same answer, fewer rows
    if prune:
        kept = _undominated(full.gpus[allowed], full.overhead[allowed], rows, [full.configs[c] for c in allowed])
        allowed, rows = allowed[kept], rows[:, kept]
    return full.subset(allowed) if np.isfinite(rows).any(axis=1).all() else None


def _pure_search(pure: Instance, lower: float, upper: float, threads: int,
                 mixed: PatternBound | None) -> PatternBound | None:
    """The pattern LP of the plans with one TP degree, started from the slice's: the same lengths (rows),
    so its best duals are a first centre (with fewer configurations, θ only falls: they prove at
    least as much here), and its threshold estimate is a floor for this one's."""
    if upper <= lower:
        return None
    search = PatternBound(pure, lower, upper, (), threads, first_step=None)
    if mixed is not None:
        search.lp.carried, search.estimate = mixed.lp.carried, mixed.estimate
    return search


def _search(sl: Slice, full: Instance, lat, deadline: float, backend, threads, seed, rel_gap, det_limit,
            quick: bool = False, per_group_s: float = 0.0, allowance_end: float = math.inf,
            fewer_groups: bool = False, spare_core: bool = False):
    """Heuristic then MIP (or the pattern LP) over one slice; returns (named plans, makespan bound, note,
    the pattern LP search when it ran, to resume with time left over). quick: the heuristic's first cover
    is aimed just above the area relaxation's threshold, estimated in two or three passes; a cover whose
    plan would be built past allowance_end (per_group_s a group) is dropped: at 16,384 GPUs on a 1 s limit
    the search's estimate (~650 ms) fell short of what it took (742-1,000 ms), and building the cover's
    plan took the run to 1.29-1.46 s against a 1.25 s allowance. fewer_groups (the step objective, where
    the heuristic answers alone): a cover on larger groups too, when the heuristic's group count makes
    the gradient buckets few and large (see _fewer_groups). spare_core: no worker process runs, and
    threads allow one: the pattern LP's bound may be proven in one (see _patterns_and_lns)."""
    inst, warm_sol, upper, lower, min_tp = sl.inst, sl.warm_sol, sl.upper, sl.lower, sl.min_tp
    if sl.make is not None:
        return [], lower, f"{_unit(full)}>={min_tp}: no time left after pricing: warm start kept, simple bounds", None
    if inst is None:
        return [], math.inf, f"{_unit(full)}>={min_tp}: some sequence fits no configuration (no plan of this layout)", None
    late = det_limit is None and time.monotonic() >= deadline and warm_sol is not None
    if late:  # a limit shorter than pricing: the warm start stands, with the cheap bounds only
        return [], max(lower, simple_bound(inst)), \
            f"{_unit(full)}>={min_tp}: no time left after pricing: warm start kept, simple bounds", None
    guess = None
    if quick and inst.floor is not None:  # estimated costs: a target from them, the bound stays the floors'
        guess = area_bracket(inst, upper, first=True, estimate=True, simple=lower)[1] * (1 + QUICK_SLACK)
    elif quick or inst.n > GUESS_MIN_SEQUENCES:
        lo, target = area_bracket(inst, upper, first=True, simple=lower)
        lower, guess = max(lower, lo), target * (1 + QUICK_SLACK)
    size = sl.size
    # the pattern LP is clock-driven: not under a work limit
    patterns_can_run = det_limit is None and not quick and worth_trying(inst)
    mip_runs = _mip_runs(backend, size, patterns_can_run)
    patterns_run = not mip_runs and patterns_can_run
    alone = not mip_runs and not patterns_run
    fewer_groups = fewer_groups and alone and inst.n > GUESS_MIN_SEQUENCES
    share = HEURISTIC_SHARE if mip_runs else PATTERNS_HEURISTIC_SHARE if patterns_run else \
        FEWER_GROUPS_HEURISTIC_SHARE if fewer_groups else 1.0
    # under a deterministic work limit nothing may depend on the clock: no deadline, no restarts
    h_deadline = _share(share, deadline) if det_limit is None else float("inf")
    heur = heuristic_solution(inst, lower, upper, h_deadline, seed=seed, restarts=det_limit is None, guess=guess,
                              per_group_s=per_group_s if det_limit is None else 0.0)
    heur = (heur, _greedy_shares(inst, heur)) if heur else None
    found = [("heuristic", heur)] if heur and heur[1] is not None else []
    late_build = bool(found) and time.monotonic() + per_group_s * len(heur[0]) > allowance_end
    if late_build:
        found = []
    heur_plan = _to_plan(inst, *heur, lat) if found and sl.found is not None else None  # priced once:
    if heur_plan is not None:  # told to the worker now, returned below
        sl.found(heur_plan)
    note = f"{_unit(full)}>={min_tp}: {len(inst.configs):,} configurations kept " \
           f"({full.pruned + len(full.configs) - len(inst.configs):,} pruned)"
    if fewer_groups and found:
        larger = _fewer_groups(inst, heur[0], lat, min_tp, lower, upper, deadline, per_group_s,
                               0.0 if heur_plan is not None else per_group_s * len(heur[0]))
        if larger is not None:
            found.append((f"heuristic on groups of >= {larger[0]} GPUs", (larger[1], _greedy_shares(inst, larger[1]))))
            note += f"; a cover on groups of >= {larger[0]} GPUs ({len(larger[1]):,} groups, fewer gradient buckets)"
    if late_build:
        note += f"; its cover's plan ({len(heur[0]):,} groups) could not be built within the limit's allowance: dropped"
    known = [s for s in (warm_sol, found[0][1] if found else None) if s]
    bound, status, search = lower, "not run", None
    if not known:
        return [], lower, note + "; no plan found", None
    best_known = min(known, key=lambda s: makespan(inst, s[0]))
    if not mip_runs:
        note += ("; heuristic with bounds (no MIP backend)" if backend == "none" else
                 f"; exact MIP not built ({size:,} variables; beyond {_mip_most(True):,} under a time limit the "
                 f"pattern LP and LNS search instead): heuristic with bounds" if patterns_run and size <= MAX_MIP_VARIABLES
                 else f"; exact MIP not built ({size:,} variables > {_mip_most(patterns_can_run):,}): heuristic with bounds")
        if patterns_run:
            more, bound, search, gap_note = _patterns_and_lns(inst, best_known, known, lower, deadline, threads, seed,
                                                              spare_core)
            found += more
            note += gap_note
    elif deadline - time.monotonic() > 0.02 or det_limit is not None:
        sol, b, status = run_mip(inst, backend, best_known, lower, deadline - time.monotonic(), threads, seed,
                                 rel_gap, det_limit)
        bound = max(bound, b)
        if sol is not None:
            found.append((backend, sol))
            note += f"; {backend} status: {status}"
        else:
            note += f"; {backend} returned no incumbent ({status}): best known plan kept"
    else:
        note += "; no time left for the MIP"
    plans = [(who, heur_plan if entry is heur and heur_plan is not None else _to_plan(inst, *entry, lat))
             for who, entry in found]
    return [(who, p) for who, p in plans if p is not None], bound, note, search


def _fewer_groups(inst: Instance, sol, lat: LatencyModel, min_tp: int, lower: float, upper: float, deadline: float,
                  per_group_s: float, build_s: float = 0.0) -> tuple[int, list] | None:
    """A cover of inst on configurations of at least twice the heuristic's most common group size, when
    halving its group count G would lower the exposed sync of a group that hides everything
    (GroupStepEnds.least) by more than FEWER_GROUPS_GAIN of the makespan: Megatron's buckets hold
    max(40M, 1M·G) parameters, so thousands of groups leave two or three, and every group waits for the
    first before its forward starts (at 16,384 GPUs x 65,536 the TP2 slice's 4,296 groups: 199 ms at
    least, 78 ms at half as many). Its first cover runs whenever the deadline has not passed; further trials
    only while they would end build_s before it (the heuristic's plan, still to be built). Returns (that
    size, the cover) or None (no gain, no cover in time)."""
    groups = len(sol)
    least = [GroupStepEnds(lat, [min_tp], g).least for g in (groups, max(groups // 2, 1))]
    if least[0] - least[1] <= FEWER_GROUPS_GAIN * makespan(inst, sol) or time.monotonic() >= deadline:
        return None
    size = 2 * int(np.bincount(inst.gpus[[c for c, _ in sol]].astype(int)).argmax())
    cols = np.flatnonzero(inst.gpus >= size)
    sub = inst.subset(cols)
    first, _ = distinct_lengths(inst.lengths)
    if not cols.size or not np.isfinite(sub.cost[first]).any(axis=1).all():
        return None
    cover_ = binary_search_cover(sub, lower, upper, deadline - build_s, rule="efficient", per_group_s=per_group_s,
                                 guess=makespan(inst, sol) * (1 + FEWER_GROUPS_SLACK))
    return None if cover_ is None else (size, [(int(cols[c]), items) for c, items in cover_])


def _polished(plans: list[tuple[str, Plan]], lat: LatencyModel, families: list[Family],
              deadline: float) -> list[tuple[str, Plan]]:
    """The plans found, polished for the step (see polish), the fastest over the step first (at 4,096 GPUs a
    polish may take all its time: then it is the plan returned that gains); each may use half the time left
    (the last all of it; a polish stops when no move is left: 0.1-1.4 s at 64 GPUs x 256). A polished plan
    keeps its groups' configurations (some may be dropped), so its smallest TP is at least the plan's: it
    is in a family of that TP or a larger one, and no lower than the least of their step bounds (see
    layouts); a plan whose floor is the best step already is not polished."""
    def floor(plan: Plan) -> float:
        least = min(g.tp for g in plan.groups)
        return min((f.step(lat) for f in families if f.t >= least), default=0.0)

    todo = [p for _, _, p in sorted((p.step_ms, k, p) for k, (_, p) in enumerate(plans))]
    out = []
    for plan in todo:
        best = min(p.step_ms for _, p in plans + out)
        if floor(plan) >= best or time.monotonic() >= deadline:
            continue
        now = time.monotonic()  # half of what is left (all for the last, or where half is too little to start:
        # at 16,384 GPUs a plan of 2,890 groups needs 1.45 s): one that stops sooner hands it on
        half = (deadline - now) / 2 >= MIN_S_PER_GROUP * len(plan.groups)
        better = polish_step(plan, lat, now + (deadline - now) * (0.5 if plan is not todo[-1] and half else 1.0))
        if better is not None:
            out.append(("step polish", better))
    return out


def _pipeline_estimate_plans(full: Instance, lat: LatencyModel, warm: Plan, deadline: float, seed: int,
                             per_group_s: float, det_limit) -> list[tuple[str, Plan]]:
    """With stages searched, the instance's costs for them are lower bounds (no fill, drain or stalls):
    right for bounds, too kind for a search. A candidate from the heuristic on estimates instead: each
    pipelined configuration pays its bubble, (pp − 1) of its largest micro-batch's stage time, up front
    (the 1F1B fill and drain of a full micro-batch). The plan it gives is priced by the simulation and
    compared like any other; the bounds are not touched."""
    est = _with_bubbles(full, lat)
    keep = _undominated(est.gpus, est.overhead, est.cost[distinct_lengths(est.lengths)[0]], est.configs)
    est = est.subset(keep)
    warm_sol = _as_solution(full, est, warm)
    upper = makespan(est, warm_sol[0]) if warm_sol else 1e12
    if det_limit is not None:
        deadline = float("inf")
    sol = heuristic_solution(est, simple_bound(est), upper, deadline, seed=seed, restarts=det_limit is None,
                             per_group_s=per_group_s if det_limit is None else 0.0)
    if not sol:
        return []
    plan = _to_plan(est, sol, _greedy_shares(est, sol), lat)
    return [("heuristic on pipeline estimates", plan)] if plan is not None else []


def _with_bubbles(full: Instance, lat: LatencyModel) -> Instance:
    """`full` with each pipelined configuration's overhead raised by (pp − 1)·(stage forward + backward of
    a micro-batch of its largest fitting size)."""
    over = full.overhead.copy()
    longest = int(full.lengths.max())
    for c, (tp, cp, cross, pp) in enumerate(full.configs):
        if pp > 1:
            tokens = min(lat.max_tokens(tp, cp, pp), max(longest, 1))
            k = lat.recompute_layers_array(np.array([tokens]), tp, cp, pp)
            f_in, f_last, b_in, b_last = lat.stage_parts_array([tokens], tp, cp, pp, cross, k)
            over[c] += (pp - 1) * float(max(f_in[0], f_last[0]) + max(b_in[0], b_last[0]))
    return Instance(lengths=full.lengths, configs=full.configs, gpus=full.gpus, overhead=over, cost=full.cost,
                    total_gpus=full.total_gpus, node_caps=full.node_caps, pruned=full.pruned)


def _mip_runs(backend: str, size: int, patterns_can_run: bool) -> bool:
    """Whether a slice of `size` variables is searched by the slot MIP (else by the pattern LP and LNS, when
    they can run, or by the heuristic alone)."""
    return backend != "none" and size <= _mip_most(patterns_can_run)


def _mip_most(patterns_can_run: bool) -> int:
    """The most variables a slice searched by the MIP may have (MAX_MIP_VARIABLES caps both: 0 turns the MIP
    off)."""
    return min(MIP_BEFORE_PATTERNS_VARIABLES, MAX_MIP_VARIABLES) if patterns_can_run else MAX_MIP_VARIABLES


def _patterns_and_lns(inst: Instance, best: tuple, known: list, lower: float, deadline: float, threads: int,
                      seed: int, spare_core: bool = False):
    """Where the MIP is not built: the pattern LP bound for a while; then covers that open each group on
    the configuration the LP runs most of its opening sequence's length on (PatternLP.preferences); then
    the best plan with its configurations swapped towards the LP's mix (when that changes any and still
    places), or as it is, rebalanced by LNS; then the pattern LP again, below the better plan. Returns
    (named solutions, bound, the pattern LP search, note). spare_core: the same LP is also proven in a
    worker process (remote) from the start to the deadline; at the end, the LP here and LNS rounds from
    the best plan (other seeds) take turns: LNS while the worker's bound is ahead of this one's (the LP
    here would only repeat it), the LP here otherwise (a worker starved by other work on the cores falls
    behind: at 5 s with the cores busy it lowered the bound when LNS had all the time). The bound is the
    better of the two LPs'. At 64 GPUs x 256 on a 10 s makespan solve the LP here had ~6 s and had not
    converged (seed 11: 1,505.4 ms, against 1,506.4 in 26 s)."""
    found = []

    def keep(who: str, sol) -> None:
        nonlocal best
        shares = _greedy_shares(inst, sol)
        if shares is not None and makespan(inst, sol) < makespan(inst, best[0]) - 1e-9:
            best = (sol, shares)
            found.append((who, best))

    upper = makespan(inst, best[0])
    if upper <= lower or time.monotonic() >= deadline:
        return found, lower, None, ""
    remote = _remote_bound(inst, lower, upper, deadline) if spare_core else None
    # with the worker on a core, this LP gets the other threads (3 threads on 2 cores lowered the bound at 5 s)
    search = PatternBound(inst, lower, upper, [s[0] for s in known], max(threads - 1, 1) if remote else threads)
    search.improve(_share(PATTERN_SHARE, deadline))
    guided = binary_search_cover(inst, search.lo, makespan(inst, best[0]), _share(LP_COVER_SHARE, deadline),
                                 rule="efficient", prefer=search.lp.preferences())
    if guided is not None:
        keep("LP cover", polish(inst, guided, _share(LP_COVER_SHARE, deadline)))
    swapped = swap_towards(inst, best[0], search.lp.config_mix())
    if swapped is not None and _greedy_shares(inst, swapped) is not None:
        keep("LP mix + LNS", rebalance(inst, swapped, _share(LNS_SHARE, deadline), seed))
    else:
        keep("LNS", rebalance(inst, best[0], _share(LNS_SHARE, deadline), seed))
    rounds = 0
    while time.monotonic() < deadline:  # in turns: the LP here, or LNS rounds while the worker's LP is ahead
        upper = makespan(inst, best[0])
        search.tighten(upper)
        worker_ahead = remote is not None and not remote.failed and (remote.poll() > search.lo or search.exhausted)
        if max(search.lo, remote.poll() if remote is not None else -math.inf) >= upper or (
                search.exhausted and not worker_ahead):
            break  # proven, or nothing left to raise
        turn_end = min(deadline, time.monotonic() + TURN_S)
        if worker_ahead:
            remote.tighten(upper)
            rounds += 1  # LNS from the best plan with another seed
            keep("LNS", rebalance(inst, best[0], turn_end, seed + rounds))
        else:
            search.improve(turn_end)
    bound = search.lo
    remote_bound = remote.close() if remote is not None else -math.inf
    worker = remote_bound > bound
    bound = max(bound, remote_bound)
    return found, bound, search, f" (pattern LP: {100 * (makespan(inst, best[0]) / bound - 1):.2f} % gap" + \
        (", its bound proven in a worker process" if worker else "") + ")"


def _remote_bound(inst: Instance, lower: float, upper: float, deadline: float) -> RemoteBound | None:
    """The pattern LP of inst searched in a worker until the deadline (None when too little time is left
    to start one, or no process can be had)."""
    seconds = deadline - time.monotonic()
    if seconds < 2 * STARTUP_S or not sys.executable:
        return None
    try:
        return RemoteBound(inst, lower, upper, seconds)
    except OSError:
        return None


def _share(share: float, deadline: float) -> float:
    """The deadline of a phase given `share` of the time left."""
    now = time.monotonic()
    return now + share * max(deadline - now, 0.0)


def _check_args(cluster, lat, backend, time_limit_s, threads, seed, rel_gap, objective, round_lengths,
                deterministic_limit) -> None:
    check_objective(objective)
    if cluster != lat.cluster:
        raise ValueError(f"cluster {cluster} does not match the latency model's cluster {lat.cluster}")
    if backend not in BACKENDS + ("none",):
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS + ('none',))}")
    if isinstance(time_limit_s, bool) or not isinstance(time_limit_s, (int, float)) \
            or not math.isfinite(time_limit_s) or time_limit_s < 0:
        raise ValueError(f"time_limit_s must be a non-negative number, got {time_limit_s!r}")
    if deterministic_limit is not None and (isinstance(deterministic_limit, bool) or not isinstance(
            deterministic_limit, (int, float)) or not 0 < deterministic_limit < math.inf):
        raise ValueError(f"deterministic_limit must be a finite number > 0, got {deterministic_limit!r}")
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not (0 <= rel_gap < 1):
        raise ValueError(f"rel_gap must be in [0, 1), got {rel_gap!r}")
    if round_lengths is not None and (not isinstance(round_lengths, int) or round_lengths < 1):
        raise ValueError(f"round_lengths must be a positive integer, got {round_lengths!r}")


def _as_solution(full: Instance, inst: Instance, plan: Plan):
    """A placed plan as (solution, node shares) of `inst`; a configuration pruned from inst is swapped
    for a kept one that dominates it (and can take its place). None when no such swap exists."""
    gpn = full.node_caps[0]
    sol, shares = [], []
    for g in plan.groups:
        cross = nodes_spanned(g.ranks, gpn) > 1
        c = full.index(g.tp, g.cp, cross, g.pp)
        kept = [k for k, cfg in enumerate(inst.configs) if cfg == full.configs[c]]
        if not kept:
            kept = [k for k, cfg in enumerate(inst.configs) if full.dominates(full.configs.index(cfg), c)]
        if not kept:
            return None
        k = kept[0]
        sol.append((k, np.array(g.sequence_ids)))
        shares.append(_shares_of(g.ranks[:inst.gpus[k]], gpn))
    return sol, shares


def _shares_of(ranks, gpn: int) -> list[tuple[int, int]]:
    count: dict[int, int] = {}
    for r in ranks:
        count[r // gpn] = count.get(r // gpn, 0) + 1
    return sorted(count.items())


def _greedy_shares(inst: Instance, sol):
    shapes = [inst.shape(c) for c, _ in sol]
    return pack_nodes(shapes, inst.node_caps, range(len(shapes))) or pack_nodes(shapes, inst.node_caps)


def run_mip(inst, backend, incumbent, lower, remaining, threads, seed, rel_gap, det_limit):
    """The slot MIP warm-started from incumbent (solution, shares); returns ((solution, shares) or None,
    bound, status)."""
    started = time.monotonic()
    size = estimate_size(inst)
    if det_limit is None and size / MILP_VARS_PER_S > BUILD_SHARE * remaining:
        return None, 0.0, (f"not built: ~{size / MILP_VARS_PER_S:.2f} s to lay out {size:,} variables > "
                           f"{BUILD_SHARE:.0%} of the {max(remaining, 0):.2f} s left")
    model = build_milp(inst, upper_ms=makespan(inst, incumbent[0]), lower_ms=lower)
    remaining -= time.monotonic() - started
    if det_limit is None and build_seconds(backend, model) > BUILD_SHARE * remaining:
        return None, 0.0, (f"not built: ~{build_seconds(backend, model):.1f} s to hand {model.num_vars:,} variables "
                           f"to {backend} > {BUILD_SHARE:.0%} of the {max(remaining, 0):.1f} s left")
    hint = hint_values(model, inst, *incumbent)
    try:
        res = run_backend(backend, model, time_limit_s=remaining, threads=threads, seed=seed, rel_gap=rel_gap,
                          hint=hint, deterministic_limit=det_limit)
    except BuildTimeout as exc:
        return None, 0.0, f"not solved: {exc}"
    except Exception as exc:  # noqa: BLE001 — a crashed or missing solver binary must not lose the plan we already have
        return None, 0.0, f"{backend} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    if res.value_of is None:
        return None, res.bound_ms, res.status
    sol, slots = decode(model, res.value_of)
    if not np.isfinite(makespan(inst, sol)):
        return None, res.bound_ms, res.status
    shares = decode_nodes(model, res.value_of, slots)
    return (sol, shares if shares is not None else _greedy_shares(inst, sol)), res.bound_ms, res.status


def _to_plan(inst: Instance, sol, shares, lat: LatencyModel) -> Plan | None:
    """The solution placed on its node shares (None when it has none: not placeable)."""
    if shares is None:
        return None
    tps = [inst.configs[c][0] for c, _ in sol]
    ranks = ranks_from_nodes(tps, shares, lat.cluster.gpus_per_node)
    return Plan.build(inst.lengths, [(tp, cp, pp, items) for (tp, cp, _, pp), items in
                                     ((inst.configs[c], items) for c, items in sol)], lat, ranks=ranks)
