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
from hetero_sched.latency.base import config_name
from hetero_sched.milp.bounds import distinct_lengths
from hetero_sched.milp.instance import Instance, build_instance
from hetero_sched.placement import NodePacker, ranks_from_nodes
from hetero_sched.plan import Plan, check_objective, objective_key
from hetero_sched.specs import Cluster


RECOMPUTE_SETTINGS = ("global", "per-micro-batch")


def wlb_llm_plan(lengths, cluster: Cluster, lat: LatencyModel, *, tp: int, cp: int, pp: int = 1,
                 objective: str = "step", recompute: str = "global") -> Plan:
    """The WLB-LLM plan for one homogeneous (tp, cp, pp), placed; ValueError when a sequence does not fit."""
    _check(cluster, lat, objective, recompute)
    lat._check_config(tp, cp, pp)
    name = config_name(tp, cp, pp)
    if (tp, pp) not in lat.fitting_layouts():
        raise ValueError(f"{lat.model.name} does not fit on {name}: {lat.memory_gb(1, tp, cp, None, pp):.1f} GB "
                         f"per GPU > {lat.usable_bytes / 1e9:.1f} GB usable")
    inst = build_instance(lengths, lat, prune=False, only=(tp, cp, pp))
    too_long = np.flatnonzero(inst.lengths > lat.max_tokens(tp, cp, pp))
    if too_long.size:
        i = int(too_long[0])
        raise ValueError(f"{name} cannot hold sequence {i} ({int(inst.lengths[i])} tokens > "
                         f"max_tokens {lat.max_tokens(tp, cp, pp)})")
    options = replica_options(inst, tp, cp, pp)
    if not options:
        raise ValueError(f"{name} cannot be placed on {cluster.gpus} GPUs of {cluster.gpus_per_node} per node")
    plans = [plan_for_replicas(inst, tp, cp, reps, lat, recompute, pp) for reps in options]
    return min(plans, key=lambda p: objective_key(p, objective))


def wlb_llm_best(lengths, cluster: Cluster, lat: LatencyModel, objective: str = "step",
                 recompute: str = "global", pp_degrees=None) -> Plan:
    """The best placed homogeneous WLB-LLM plan over every (TP, CP, PP) (pp_degrees: those searched,
    default every one the step model allows) and both replica counts."""
    _check(cluster, lat, objective, recompute)
    inst = build_instance(lengths, lat, prune=False, pp_degrees=pp_degrees)
    return best_homogeneous_plan(inst, lat, objective, recompute)


def replica_options(inst: Instance, tp: int, cp: int, pp: int = 1) -> list[list[bool]]:
    """Replica lists (True = crosses nodes) worth evaluating for (tp, cp, pp): every replica that can be
    placed, and the intra-node ones alone. Empty when a sequence fits neither variant."""
    fits = {cross: _column(inst, tp, cp, cross, pp) is not None for cross in (False, True)}
    inside, across = replica_counts(tuple(inst.node_caps), tp, cp * pp, fits[False], fits[True])
    reps, intra = [False] * inside + [True] * across, [False] * inside
    return [r for r in ([reps, intra] if intra and len(intra) < len(reps) else [reps]) if r]


@functools.lru_cache(maxsize=4096)
def replica_counts(caps: tuple, tp: int, cp: int, intra: bool, cross: bool) -> tuple[int, int]:
    """How many (tp, cp) replicas (cp: TP blocks, cp·pp with stages) NodePacker places inside nodes, then
    across them, counted instead of
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


def _column(inst: Instance, tp: int, cp: int, cross: bool, pp: int = 1) -> int | None:
    """Instance column of (tp, cp, cross, pp) when every sequence fits it, else None."""
    return _columns(inst).get((tp, cp, bool(cross), pp))


_LAST: list = [None, {}]  # the last instance asked about (held, so its id is not reused) and its columns


def _columns(inst: Instance) -> dict:
    """{(tp, cp, cross, pp): column} of the configurations every sequence fits, computed once per instance."""
    if _LAST[0] is not inst:
        fits = np.isfinite(inst.cost).all(axis=0)
        _LAST[:] = [inst, {cfg: c for c, cfg in enumerate(inst.configs) if fits[c]}]
    return _LAST[1]


def earliest_finish(inst: Instance, tp: int, cp: int, reps: list[bool],
                    pp: int = 1) -> tuple[list[list[int]], float]:
    """Sequences by decreasing cost, each to the replica where it finishes first (one heap per variant:
    replicas of a variant are alike). Returns the sequences of each replica and the makespan (on the
    instance's costs: with stages, the additive lower bound the plan's 1F1B simulation refines)."""
    cols = {cross: _column(inst, tp, cp, cross, pp) for cross in set(reps)}
    heaps = {cross: [] for cross in cols}
    for r, cross in enumerate(reps):
        heaps[cross].append((float(inst.overhead[cols[cross]]), r))
    for h in heaps.values():
        heapq.heapify(h)
    key = inst.exact_cost(cols[reps[0]])  # true costs even where the instance's are estimates (grid pricing)
    out: list[list[int]] = [[] for _ in reps]
    order = np.lexsort((np.arange(inst.n), -key))
    costs = {x: inst.exact_cost(cols[x])[order].tolist() for x in cols}  # Python floats: no array access per sequence
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
                      recompute: str = "global", pp: int = 1) -> Plan:
    """The WLB-LLM plan of (tp, cp, pp) on these replicas, placed as the packer places them. With stages,
    each replica's micro-batches are balanced in cost (Plan.build's packing of pipelined groups), which
    is WLB-LLM's variable-length packing across micro-batches to shrink pipeline bubbles."""
    bins, _ = earliest_finish(inst, tp, cp, reps, pp)
    return placed_homogeneous_plan("wlb-llm", inst, tp, cp, reps, bins, lat, recompute, pp=pp)


def global_recompute_layers(lat: LatencyModel, tp: int, cp: int, longest: int, pp: int = 1) -> int:
    """One setting for the whole job: the least k with which the longest sequence fits on (tp, cp, pp)."""
    return lat.recompute_layers(longest, tp, cp, pp)


def placed_homogeneous_plan(name: str, inst: Instance, tp: int, cp: int, reps: list[bool], bins: list,
                            lat: LatencyModel, recompute: str = "global", capacity: int | None = None,
                            pp: int = 1) -> Plan:
    """Replicas of (tp, cp, pp) placed as replica_options counted them (intra-node ones first), each
    running its bin of sequences; the baseline record says which config, how many replicas cross nodes
    and the recompute setting. capacity: the micro-batch size the system packs to (sets the global k)."""
    packer = NodePacker(inst.node_caps)
    shares = [packer.take(tp, cp * pp, cross) for cross in reps]
    ranks = ranks_from_nodes([tp] * len(reps), shares, lat.cluster.gpus_per_node)
    k = None
    if recompute == "global":
        k = global_recompute_layers(lat, tp, cp, int(capacity or inst.lengths.max()), pp)
    plan = Plan.build(inst.lengths, [(tp, cp, pp, b) for b in bins], lat, ranks=ranks, recompute_layers=k)
    plan.baseline = {"name": name, "tp": tp, "cp": cp, "pp": pp, "dp": len(reps),
                     "cross_node_replicas": int(sum(reps)), "makespan_ms": plan.makespan_ms,
                     "step_ms": plan.step_ms, "sync_ms_upper": plan.sync_ms_upper,
                     "recompute": recompute, "recompute_layers": k}
    return plan


def homogeneous_configs(inst: Instance) -> list[tuple[int, int, int]]:
    """Every (tp, cp, pp) of the instance."""
    return sorted({(tp, cp, pp) for tp, cp, _, pp in inst.configs})


def best_homogeneous_plan(inst: Instance, lat: LatencyModel, objective: str = "step",
                          recompute: str = "global") -> Plan:
    """Every (tp, cp) and replica count in order of a lower bound on the objective; stop when the bound
    cannot beat the best plan built (so the answer equals the exhaustive search's). The bound holds for
    either recompute setting (it is priced with each sequence's least k)."""
    def tiebreak(bound, cfg, reps, _):
        return bound, cfg[0], cfg[2], cfg[1], len(reps)  # among equal plans, the first in bound order
    return best_by_bound(inst, lat, objective,
                         lambda cfg, reps: plan_for_replicas(inst, cfg[0], cfg[1], reps, lat, recompute, cfg[2]),
                         tiebreak)


def best_by_bound(inst: Instance, lat: LatencyModel, objective: str, build, tiebreak) -> Plan:
    """The plan `build((tp, cp, pp), reps)` best on the objective over every (tp, cp, pp) and replica
    option, built in order of (lower bound, tiebreak) until the bound cannot beat the best plan (by more
    than 1e-12); among equal plans the least tiebreak(bound, (tp, cp, pp), reps, enumeration index) wins.

    The step bound (makespan bound + least exposed sync of its layout tp·pp) rises with the makespan
    bound, so the candidates of one layout come in makespan-bound order and only the head of each
    layout's queue has its sync bound computed (a few dozen evaluations fewer at 1,024 GPUs, each a pass
    over the model's layers). With stages the makespan bound is on the instance's additive lower bound
    of the pipeline, so it bounds the simulated plan too."""
    queues: dict[int, list] = {}
    index = 0
    for cfg in homogeneous_configs(inst):
        for reps in replica_options(inst, *cfg):
            queues.setdefault(cfg[0] * cfg[2], []).append((_makespan_bound(inst, cfg, reps), index, cfg, reps))
            index += 1
    if not queues:
        raise ValueError("no homogeneous (TP, CP, PP) configuration holds every sequence of the batch")
    heap = []

    def push(unit: int) -> None:
        if queues[unit]:
            ms, i, cfg, reps = queues[unit].pop()
            bound = ms if objective == "makespan" else ms + lat.sync_exposed_lower_ms(unit, ms)
            heapq.heappush(heap, (bound, tiebreak(bound, cfg, reps, i), i, unit, cfg, reps))

    for unit, queue in queues.items():
        queue.sort(key=lambda q: (q[0], q[1]), reverse=True)  # popped from the end: least bound first
        push(unit)
    best, best_tie = None, None
    while heap:
        bound, tie, _, unit, cfg, reps = heapq.heappop(heap)
        if best is not None and bound >= objective_key(best, objective)[0] * (1 - 1e-12):
            break
        plan = build(cfg, reps)
        if best is None or (objective_key(plan, objective), tie) < (objective_key(best, objective), best_tie):
            best, best_tie = plan, tie
        push(unit)
    return best


def _makespan_bound(inst: Instance, cfg: tuple[int, int, int], reps: list[bool]) -> float:
    """overhead + max(longest, total / replicas) on the cheaper variant."""
    tp, cp, pp = cfg
    cols = [_column(inst, tp, cp, cross, pp) for cross in set(reps)]
    if inst.floor is None:
        col = inst.cost[:, cols[0]] if len(cols) == 1 else np.minimum(inst.cost[:, cols[0]], inst.cost[:, cols[1]])
        longest, total = col.max(), col.sum()
    else:  # estimated costs (grid pricing): on the floors of the distinct lengths, each times its count
        first, counts = distinct_lengths(inst.lengths)
        rows = inst.distinct_lower_rows(first)
        col = rows[:, cols[0]] if len(cols) == 1 else np.minimum(rows[:, cols[0]], rows[:, cols[1]])
        longest, total = col.max(), counts @ col
    return float(min(inst.overhead[c] for c in cols) + max(longest, total / len(reps)))


def _lower_bound(inst: Instance, lat: LatencyModel, cfg: tuple[int, int, int], reps: list[bool],
                 objective: str) -> float:
    """overhead + max(longest, total / replicas) on the cheaper variant; plus the least exposed sync."""
    ms = _makespan_bound(inst, cfg, reps)
    if objective == "makespan":
        return ms
    return ms + lat.sync_exposed_lower_ms(cfg[0] * cfg[2], ms)


def _check(cluster: Cluster, lat: LatencyModel, objective: str, recompute: str = "global") -> None:
    if cluster != lat.cluster:
        raise ValueError(f"cluster {cluster} does not match the latency model's {lat.cluster}")
    check_objective(objective)
    if recompute not in RECOMPUTE_SETTINGS:
        raise ValueError(f"recompute={recompute!r}: choose one of {', '.join(RECOMPUTE_SETTINGS)}")
