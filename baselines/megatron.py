"""Megatron-LM style packing: the naive homogeneous reference.

Sequences in arrival order, first-fit into micro-batches of a fixed capacity (the context window: the
longest sequence rounded up to a power of two, capped by the configuration's max_tokens), micro-batches
dealt round-robin to the DP replicas. Best over every homogeneous (TP, CP)."""
from __future__ import annotations

from hetero_sched.latency import LatencyModel
from hetero_sched.milp.instance import build_instance
from hetero_sched.plan import Plan, objective_key
from hetero_sched.specs import Cluster

from .wlb_llm import best_by_bound, placed_homogeneous_plan, replica_options


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


def micro_batch_capacity(lengths, cap: int, context: int | None) -> int:
    """Megatron's fixed micro-batch: the context window (the longest sequence rounded up to a power of
    two unless given), capped by what fits."""
    return min(context or 1 << (max(lengths) - 1).bit_length(), cap)


def megatron_replicas(lengths, cap: int, dp: int, context: int | None) -> list[list[int]]:
    batches = first_fit_arrival(lengths, micro_batch_capacity(lengths, cap, context))
    return [[i for b in batches[r::dp] for i in b] for r in range(dp)]


def _plan(inst, lengths, lat, tp, cp, reps, context) -> Plan:
    """One global recompute setting: the least k with which a full fixed-size micro-batch fits."""
    cap = lat.max_tokens(tp, cp)
    replicas = megatron_replicas(lengths, cap, len(reps), context)
    return placed_homogeneous_plan("megatron", inst, tp, cp, reps, replicas, lat,
                                   capacity=max(micro_batch_capacity(lengths, cap, context), max(lengths)))


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
    """Best placed homogeneous Megatron packing over every (TP, CP) worth pricing and both replica counts
    (plans built in order of a lower bound on the objective, which holds for any packing of the replicas;
    among equal plans, the first in (tp, cp, replica option) order)."""
    inst = build_instance(lengths, lat, prune=False)
    lengths = inst.lengths.tolist()
    return best_by_bound(inst, lat, objective, lambda tp, cp, reps: _plan(inst, lengths, lat, tp, cp, reps, context),
                         lambda bound, tp, cp, reps, index: index)
