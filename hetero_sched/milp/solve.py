"""hs.solve: warm start (best WLB-LLM plan) → heuristic → exact MIP → the best plan, priced and bounded."""
from __future__ import annotations

import time

import numpy as np

from ..latency import LatencyModel
from ..plan import Plan, SolveResult
from ..specs import Cluster
from .backends import BACKENDS, run_backend
from .bounds import overhead_area_bound
from .formulation import build_milp, decode, estimate_size, hint_values
from .heuristic import heuristic_solution, makespan
from .instance import Instance, _undominated, build_instance

OPTIMAL_GAP = 1e-6
MAX_MIP_VARIABLES = 60_000  # beyond this the slot MIP is not built: heuristic + bounds answer
HEURISTIC_SHARE = 0.3       # of the time limit, when the MIP runs after it


OBJECTIVES = ("makespan", "step")


def solve(lengths, cluster: Cluster, lat: LatencyModel, *, backend: str = "cpsat", time_limit_s: float = 10.0,
          threads: int = 2, seed: int = 0, rel_gap: float = OPTIMAL_GAP / 10,
          deterministic_limit: float | None = None, objective: str = "makespan") -> Plan:
    """Plan one step: groups of different (TP, CP), sequences assigned, makespan minimised.

    The returned plan is the better of the solver's and the warm start's (the best homogeneous
    WLB-LLM plan), both priced by the step model: never worse than WLB-LLM on the objective.
    objective='step' minimises makespan + sync instead: the search runs once per smallest TP degree
    allowed (sync depends on it) and keeps the plan with the least step time; bound and gap still
    refer to the makespan."""
    start = time.monotonic()
    _check_args(cluster, lat, backend, time_limit_s, threads, seed, rel_gap, objective)
    from ..baselines.wlb_llm import best_homogeneous_config, best_homogeneous_step_config
    from ..baselines.wlb_llm import plan_for_config as wlb_plan

    full = build_instance(lengths, lat, prune=False)
    if objective == "makespan":
        warm = wlb_plan(full, best_homogeneous_config(full)[0], lat)
        slices = [(1, start + time_limit_s)]
    else:
        warm = wlb_plan(full, best_homogeneous_step_config(full, lat)[0], lat)
        tps = lat.cluster.tp_degrees(lat.model)
        slices = [(t, start + time_limit_s * (k + 1) / len(tps)) for k, t in enumerate(tps)]
    plans, bound, notes = [("warm start", warm)], 0.0, []
    for min_tp, deadline in slices:
        found, b, note = _search(full, lat, warm, min_tp, deadline, backend, threads, seed, rel_gap,
                                 deterministic_limit)
        plans += found
        bound = max(bound, b) if min_tp == 1 else bound  # only the unrestricted search bounds the makespan
        notes.append(note)
    key = (lambda p: (p.makespan_ms, p.step_ms)) if objective == "makespan" else (lambda p: (p.step_ms,
                                                                                            p.makespan_ms))
    who, plan = min(plans, key=lambda wp: (*key(wp[1]), wp[0] != "warm start"))
    plan.baseline = dict(warm.baseline)
    plan.solver = SolveResult(backend=backend, status="feasible", time_limit_s=time_limit_s, threads=threads,
                              seed=seed, bound_ms=bound)
    plan.reprice(lat)
    s = plan.solver
    s.objective_ms = plan.makespan_ms
    s.status = "optimal" if s.gap <= OPTIMAL_GAP else ("baseline" if who == "warm start" else "feasible")
    s.message = f"objective {objective}; plan from {who}; " + " | ".join(notes)
    s.wall_s = time.monotonic() - start
    return plan


def _search(full: Instance, lat, warm: Plan, min_tp: int, deadline: float, backend, threads, seed, rel_gap,
            det_limit):
    """Heuristic then MIP over configurations with tp ≥ min_tp; returns (named plans, bound, note)."""
    allowed = np.array([c for c, (tp, _) in enumerate(full.configs) if tp >= min_tp])
    sub = full.subset(allowed)
    keep = allowed[_undominated(sub.gpus, sub.overhead, sub.cost)]
    inst = full.subset(keep)
    if not np.isfinite(inst.cost).any(axis=1).all():
        return [], 0.0, f"TP>={min_tp}: some sequence fits no configuration"
    warm_sol = _warm_solution(full, inst, keep, warm) if min_tp == 1 else None
    upper = makespan(inst, warm_sol) if warm_sol else 1e12  # no warm start in a restricted search
    lower = overhead_area_bound(inst, upper)
    size = estimate_size(inst)
    mip_runs = backend != "none" and size <= MAX_MIP_VARIABLES
    now = time.monotonic()
    share = HEURISTIC_SHARE if mip_runs else 1.0
    # under a deterministic work limit nothing may depend on the clock: no deadline, no restarts
    h_deadline = now + share * (deadline - now) if det_limit is None else float("inf")
    heur = heuristic_solution(inst, lower, upper, h_deadline, seed=seed, restarts=det_limit is None)
    found = [("heuristic", heur)] if heur else []
    note = f"TP>={min_tp}: {len(full.configs)} configs, {len(allowed) - len(keep)} dominated"
    bound, status = lower, "not run"
    known = [s for s in (warm_sol, heur) if s]
    if not known:
        return [], lower, note + "; no plan found"
    if backend != "none" and not mip_runs:
        note += f"; exact MIP not built ({size} variables > {MAX_MIP_VARIABLES}): heuristic with bounds"
    elif backend != "none":
        remaining = deadline - time.monotonic()
        if remaining > 0.02 or det_limit is not None:
            best_known = min(known, key=lambda s: makespan(inst, s))
            sol, b, status = run_mip(inst, backend, best_known, lower, remaining, threads, seed, rel_gap, det_limit)
            bound = max(bound, b)
            if sol is not None:
                found.append((backend, sol))
            else:
                note += f"; {backend} returned no incumbent ({status}): best known plan kept"
        else:
            note += "; no time left for the MIP"
    return [(who, _to_plan(inst, s, lat)) for who, s in found], bound, note + f"; backend status: {status}"


def _check_args(cluster, lat, backend, time_limit_s, threads, seed, rel_gap, objective) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if cluster != lat.cluster:
        raise ValueError(f"cluster {cluster} does not match the latency model's cluster {lat.cluster}")
    if backend not in BACKENDS + ("none",):
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS + ('none',))}")
    if not isinstance(time_limit_s, (int, float)) or not np.isfinite(time_limit_s) or time_limit_s < 0:
        raise ValueError(f"time_limit_s must be a non-negative number, got {time_limit_s!r}")
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not (0 <= rel_gap < 1):
        raise ValueError(f"rel_gap must be in [0, 1), got {rel_gap!r}")


def _warm_solution(full: Instance, inst: Instance, keep: np.ndarray, warm: Plan) -> list:
    """The warm-start plan in the pruned instance: a dropped config is swapped for one dominating it."""
    sol = []
    for g in warm.groups:
        c = full.configs.index((g.tp, g.cp))
        if c not in keep:  # a kept configuration dominating it exists (dominance is transitive)
            c = next(d for d in keep if full.dominates(d, c))
        sol.append((int(np.flatnonzero(keep == c)[0]), np.array(g.sequence_ids)))
    return sol


def run_mip(inst, backend, incumbent, lower, remaining, threads, seed, rel_gap, det_limit):
    model = build_milp(inst, upper_ms=makespan(inst, incumbent), lower_ms=lower)
    hint = hint_values(model, inst, incumbent)
    try:
        res = run_backend(backend, model, time_limit_s=remaining, threads=threads, seed=seed, rel_gap=rel_gap,
                          hint=hint, deterministic_limit=det_limit)
    except Exception as exc:  # noqa: BLE001 — a crashed or missing solver binary must not lose the plan we already have
        return None, 0.0, f"{backend} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    sol = decode(model, res.value_of) if res.value_of is not None else None
    if sol is not None and not np.isfinite(makespan(inst, sol)):
        sol = None
    return sol, res.bound_ms, res.status


def _to_plan(inst: Instance, sol, lat: LatencyModel) -> Plan:
    return Plan.build(inst.lengths, [(*inst.configs[c], items) for c, items in sol], lat)
