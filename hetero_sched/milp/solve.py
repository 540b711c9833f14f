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


def solve(lengths, cluster: Cluster, lat: LatencyModel, *, backend: str = "cpsat", time_limit_s: float = 10.0,
          threads: int = 2, seed: int = 0, rel_gap: float = OPTIMAL_GAP / 10,
          deterministic_limit: float | None = None) -> Plan:
    """Plan one step: groups of different (TP, CP), sequences assigned, makespan minimised.

    The returned plan is the better of the solver's and the warm start's (the best homogeneous
    WLB-LLM plan), both priced by the step model: never worse than WLB-LLM."""
    start = time.monotonic()
    _check_args(cluster, lat, backend, time_limit_s, threads, seed, rel_gap)
    deadline = start + time_limit_s
    from ..baselines.wlb_llm import _plan as wlb_plan, best_homogeneous_config

    full = build_instance(lengths, lat, prune=False)
    c_warm, _ = best_homogeneous_config(full)
    warm = wlb_plan(full, c_warm, lat)
    keep = _undominated(full.gpus, full.overhead, full.cost)
    inst = _subset(full, keep)
    warm_sol = _warm_solution(full, inst, keep, warm)
    lower = overhead_area_bound(inst, makespan(inst, warm_sol))
    messages = []
    size = estimate_size(inst)
    mip_runs = backend != "none" and size <= MAX_MIP_VARIABLES
    share = HEURISTIC_SHARE if mip_runs else 1.0
    # under a deterministic work limit nothing may depend on the clock: no deadline, no restarts
    h_deadline = start + share * time_limit_s if deterministic_limit is None else float("inf")
    heur = heuristic_solution(inst, lower, makespan(inst, warm_sol), h_deadline, seed=seed,
                              restarts=deterministic_limit is None)
    candidates = [("heuristic", heur)] if heur else []
    best_known = min([warm_sol] + [s for _, s in candidates], key=lambda s: makespan(inst, s))
    bound, backend_status = lower, "not run"
    if backend != "none" and not mip_runs:
        messages.append(f"exact MIP not built ({size} assignment variables > {MAX_MIP_VARIABLES}): "
                        "heuristic plan with proven bounds")
    elif backend != "none":
        remaining = deadline - time.monotonic()
        if remaining > 0.02 or deterministic_limit is not None:
            sol, b, backend_status = run_mip(inst, backend, best_known, lower, remaining, threads, seed,
                                              rel_gap, deterministic_limit)
            bound = max(bound, b)
            if sol is not None:
                candidates.append((backend, sol))
            else:
                messages.append(f"{backend} returned no incumbent ({backend_status}): best known plan kept")
        else:
            messages.append("no time left for the MIP after the heuristic")
    plans = [("warm start", warm)] + [(who, _to_plan(inst, s, lat)) for who, s in candidates]
    who, plan = min(plans, key=lambda wp: (wp[1].makespan_ms, wp[1].step_ms, wp[0] != "warm start"))
    plan.baseline = dict(warm.baseline)
    plan.solver = SolveResult(backend=backend, status="feasible", time_limit_s=time_limit_s, threads=threads,
                              seed=seed, bound_ms=bound)
    plan.reprice(lat)
    s = plan.solver
    s.objective_ms = plan.makespan_ms
    s.status = "optimal" if s.gap <= OPTIMAL_GAP else ("baseline" if who == "warm start" else "feasible")
    messages.insert(0, f"plan from {who}; backend status: {backend_status}; {full.configs.__len__()} configs, "
                       f"{len(full.configs) - len(keep)} pruned as dominated")
    s.message = "; ".join(messages)
    s.wall_s = time.monotonic() - start
    return plan


def _check_args(cluster, lat, backend, time_limit_s, threads, seed, rel_gap) -> None:
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


def _subset(full: Instance, keep: np.ndarray) -> Instance:
    return Instance(lengths=full.lengths, configs=[full.configs[c] for c in keep], gpus=full.gpus[keep],
                    overhead=full.overhead[keep], cost=full.cost[:, keep], total_gpus=full.total_gpus,
                    pruned=len(full.configs) - len(keep))


def _warm_solution(full: Instance, inst: Instance, keep: np.ndarray, warm: Plan) -> list:
    """The warm-start plan in the pruned instance: a dropped config is swapped for one dominating it."""
    sol = []
    for g in warm.groups:
        c = full.configs.index((g.tp, g.cp))
        if c not in keep:
            c = next(d for d in keep if full.gpus[d] <= full.gpus[c] and full.overhead[d] <= full.overhead[c]
                     and (full.cost[:, d] <= full.cost[:, c]).all())
        sol.append((int(np.flatnonzero(keep == c)[0]), np.array(g.sequence_ids)))
    return sol


def run_mip(inst, backend, incumbent, lower, remaining, threads, seed, rel_gap, det_limit):
    model = build_milp(inst, upper_ms=makespan(inst, incumbent), lower_ms=lower)
    hint = hint_values(model, inst, incumbent)
    res = run_backend(backend, model, time_limit_s=remaining, threads=threads, seed=seed, rel_gap=rel_gap,
                      hint=hint, deterministic_limit=det_limit)
    sol = decode(model, res.value_of) if res.value_of is not None else None
    if sol is not None and not np.isfinite(makespan(inst, sol)):
        sol = None
    return sol, res.bound_ms, res.status


def _to_plan(inst: Instance, sol, lat: LatencyModel) -> Plan:
    return Plan.build(inst.lengths, [(*inst.configs[c], items) for c, items in sol], lat)
