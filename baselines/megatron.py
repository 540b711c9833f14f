"""Megatron-LM style packing: the naive homogeneous reference.

Sequences in arrival order, first-fit into micro-batches of a fixed capacity (the context window: the
longest sequence rounded up to a power of two, capped by the configuration's max_tokens), micro-batches
dealt round-robin to the DP replicas. Best over every homogeneous (TP, CP)."""
from __future__ import annotations

from hetero_sched.latency import LatencyModel
from hetero_sched.milp.instance import build_instance
from hetero_sched.placement import NodePacker, ranks_from_nodes
from hetero_sched.plan import Plan
from hetero_sched.specs import Cluster

from .wlb_llm import homogeneous_pairs, objective_key, replica_options


def first_fit_arrival(lengths, capacity: int) -> list[list[int]]:
    batches, room = [], []
    for i, x in enumerate(lengths):
        for b, free in enumerate(room):
            if x <= free:
                batches[b].append(i)
                room[b] -= x
                break
        else:
            batches.append([i])
            room.append(capacity - x)
    return batches


def megatron_replicas(lengths, cap: int, dp: int, context: int | None) -> list[list[int]]:
    window = context or 1 << (max(lengths) - 1).bit_length()
    batches = first_fit_arrival(lengths, min(window, cap))
    return [[i for b in batches[r::dp] for i in b] for r in range(dp)]


def _plan(inst, lengths, lat, tp, cp, reps, context) -> Plan:
    packer = NodePacker(inst.node_caps)
    shares = [packer.take(tp, cp, cross) for cross in reps]
    ranks = ranks_from_nodes([tp] * len(reps), shares, lat.cluster.gpus_per_node)
    replicas = megatron_replicas(lengths, lat.max_tokens(tp, cp), len(reps), context)
    plan = Plan.build(lengths, [(tp, cp, ids) for ids in replicas], lat, ranks=ranks)
    plan.baseline = {"name": "megatron", "tp": tp, "cp": cp, "dp": len(reps), "cross_node_replicas": int(sum(reps)),
                     "makespan_ms": plan.makespan_ms, "step_ms": plan.step_ms, "sync_ms_upper": plan.sync_ms_upper}
    return plan


def megatron_plan(lengths, cluster: Cluster, lat: LatencyModel, *, tp: int, cp: int,
                  context: int | None = None, objective: str = "step") -> Plan:
    """Megatron packing on homogeneous (tp, cp) replicas, placed as they would be (see wlb_llm)."""
    lengths = [int(x) for x in lengths]
    lat._check_config(tp, cp)
    cap = lat.max_tokens(tp, cp)
    if max(lengths) > cap:
        raise ValueError(f"TP{tp}xCP{cp} cannot hold a {max(lengths)}-token sequence (max_tokens {cap})")
    inst = build_instance(lengths, lat, prune=False, only=(tp, cp))
    plans = [_plan(inst, lengths, lat, tp, cp, reps, context) for reps in replica_options(inst, tp, cp)]
    if not plans:
        raise ValueError(f"TP{tp}xCP{cp} cannot be placed on {cluster.gpus} GPUs")
    return min(plans, key=lambda p: objective_key(p, objective))


def megatron_best(lengths, cluster: Cluster, lat: LatencyModel, context: int | None = None,
                  objective: str = "step") -> Plan:
    """Best placed homogeneous Megatron packing over every (TP, CP) worth pricing and both replica counts."""
    inst = build_instance(lengths, lat, prune=False)
    lengths = inst.lengths.tolist()
    best = None
    for tp, cp in homogeneous_pairs(inst):
        for reps in replica_options(inst, tp, cp):
            plan = _plan(inst, lengths, lat, tp, cp, reps, context)
            if best is None or objective_key(plan, objective) < objective_key(best, objective):
                best = plan
    if best is None:
        raise ValueError("no homogeneous (TP, CP) configuration holds every sequence of the batch")
    return best
