"""Exhaustive optimum over set partitions × configurations: an oracle for tiny instances (≤ 7 sequences;
Bell(7) = 877 partitions), used by the tests and the fuzzer to check the solvers and their bounds."""
from __future__ import annotations

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


def brute_force_makespan(inst: Instance) -> float:
    """min over partitions of the batch into groups, and a configuration per group, of the makespan,
    subject to Σ gpus ≤ N. For a partition: the smallest T at which the cheapest-in-GPUs configuration
    finishing each block by T fits the cluster."""
    best = np.inf
    for part in set_partitions(list(range(inst.n))):
        loads = np.array([inst.overhead + inst.cost[block].sum(axis=0) for block in part])  # (B, C)
        for T in sorted(set(loads[np.isfinite(loads)].tolist())):
            if T >= best:
                break
            need = [inst.gpus[row <= T].min() if (row <= T).any() else np.inf for row in loads]
            if sum(need) <= inst.total_gpus:
                best = T
                break
    return best


