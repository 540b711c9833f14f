"""Megatron-LM style packing: the naive homogeneous reference.

Sequences in arrival order, first-fit into micro-batches of a fixed capacity (the context window: the
longest sequence rounded up to a power of two, capped by the configuration's max_tokens), micro-batches
dealt round-robin to the DP replicas. Best over every homogeneous (TP, CP)."""
from __future__ import annotations

import numpy as np

from hetero_sched.latency import LatencyModel
from hetero_sched.milp.instance import build_instance
from hetero_sched.plan import Plan
from hetero_sched.specs import Cluster


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


def megatron_replicas(lengths, cluster: Cluster, cap: int, tp: int, cp: int, context: int | None) -> list[list[int]]:
    window = context or 1 << (max(lengths) - 1).bit_length()
    batches = first_fit_arrival(lengths, min(window, cap))
    dp = cluster.gpus // (tp * cp)
    return [[i for b in batches[r::dp] for i in b] for r in range(dp)]


def megatron_plan(lengths, cluster: Cluster, lat: LatencyModel, *, tp: int, cp: int,
                  context: int | None = None) -> Plan:
    lengths = [int(x) for x in lengths]
    cap = lat.max_tokens(tp, cp)
    if max(lengths) > cap:
        raise ValueError(f"TP{tp}xCP{cp} cannot hold a {max(lengths)}-token sequence (max_tokens {cap})")
    replicas = megatron_replicas(lengths, cluster, cap, tp, cp, context)
    plan = Plan.build(lengths, [(tp, cp, ids) for ids in replicas], lat)
    plan.baseline = {"name": "megatron", "tp": tp, "cp": cp, "dp": len(replicas),
                     "makespan_ms": plan.makespan_ms, "step_ms": plan.step_ms}
    return plan


def megatron_best(lengths, cluster: Cluster, lat: LatencyModel, context: int | None = None) -> Plan:
    """Best homogeneous Megatron packing (makespans from the priced instance; only the winner is built)."""
    inst = build_instance(lengths, lat, prune=False)
    lengths = inst.lengths.tolist()
    best, best_ms = None, np.inf
    for c, (tp, cp) in enumerate(inst.configs):
        col = inst.cost[:, c]
        if not np.isfinite(col).all():
            continue
        replicas = megatron_replicas(lengths, cluster, lat.max_tokens(tp, cp), tp, cp, context)
        ms = inst.overhead[c] + max(col[r].sum() for r in replicas if r)
        if ms < best_ms:
            best, best_ms = (tp, cp), ms
    if best is None:
        raise ValueError("no homogeneous (TP, CP) configuration holds every sequence of the batch")
    return megatron_plan(lengths, cluster, lat, tp=best[0], cp=best[1], context=context)
