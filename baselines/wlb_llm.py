"""WLB-LLM (Wang et al., OSDI'25, arXiv 2503.17924) as a homogeneous baseline, placed honestly.

Implemented from the paper: one (TP, CP) for every data-parallel replica; workload-aware variable-length
packing — sequences ordered by their step-model cost (attention's quadratic term included), longest
first, each placed on the replica where it finishes first; inside a replica, micro-batches packed up to
the memory cap (max_tokens). A configuration is infeasible when any sequence exceeds max_tokens.

Placement: replicas are placed on nodes as they would really be — inside a node while one holds them,
the rest across nodes (ring on InfiniBand, so slower: hence earliest-finish, not identical replicas).
Two replica counts are evaluated for each (TP, CP): every replica that can be placed (up to
⌊N/(TP·CP)⌋), and only those that fit inside nodes; the better on the objective is the config's plan.
Not implemented: the paper's multi-step outlier delay (a single step is planned here) and its
per-document CP sharding variants (our step model charges every document split over all CP ranks).

Recompute: WLB-LLM and Megatron-LM run one activation-recompute setting for the whole job, so by default
(recompute="global") every micro-batch recomputes the least number of layers with which the longest
sequence fits, and micro-batches are packed up to what fits with it; recompute="per-micro-batch" lets
each micro-batch take its own least k, as hetero-sched does (compare lists both, to separate what
heterogeneous groups gain from what adaptive recompute gains).
"""
from __future__ import annotations

import collections
import functools
import heapq

import numpy as np

from hetero_sched.latency import LatencyModel
from hetero_sched.milp.instance import Instance, build_instance
from hetero_sched.placement import NodePacker, ranks_from_nodes
from hetero_sched.plan import Plan, check_objective, objective_key
from hetero_sched.specs import Cluster


RECOMPUTE_SETTINGS = ("global", "per-micro-batch")


def wlb_llm_plan(lengths, cluster: Cluster, lat: LatencyModel, *, tp: int, cp: int,
                 objective: str = "step", recompute: str = "global") -> Plan:
    """The WLB-LLM plan for one homogeneous (tp, cp), placed; ValueError when a sequence does not fit."""
    _check(cluster, lat, objective, recompute)
    lat._check_config(tp, cp)
    inst = build_instance(lengths, lat, prune=False, only=(tp, cp))
    too_long = np.flatnonzero(inst.lengths > lat.max_tokens(tp, cp))
    if too_long.size:
        i = int(too_long[0])
        raise ValueError(f"TP{tp}xCP{cp} cannot hold sequence {i} ({int(inst.lengths[i])} tokens > "
                         f"max_tokens {lat.max_tokens(tp, cp)})")
    options = replica_options(inst, tp, cp)
    if not options:
        raise ValueError(f"TP{tp}xCP{cp} cannot be placed on {cluster.gpus} GPUs of {cluster.gpus_per_node} per node")
    plans = [plan_for_replicas(inst, tp, cp, reps, lat, recompute) for reps in options]
    return min(plans, key=lambda p: objective_key(p, objective))


def wlb_llm_best(lengths, cluster: Cluster, lat: LatencyModel, objective: str = "step",
                 recompute: str = "global") -> Plan:
    """The best placed homogeneous WLB-LLM plan over every (TP, CP) and both replica counts."""
    _check(cluster, lat, objective, recompute)
    inst = build_instance(lengths, lat, prune=False)
    return best_homogeneous_plan(inst, lat, objective, recompute)


def replica_options(inst: Instance, tp: int, cp: int) -> list[list[bool]]:
    """Replica lists (True = crosses nodes) worth evaluating for (tp, cp): every replica that can be placed,
    and the intra-node ones alone. Empty when a sequence fits neither variant."""
    fits = {cross: _column(inst, tp, cp, cross) is not None for cross in (False, True)}
    inside, across = replica_counts(tuple(inst.node_caps), tp, cp, fits[False], fits[True])
    reps, intra = [False] * inside + [True] * across, [False] * inside
    return [r for r in ([reps, intra] if intra and len(intra) < len(reps) else [reps]) if r]


@functools.lru_cache(maxsize=4096)
def replica_counts(caps: tuple, tp: int, cp: int, intra: bool, cross: bool) -> tuple[int, int]:
    """How many (tp, cp) replicas NodePacker places inside nodes, then across them, counted instead of
    packed one by one (1,024 TP1 replicas at 1,024 GPUs): every node takes ⌊cap/(tp·cp)⌋ intra-node
    replicas whatever the order, and a crossing replica takes any cp whole TP blocks that are left."""
    size, most = tp * cp, sum(caps) // (tp * cp)
    if intra and size > max(caps, default=0):
        intra = False
    nodes = collections.Counter(caps).items()  # full nodes and a partial one: two kinds at most
    inside = sum(k * (c // size) for c, k in nodes) if intra else 0
    blocks = sum(k * ((c % size if intra else c) // tp) for c, k in nodes)  # whole TP blocks left
    across = min(most - inside, blocks // cp) if cross else 0
    return inside, across


def _column(inst: Instance, tp: int, cp: int, cross: bool) -> int | None:
    """Instance column of (tp, cp, cross) when every sequence fits it, else None."""
    return _columns(inst).get((tp, cp, bool(cross)))


_LAST: list = [None, {}]  # the last instance asked about (held, so its id is not reused) and its columns


def _columns(inst: Instance) -> dict:
    """{(tp, cp, cross): column} of the configurations every sequence fits, computed once per instance."""
    if _LAST[0] is not inst:
        fits = np.isfinite(inst.cost).all(axis=0)
        _LAST[:] = [inst, {cfg: c for c, cfg in enumerate(inst.configs) if fits[c]}]
    return _LAST[1]


def earliest_finish(inst: Instance, tp: int, cp: int, reps: list[bool]) -> tuple[list[list[int]], float]:
    """Sequences by decreasing cost, each to the replica where it finishes first (one heap per variant:
    replicas of a variant are alike). Returns the sequences of each replica and the makespan."""
    cols = {cross: _column(inst, tp, cp, cross) for cross in set(reps)}
    heaps = {cross: [] for cross in cols}
    for r, cross in enumerate(reps):
        heaps[cross].append((float(inst.overhead[cols[cross]]), r))
    for h in heaps.values():
        heapq.heapify(h)
    key = inst.cost[:, cols[reps[0]]]
    out: list[list[int]] = [[] for _ in reps]
    order = np.lexsort((np.arange(inst.n), -key))
    costs = {x: inst.cost[order, cols[x]].tolist() for x in cols}  # Python floats: no array access per sequence
    variants = sorted(cols)
    for j, i in enumerate(order.tolist()):
        best = variants[0] if len(variants) == 1 else \
            min(variants, key=lambda x: (heaps[x][0][0] + costs[x][j], x))
        load, r = heapq.heappop(heaps[best])
        out[r].append(i)
        heapq.heappush(heaps[best], (load + costs[best][j], r))
    makespan = max(load for h in heaps.values() for load, r in h if out[r])
    return out, makespan


def plan_for_replicas(inst: Instance, tp: int, cp: int, reps: list[bool], lat: LatencyModel,
                      recompute: str = "global") -> Plan:
    """The WLB-LLM plan of (tp, cp) on these replicas, placed as the packer places them."""
    bins, _ = earliest_finish(inst, tp, cp, reps)
    return placed_homogeneous_plan("wlb-llm", inst, tp, cp, reps, bins, lat, recompute)


def global_recompute_layers(lat: LatencyModel, tp: int, cp: int, longest: int) -> int:
    """One setting for the whole job: the least k with which the longest sequence fits on (tp, cp)."""
    return lat.recompute_layers(longest, tp, cp)


def placed_homogeneous_plan(name: str, inst: Instance, tp: int, cp: int, reps: list[bool], bins: list,
                            lat: LatencyModel, recompute: str = "global", capacity: int | None = None) -> Plan:
    """Replicas of (tp, cp) placed as replica_options counted them (intra-node ones first), each running
    its bin of sequences; the baseline record says which config, how many replicas cross nodes and the
    recompute setting. capacity: the micro-batch size the system packs to (sets the global k)."""
    packer = NodePacker(inst.node_caps)
    shares = [packer.take(tp, cp, cross) for cross in reps]
    ranks = ranks_from_nodes([tp] * len(reps), shares, lat.cluster.gpus_per_node)
    k = None
    if recompute == "global":
        k = global_recompute_layers(lat, tp, cp, int(capacity or inst.lengths.max()))
    plan = Plan.build(inst.lengths, [(tp, cp, b) for b in bins], lat, ranks=ranks, recompute_layers=k)
    plan.baseline = {"name": name, "tp": tp, "cp": cp, "dp": len(reps), "cross_node_replicas": int(sum(reps)),
                     "makespan_ms": plan.makespan_ms, "step_ms": plan.step_ms, "sync_ms_upper": plan.sync_ms_upper,
                     "recompute": recompute, "recompute_layers": k}
    return plan


def homogeneous_pairs(inst: Instance) -> list[tuple[int, int]]:
    return sorted({(tp, cp) for tp, cp, _ in inst.configs})


def best_homogeneous_plan(inst: Instance, lat: LatencyModel, objective: str = "step",
                          recompute: str = "global") -> Plan:
    """Every (tp, cp) and replica count in order of a lower bound on the objective; stop when the bound
    cannot beat the best plan built (so the answer equals the exhaustive search's). The bound holds for
    either recompute setting (it is priced with each sequence's least k)."""
    def tiebreak(bound, tp, cp, reps, _):
        return bound, tp, cp, len(reps)  # among equal plans, the first in bound order
    return best_by_bound(inst, lat, objective,
                         lambda tp, cp, reps: plan_for_replicas(inst, tp, cp, reps, lat, recompute), tiebreak)


def best_by_bound(inst: Instance, lat: LatencyModel, objective: str, build, tiebreak) -> Plan:
    """The plan `build(tp, cp, reps)` best on the objective over every (tp, cp) and replica option, built
    in order of (lower bound, tiebreak) until the bound cannot beat the best plan (by more than 1e-12);
    among equal plans the least tiebreak(bound, tp, cp, reps, enumeration index) wins.

    The step bound (makespan bound + least exposed sync of its TP) rises with the makespan bound, so the
    candidates of one TP come in makespan-bound order and only the head of each TP's queue has its sync
    bound computed (a few dozen evaluations fewer at 1,024 GPUs, each a pass over the model's layers)."""
    queues: dict[int, list] = {}
    index = 0
    for tp, cp in homogeneous_pairs(inst):
        for reps in replica_options(inst, tp, cp):
            queues.setdefault(tp, []).append((_makespan_bound(inst, tp, cp, reps), index, cp, reps))
            index += 1
    if not queues:
        raise ValueError("no homogeneous (TP, CP) configuration holds every sequence of the batch")
    heap = []

    def push(tp: int) -> None:
        if queues[tp]:
            ms, i, cp, reps = queues[tp].pop()
            bound = ms if objective == "makespan" else ms + lat.sync_exposed_lower_ms(tp, ms)
            heapq.heappush(heap, (bound, tiebreak(bound, tp, cp, reps, i), i, tp, cp, reps))

    for tp, queue in queues.items():
        queue.sort(key=lambda q: (q[0], q[1]), reverse=True)  # popped from the end: least bound first
        push(tp)
    best, best_tie = None, None
    while heap:
        bound, tie, _, tp, cp, reps = heapq.heappop(heap)
        if best is not None and bound >= objective_key(best, objective)[0] * (1 - 1e-12):
            break
        plan = build(tp, cp, reps)
        if best is None or (objective_key(plan, objective), tie) < (objective_key(best, objective), best_tie):
            best, best_tie = plan, tie
        push(tp)
    return best


def _makespan_bound(inst: Instance, tp: int, cp: int, reps: list[bool]) -> float:
    """overhead + max(longest, total / replicas) on the cheaper variant."""
    cols = [_column(inst, tp, cp, cross) for cross in set(reps)]
    col = inst.cost[:, cols[0]] if len(cols) == 1 else np.minimum(inst.cost[:, cols[0]], inst.cost[:, cols[1]])
    return float(min(inst.overhead[c] for c in cols) + max(col.max(), col.sum() / len(reps)))


def _lower_bound(inst: Instance, lat: LatencyModel, tp: int, cp: int, reps: list[bool], objective: str) -> float:
    """overhead + max(longest, total / replicas) on the cheaper variant; plus the least exposed sync."""
    ms = _makespan_bound(inst, tp, cp, reps)
    if objective == "makespan":
        return ms
    return ms + lat.sync_exposed_lower_ms(tp, ms)


def _check(cluster: Cluster, lat: LatencyModel, objective: str, recompute: str = "global") -> None:
    if cluster != lat.cluster:
        raise ValueError(f"cluster {cluster} does not match the latency model's {lat.cluster}")
    check_objective(objective)
    if recompute not in RECOMPUTE_SETTINGS:
        raise ValueError(f"recompute={recompute!r}: choose one of {', '.join(RECOMPUTE_SETTINGS)}")
