"""Exhaustive optimum over set partitions × configurations × placements: an oracle for tiny instances
(≤ 7 sequences; Bell(7) = 877 partitions), used by the tests and the fuzzer to check the solvers and
their bounds. Written independently of the MIP: placements are enumerated, not modelled.

A configuration (tp, cp, cross) of an Instance is placeable on the nodes as follows: an intra-node group
takes tp·cp GPUs of one node; a cross-node group takes its cp TP blocks (tp GPUs each) from nodes
holding them, at least two nodes (a group inside one node is priced as intra-node)."""
from __future__ import annotations

import math

from functools import lru_cache

import numpy as np

from hetero_sched.milp.instance import Instance


def set_partitions(items):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in set_partitions(rest):
        for k in range(len(part)):
            yield part[:k] + [[first] + part[k]] + part[k + 1:]
        yield [[first]] + part


def placeable(groups: tuple, caps: tuple) -> bool:
    """Can these (tp, cp, cross) groups all be placed on nodes of these capacities? (exhaustive)"""
    return _placeable(tuple(sorted(groups, key=lambda g: (g[2], -g[0] * g[1], -g[0]))), tuple(caps))


@lru_cache(maxsize=200_000)
def _placeable(groups: tuple, free: tuple) -> bool:
    if not groups:
        return True
    (tp, cp, cross), rest = groups[0], groups[1:]
    if not cross:
        for n, f in enumerate(free):
            if f >= tp * cp and _placeable(rest, _minus(free, {n: tp * cp})):
                return True
        return False
    for split in _block_splits(cp, tuple(f // tp for f in free)):
        if sum(1 for k in split if k) >= 2 and _placeable(rest, _minus(free, {n: k * tp for n, k in
                                                                               enumerate(split)})):
            return True
    return False


def _block_splits(blocks: int, room: tuple):
    """Every way to take `blocks` TP blocks from nodes holding room[n] blocks each."""
    if not room:
        if blocks == 0:
            yield ()
        return
    for k in range(min(blocks, room[0]) + 1):
        for rest in _block_splits(blocks - k, room[1:]):
            yield (k,) + rest


def _minus(free: tuple, take: dict) -> tuple:
    return tuple(sorted((f - take.get(n, 0) for n, f in enumerate(free)), reverse=True))


def brute_force_makespan(inst: Instance) -> float:
    """min over partitions of the batch into groups, a configuration per group and a placement of the
    groups on the nodes, of the makespan. Depth-first over blocks, configurations cheapest first,
    pruned by the best makespan found."""
    caps = tuple(sorted(inst.node_caps, reverse=True))
    best = [np.inf]
    for part in set_partitions(list(range(inst.n))):
        loads = [inst.overhead + inst.cost[block].sum(axis=0) for block in part]  # (C,) per block
        options = [[c for c in np.argsort(row, kind="stable") if np.isfinite(row[c])] for row in loads]
        _search(loads, options, 0, [], 0.0, caps, best, inst)
    return best[0]


def _search(loads, options, b, chosen, worst, caps, best, inst) -> None:
    if b == len(loads):
        if placeable(tuple(inst.shape(c) for c in chosen), caps):
            best[0] = worst
        return
    for c in options[b]:
        load = loads[b][c]
        if max(worst, load) >= best[0]:
            break  # options are sorted by load: the rest are no better
        if sum(inst.gpus[k] for k in chosen) + inst.gpus[c] > inst.total_gpus:
            continue
        _search(loads, options, b + 1, chosen + [c], max(worst, load), caps, best, inst)


def brute_force_pipelined(lengths, lat, pp_degrees) -> float:
    """The least makespan over every partition of the sequences into groups and every (tp, cp, pp) of each
    group (pp from pp_degrees), each group priced as a plan prices it (group_latency_ms: with stages, the
    1F1B simulation, not the solver's additive lower bound), among the choices that place on the nodes.
    Exponential: tiny instances only."""
    import itertools

    from ..placement import node_capacities

    caps = tuple(node_capacities(lat.cluster.gpus, lat.cluster.gpus_per_node))
    configs = [(tp, cp, pp) for pp in pp_degrees for tp, cp in lat.cluster.configs(lat.model)
               if tp * cp * pp <= lat.cluster.gpus and (tp, pp) in lat.fitting_layouts()]
    best = math.inf
    for part in set_partitions(list(range(len(lengths)))):
        options = []
        for block in part:
            ls = [lengths[i] for i in block]
            options.append(sorted((lat.group_latency_ms(ls, tp, cp, pp=pp), (tp, cp, pp)) for tp, cp, pp in configs
                                  if max(ls) <= lat.max_tokens(tp, cp, pp)))
        for combo in itertools.product(*options):
            worst = max(t for t, _ in combo)
            if worst >= best or sum(tp * cp * pp for _, (tp, cp, pp) in combo) > lat.cluster.gpus:
                continue
            shapes = tuple((tp, cp * pp, tp * cp * pp > lat.cluster.gpus_per_node) for _, (tp, cp, pp) in combo)
            if placeable(shapes, caps):
                best = worst
    return best
