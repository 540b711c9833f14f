"""Planted optima: instances whose optimum is known by construction, solved by every backend."""
import numpy as np
import pytest

from hetero_sched.milp.bounds import area_bound
from hetero_sched.milp.heuristic import heuristic_solution, makespan
from hetero_sched.milp.instance import Instance
from hetero_sched.milp.solve import run_mip

BACKENDS = ["cpsat", "highs", "cbc"]


def planted(seed: int) -> tuple[Instance, float]:
    """Groups of random sizes fill N GPUs exactly; each group's items sum to T* on its own configuration,
    which is also each item's most GPU-efficient one; no overheads. Then the area bound equals T*, so the
    planted assignment is optimal and T* is the optimum."""
    rng = np.random.default_rng(seed)
    sizes = [1, 2, 3, 4]
    N, T = 0, 100.0
    groups = []
    while N < 12:
        g = int(rng.choice(sizes))
        groups.append(g)
        N += g
    cost_rows = []
    for g in groups:
        k = int(rng.integers(1, 4))
        split = rng.dirichlet(np.ones(k)) * T
        for a in split:
            own = sizes.index(g)
            row = np.array([a * g / s * (1 + rng.uniform(0.05, 1.0)) for s in sizes])
            row[own] = a
            cost_rows.append(row)
    cost = np.array(cost_rows)
    inst = Instance(lengths=np.arange(1, len(cost) + 1), configs=[(1, s) for s in sizes], gpus=np.array(sizes),
                    overhead=np.zeros(len(sizes)), cost=cost, total_gpus=N)
    assert area_bound(inst) == pytest.approx(T)
    return inst, T


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_find_the_planted_optimum(seed, backend):
    inst, optimum = planted(seed)
    incumbent = heuristic_solution(inst, optimum * 0.5, optimum * 10, deadline=1e18, restarts=False)
    assert incumbent is not None and makespan(inst, incumbent) >= optimum * (1 - 1e-9)
    sol, bound, status = run_mip(inst, backend, (incumbent, None), 0.0, 20.0, 1, 0, 1e-9, None)
    found = makespan(inst, sol[0] if sol is not None else incumbent)
    assert found == pytest.approx(optimum, rel=1e-6), status
    assert bound <= optimum * (1 + 1e-9)
