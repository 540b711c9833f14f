"""WLB-LLM (Wang et al., OSDI'25, arXiv 2503.17924) as a homogeneous baseline.

Implemented from the paper: one (TP, CP) for every data-parallel replica, DP = gpus // (TP·CP) (idle
GPUs allowed); workload-aware variable-length packing — sequences ordered by their step-model cost
(attention's quadratic term included), longest first, each placed on the least-loaded replica; inside a
replica, micro-batches packed up to the memory cap (max_tokens). A configuration is infeasible when any
sequence exceeds max_tokens. Not implemented: the paper's multi-step outlier delay (holding very long
documents back to later steps) — a single step is planned here — and its per-document CP sharding
variants (our step model charges every document split over all CP ranks).
"""
from __future__ import annotations

import numpy as np

from hetero_sched.latency import LatencyModel
from hetero_sched.milp.instance import Instance, build_instance
from hetero_sched.packing import least_loaded_assignment
from hetero_sched.plan import Plan
from hetero_sched.specs import Cluster


def wlb_llm_plan(lengths, cluster: Cluster, lat: LatencyModel, *, tp: int, cp: int) -> Plan:
    """The WLB-LLM plan for one homogeneous (tp, cp); ValueError when a sequence does not fit."""
    _check_cluster(cluster, lat)
    inst = build_instance(lengths, lat, prune=False)
    if (tp, cp) not in inst.configs:
        lat._check_config(tp, cp)
        raise ValueError(f"TP{tp}xCP{cp} cannot hold the batch: max_tokens {lat.max_tokens(tp, cp)} < "
                         f"longest sequence {int(inst.lengths.max())}")
    c = inst.configs.index((tp, cp))
    if not np.isfinite(inst.cost[:, c]).all():
        i = int(np.flatnonzero(~np.isfinite(inst.cost[:, c]))[0])
        raise ValueError(f"TP{tp}xCP{cp} cannot hold sequence {i} ({int(inst.lengths[i])} tokens > "
                         f"max_tokens {lat.max_tokens(tp, cp)})")
    return plan_for_config(inst, c, lat)


def wlb_llm_best(lengths, cluster: Cluster, lat: LatencyModel) -> Plan:
    """The best homogeneous WLB-LLM plan over the whole configuration space (min makespan, then step)."""
    _check_cluster(cluster, lat)
    inst = build_instance(lengths, lat, prune=False)
    c, _ = best_homogeneous_config(inst)
    return plan_for_config(inst, c, lat)


def homogeneous_makespan(inst: Instance, c: int) -> float:
    """Makespan of WLB-LLM's least-loaded packing on dp = N // gpus_c replicas of configuration c."""
    costs = inst.cost[:, c]
    if not np.isfinite(costs).all():
        return np.inf
    dp = inst.total_gpus // int(inst.gpus[c])
    bins = least_loaded_assignment(costs.tolist(), dp)
    return float(inst.overhead[c] + max(costs[b].sum() for b in bins if b))


def best_homogeneous_config(inst: Instance) -> tuple[int, float]:
    """Search configurations in order of a lower bound, skipping those that cannot beat the best."""
    feasible = [c for c in range(len(inst.configs)) if np.isfinite(inst.cost[:, c]).all()]
    if not feasible:
        raise ValueError("no homogeneous (TP, CP) configuration holds every sequence of the batch")

    def bound(c):
        dp = inst.total_gpus // int(inst.gpus[c])
        col = inst.cost[:, c]
        return inst.overhead[c] + max(col.max(), col.sum() / dp)

    best, best_ms = -1, np.inf
    for c in sorted(feasible, key=lambda c: (bound(c), c)):
        if bound(c) >= best_ms:
            break
        ms = homogeneous_makespan(inst, c)
        if ms < best_ms:
            best, best_ms = c, ms
    return best, best_ms


def best_homogeneous_step_config(inst: Instance, lat: LatencyModel) -> tuple[int, float]:
    """The homogeneous configuration with the least step time (makespan + its sync)."""
    best, best_ms = -1, np.inf
    for c in range(len(inst.configs)):
        if not np.isfinite(inst.cost[:, c]).all():
            continue
        tp = inst.configs[c][0]
        step = homogeneous_makespan(inst, c) + lat.sync_ms([tp] * (inst.total_gpus // int(inst.gpus[c])))
        if step < best_ms:
            best, best_ms = c, step
    if best < 0:
        raise ValueError("no homogeneous (TP, CP) configuration holds every sequence of the batch")
    return best, best_ms


def plan_for_config(inst: Instance, c: int, lat: LatencyModel) -> Plan:
    """The WLB-LLM plan of configuration c of a priced instance (least-loaded packing on its DP replicas)."""
    tp, cp = inst.configs[c]
    dp = inst.total_gpus // (tp * cp)
    bins = least_loaded_assignment(inst.cost[:, c].tolist(), dp)
    plan = Plan.build(inst.lengths, [(tp, cp, b) for b in bins], lat)
    plan.baseline = {"name": "wlb-llm", "tp": tp, "cp": cp, "dp": dp,
                     "makespan_ms": plan.makespan_ms, "step_ms": plan.step_ms}
    return plan


def _check_cluster(cluster: Cluster, lat: LatencyModel) -> None:
    if cluster != lat.cluster:
        raise ValueError(f"cluster {cluster} does not match the latency model's {lat.cluster}")
