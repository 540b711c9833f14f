"""Valid lower bounds on the makespan (true costs, ms)."""
from __future__ import annotations

import numpy as np

from .instance import Instance


def longest_sequence_bound(inst: Instance) -> float:
    """max_i min_c (overhead_c + cost_ic): sequence i's group runs at least that long."""
    return float(np.min(inst.overhead[None, :] + inst.cost, axis=1).max())


def area_bound(inst: Instance) -> float:
    """GPU-time: Σ_c gpus_c·load_c ≤ N·T and every load ≥ its sequences' costs, one overhead at least:
    T ≥ (Σ_i min_c gpus_c·cost_ic + min_c gpus_c·overhead_c) / N."""
    work = np.min(inst.gpus[None, :] * inst.cost, axis=1).sum()
    return float((work + np.min(inst.gpus * inst.overhead)) / inst.total_gpus)


def simple_bound(inst: Instance) -> float:
    return max(longest_sequence_bound(inst), area_bound(inst))
