"""hs.solve: warm start (best placed WLB-LLM plan) → heuristic → exact MIP → the best plan, priced and bounded."""
from __future__ import annotations

import math
import time

import numpy as np

from ..latency import LatencyModel
from ..placement import nodes_spanned, pack_nodes, ranks_from_nodes
from ..plan import Plan, SolveResult, check_objective, objective_key
from ..specs import Cluster
from .backends import BACKENDS, BUILD_SHARE, BuildTimeout, build_seconds, run_backend
from .bounds import overhead_area_bound, simple_bound
from .formulation import build_milp, decode, decode_nodes, estimate_size, hint_values
from .heuristic import heuristic_solution, makespan
from .instance import Instance, _undominated, build_instance, check_lengths
from .patterns import pattern_bound, worth_trying

OPTIMAL_GAP = 1e-6
MAX_MIP_VARIABLES = 60_000  # beyond this the slot MIP is not built: heuristic + bounds answer
HEURISTIC_SHARE = 0.3       # of the time limit, when the MIP runs after it
RESERVE_PLANS = 4           # plan pricings kept back per slice (heuristic's, MIP's, the final one, slack)


def solve(lengths, cluster: Cluster, lat: LatencyModel, *, backend: str = "cpsat", time_limit_s: float = 10.0,
          threads: int = 2, seed: int = 0, rel_gap: float = OPTIMAL_GAP / 10,
          deterministic_limit: float | None = None, objective: str = "step",
          round_lengths: int | None = None) -> Plan:
    """Plan one step: groups of different (TP, CP) placed on nodes, sequences assigned.

    objective='step' (default) minimises makespan + exposed gradient sync: the search runs once per
    smallest TP degree (the sync's layout depends on it) and keeps the plan with the least step time;
    objective='makespan' minimises the slowest group. The returned plan is the best of the solver's
    plans and the warm start (the best placed homogeneous WLB-LLM plan on the same objective), all
    recomputed from their placement: never worse than WLB-LLM on the objective. round_lengths=r prices
    lengths rounded up to a multiple of r (fewer distinct lengths; costs stay upper bounds); the plan is
    priced on the true lengths."""
    start = time.monotonic()
    _check_args(cluster, lat, backend, time_limit_s, threads, seed, rel_gap, objective, round_lengths)
    deadline = start + time_limit_s
    from ..baselines.wlb_llm import best_homogeneous_plan

    true_lengths = np.asarray(check_lengths(lengths), dtype=np.int64)
    priced = _rounded(true_lengths, round_lengths)
    full = build_instance(priced, lat, prune=False)
    warm = best_homogeneous_plan(full, lat, objective)
    reserve = _pricing_seconds(warm, lat) * RESERVE_PLANS  # placing and pricing the plans found, after the search
    tps = lat.cluster.tp_degrees(lat.model)
    slice_tps = tps if objective == "step" else [1]
    t0 = time.monotonic()
    plans, notes, bounds = [("warm start", warm)], [], {}
    # each slice's time is in proportion to its configurations (TP ≥ 1 holds them all)
    share = np.cumsum([sum(tp >= t for tp, _, _ in full.configs) for t in slice_tps], dtype=float)
    for k, min_tp in enumerate(slice_tps):
        slice_deadline = t0 + (deadline - t0) * share[k] / share[-1] - reserve
        found, bounds[min_tp], note = _search(full, lat, warm, min_tp, slice_deadline, backend, threads, seed,
                                              rel_gap, deterministic_limit)
        plans += found
        notes.append(note)
    if round_lengths:
        plans = [(who, _on_true_lengths(p, true_lengths, lat)) for who, p in plans]
    who, plan = min(plans, key=lambda wp: (*objective_key(wp[1], objective), wp[0] != "warm start"))
    plan.baseline = dict(warm.baseline)
    plan.solver = SolveResult(backend=backend, status="feasible", time_limit_s=time_limit_s, threads=threads,
                              seed=seed, objective=objective, makespan_bound_ms=bounds[1],
                              step_bound_ms=_step_bound(lat, bounds, tps, round_lengths))
    plan.reprice(lat)
    s = plan.solver
    s.status = "optimal" if s.gap <= OPTIMAL_GAP else ("baseline" if who == "warm start" else "feasible")
    rounding = f"lengths priced rounded up to {round_lengths}; " if round_lengths else ""
    s.message = f"objective {objective}; {rounding}plan from {who}; " + " | ".join(notes)
    s.wall_s = time.monotonic() - start
    return plan


def _pricing_seconds(plan: Plan, lat: LatencyModel) -> float:
    """How long placing and pricing one plan of this size takes here (the warm start, priced again)."""
    started = time.monotonic()
    plan.reprice(lat)
    return time.monotonic() - started


def _step_bound(lat: LatencyModel, bounds: dict, tps: list[int], round_lengths) -> float:
    """min over smallest-TP layouts t of (makespan bound of plans with TP ≥ t) + least exposed sync.
    A slice not searched has the whole-space makespan bound (TP ≥ 1), which is weaker but valid."""
    if round_lengths:
        return 0.0  # bounds were proven on rounded-up costs: they do not bound the true ones
    return min(bounds.get(t, bounds[1]) + lat.sync_exposed_lower_ms(t, bounds.get(t, bounds[1])) for t in tps)


def _rounded(lengths: np.ndarray, r: int | None) -> np.ndarray:
    return lengths if not r else (-(-lengths // r)) * r


def _on_true_lengths(plan: Plan, lengths: np.ndarray, lat: LatencyModel) -> Plan:
    """The same groups and ranks, priced on the true lengths (each ≤ its rounded length)."""
    ids = [g.sequence_ids for g in plan.groups]
    p = Plan.build(lengths, [(g.tp, g.cp, i) for g, i in zip(plan.groups, ids)], lat,
                   ranks=[g.ranks for g in plan.groups])
    p.baseline = plan.baseline
    return p


def _search(full: Instance, lat, warm: Plan, min_tp: int, deadline: float, backend, threads, seed, rel_gap,
            det_limit):
    """Heuristic then MIP over configurations with tp ≥ min_tp; returns (named plans, makespan bound, note)."""
    allowed = np.array([c for c, (tp, _, _) in enumerate(full.configs) if tp >= min_tp])
    sub = full.subset(allowed)
    inst = full.subset(allowed[_undominated(sub.gpus, sub.overhead, sub.cost, sub.configs)])
    if not np.isfinite(inst.cost).any(axis=1).all():
        return [], math.inf, f"TP>={min_tp}: some sequence fits no configuration (no plan of this layout)"
    warm_sol = _as_solution(full, inst, warm) if warm.groups[0].tp >= min_tp else None
    upper = makespan(inst, warm_sol[0]) if warm_sol else 1e12
    late = det_limit is None and time.monotonic() >= deadline and warm_sol is not None
    if late:  # a limit shorter than pricing: the warm start stands, with the cheap bounds only
        return [], simple_bound(inst), f"TP>={min_tp}: no time left after pricing: warm start kept, simple bounds"
    lower = overhead_area_bound(inst, upper)
    size = estimate_size(inst)
    mip_runs = backend != "none" and size <= MAX_MIP_VARIABLES
    # without the MIP, the pattern LP (clock-driven, so not under a work limit) tightens the bound
    patterns_run = not mip_runs and det_limit is None and worth_trying(inst)
    now = time.monotonic()
    share = HEURISTIC_SHARE if mip_runs or patterns_run else 1.0
    # under a deterministic work limit nothing may depend on the clock: no deadline, no restarts
    h_deadline = now + share * (deadline - now) if det_limit is None else float("inf")
    heur = heuristic_solution(inst, lower, upper, h_deadline, seed=seed, restarts=det_limit is None)
    heur = (heur, _greedy_shares(inst, heur)) if heur else None
    found = [("heuristic", heur)] if heur and heur[1] is not None else []
    note = f"TP>={min_tp}: {len(inst.configs)} configurations kept ({full.pruned + len(full.configs) - len(inst.configs)} pruned)"
    known = [s for s in (warm_sol, found[0][1] if found else None) if s]
    bound, status = lower, "not run"
    if not known:
        return [], lower, note + "; no plan found"
    best_known = min(known, key=lambda s: makespan(inst, s[0]))
    if not mip_runs:
        note += ("; heuristic with bounds (no MIP backend)" if backend == "none" else
                 f"; exact MIP not built ({size:,} variables > {MAX_MIP_VARIABLES:,}): heuristic with bounds")
        if patterns_run:
            best_ms = makespan(inst, best_known[0])
            bound = pattern_bound(inst, lower, best_ms, deadline, [s[0] for s in known], threads)
            note += f" (pattern LP: {100 * (best_ms / bound - 1):.2f} % gap)"
    elif deadline - time.monotonic() > 0.02 or det_limit is not None:
        sol, b, status = run_mip(inst, backend, best_known, lower, deadline - time.monotonic(), threads, seed,
                                 rel_gap, det_limit)
        bound = max(bound, b)
        if sol is not None:
            found.append((backend, sol))
        else:
            note += f"; {backend} returned no incumbent ({status}): best known plan kept"
        note += f"; {backend} status: {status}"
    else:
        note += "; no time left for the MIP"
    plans = [(who, _to_plan(inst, s, shares, lat)) for who, (s, shares) in found]
    return [(who, p) for who, p in plans if p is not None], bound, note


def _check_args(cluster, lat, backend, time_limit_s, threads, seed, rel_gap, objective, round_lengths) -> None:
    check_objective(objective)
    if cluster != lat.cluster:
        raise ValueError(f"cluster {cluster} does not match the latency model's cluster {lat.cluster}")
    if backend not in BACKENDS + ("none",):
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS + ('none',))}")
    if isinstance(time_limit_s, bool) or not isinstance(time_limit_s, (int, float)) \
            or not math.isfinite(time_limit_s) or time_limit_s < 0:
        raise ValueError(f"time_limit_s must be a non-negative number, got {time_limit_s!r}")
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
        c = full.index(g.tp, g.cp, cross)
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
    shapes = [inst.configs[c] for c, _ in sol]
    return pack_nodes(shapes, inst.node_caps, range(len(shapes))) or pack_nodes(shapes, inst.node_caps)


def run_mip(inst, backend, incumbent, lower, remaining, threads, seed, rel_gap, det_limit):
    """The slot MIP warm-started from incumbent (solution, shares); returns ((solution, shares) or None,
    bound, status)."""
    started = time.monotonic()
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
    return Plan.build(inst.lengths, [(*inst.configs[c][:2], items) for c, items in sol], lat, ranks=ranks)
