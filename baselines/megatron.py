"""Megatron-LM style packing: the naive homogeneous reference.

Sequences in arrival order, first-fit into micro-batches of a fixed capacity (the context window: the
longest sequence rounded up to a power of two, capped by the configuration's max_tokens), micro-batches
dealt round-robin to the DP replicas (with pipeline stages, each replica runs its fixed-size micro-batches
1F1B). Best over every homogeneous (TP, CP, PP)."""
from __future__ import annotations

from hetero_sched.latency import LatencyModel
from hetero_sched.latency.base import config_name
from hetero_sched.milp.instance import build_instance
from hetero_sched.plan import Plan, objective_key
from hetero_sched.specs import Cluster

from .wlb_llm import best_by_bound, placed_homogeneous_plan, replica_options


def first_fit_arrival(lengths, capacity: int) -> list[list[int]]:
    """Sequences in arrival order, each into the first micro-batch with room (a new one when none has).
    The first fit is found by descending a max-tree over the micro-batches' room, O(log n) a sequence:
    scanning every open micro-batch is O(n²) (minutes at 65,536 sequences in 3,000 micro-batches).
    Micro-batches not yet opened hold `capacity`, so the first with room is an open one or the next new
    one; a sequence longer than the capacity opens one with negative room, as a scan would."""
    lengths = [int(x) for x in lengths]
    size = 1
    while size < max(len(lengths), 1):
        size *= 2
    room = [capacity] * (2 * size)  # room[size + b]: micro-batch b's room; room[k]: the most below node k
    batches: list[list[int]] = []
    for i, x in enumerate(lengths):
        if x <= room[1] and x <= capacity:
            k = 1
            while k < size:  # the leftmost leaf with room ≥ x
                k = 2 * k if room[2 * k] >= x else 2 * k + 1
            b = k - size
        else:
            b, k = len(batches), size + len(batches)
        if b == len(batches):
            batches.append([])
        batches[b].append(i)
        room[k] -= x
        k //= 2
        while k:
            room[k] = max(room[2 * k], room[2 * k + 1])
            k //= 2
    return batches


def micro_batch_capacity(lengths, cap: int, context: int | None) -> int:
    """Megatron's fixed micro-batch: the context window (the longest sequence rounded up to a power of
    two unless given), capped by what fits."""
    return min(context or 1 << (max(lengths) - 1).bit_length(), cap)


def megatron_replicas(lengths, cap: int, dp: int, context: int | None) -> list[list[int]]:
    batches = first_fit_arrival(lengths, micro_batch_capacity(lengths, cap, context))
    return [[i for b in batches[r::dp] for i in b] for r in range(dp)]


def _plan(inst, lengths, lat, tp, cp, reps, context, pp: int = 1) -> Plan:
    """One global recompute setting: the least k with which a full fixed-size micro-batch fits."""
    cap = lat.max_tokens(tp, cp, pp)
    replicas = megatron_replicas(lengths, cap, len(reps), context)
    return placed_homogeneous_plan("megatron", inst, tp, cp, reps, replicas, lat,
                                   capacity=max(micro_batch_capacity(lengths, cap, context), max(lengths)), pp=pp)


def megatron_plan(lengths, cluster: Cluster, lat: LatencyModel, *, tp: int, cp: int, pp: int = 1,
                  context: int | None = None, objective: str = "step") -> Plan:
    """Megatron packing on homogeneous (tp, cp, pp) replicas, placed as they would be (see wlb_llm)."""
    lengths = [int(x) for x in lengths]
    lat._check_config(tp, cp, pp)
    cap = lat.max_tokens(tp, cp, pp)
    if max(lengths) > cap:
        raise ValueError(f"{config_name(tp, cp, pp)} cannot hold a {max(lengths)}-token sequence (max_tokens {cap})")
    inst = build_instance(lengths, lat, prune=False, only=(tp, cp, pp))
    plans = [_plan(inst, lengths, lat, tp, cp, reps, context, pp) for reps in replica_options(inst, tp, cp, pp)]
    if not plans:
        raise ValueError(f"{config_name(tp, cp, pp)} cannot be placed on {cluster.gpus} GPUs")
    return min(plans, key=lambda p: objective_key(p, objective))


def megatron_best(lengths, cluster: Cluster, lat: LatencyModel, context: int | None = None,
                  objective: str = "step", pp_degrees=None) -> Plan:
    """Best placed homogeneous Megatron packing over every (TP, CP, PP) worth pricing and both replica
    counts (plans built in order of a lower bound on the objective, which holds for any packing of the
    replicas; among equal plans, the first in (tp, cp, pp, replica option) order)."""
    inst = build_instance(lengths, lat, prune=False, pp_degrees=pp_degrees)
    lengths = inst.lengths.tolist()
    return best_by_bound(inst, lat, objective,
                         lambda cfg, reps: _plan(inst, lengths, lat, cfg[0], cfg[1], reps, context, cfg[2]),
                         lambda bound, cfg, reps, index: index)
