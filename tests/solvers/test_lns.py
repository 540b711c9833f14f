"""LNS rebalancing and configuration swaps (milp/lns.py), the pattern LP's mix and resumable search, and the
step bound by layout family (milp/layouts.py): exact where they claim it, never invalid."""
import itertools
import time

import numpy as np
import pytest
from conftest import random_batch

import hetero_sched as hs
from hetero_sched.milp import lns, patterns
from hetero_sched.milp import solve as solve_module
from hetero_sched.milp.bounds import overhead_area_bound
from hetero_sched.milp.exhaustive import brute_force_makespan
from hetero_sched.milp.heuristic import heuristic_solution, local_search, makespan
from hetero_sched.milp.instance import Instance, build_instance

SMALL = hs.ModelSpec(name="small-1b", layers=24, hidden=2048, heads=16, kv_heads=16, ffn=5632, vocab=32000)


def _three_groups(seed: int, n: int = 7) -> Instance:
    """Three single-GPU configurations with unrelated costs (ms) and overheads."""
    rng = np.random.default_rng(seed)
    return Instance(lengths=np.arange(1, n + 1), configs=[(1, 1, False), (1, 2, False), (1, 3, False)],
                    gpus=np.array([1, 1, 1]), overhead=rng.uniform(0, 5, size=3), cost=rng.uniform(1, 100, (n, 3)),
                    total_gpus=3)


def _brute_force(inst: Instance) -> float:
    best = np.inf
    for where in itertools.product(range(3), repeat=inst.n):
        where = np.array(where)
        best = min(best, max(inst.overhead[g] + inst.cost[where == g, g].sum() for g in range(3)))
    return best


@pytest.mark.parametrize("seed", range(8))
def test_rebalance_is_exact_when_the_neighbourhood_is_every_group(seed, monkeypatch):
    """With three groups, each neighbourhood (the slowest + two) is the whole plan: CP-SAT's reassignment
    is the brute-force optimum (to the microsecond rounding), from any start, configurations kept."""
    monkeypatch.setattr(lns, "MAX_STALE", 2)
    inst = _three_groups(seed)
    start = [(0, np.arange(inst.n)), (1, np.array([], dtype=int)), (2, np.array([], dtype=int))]
    out = lns.rebalance(inst, start, time.monotonic() + 10, seed=seed)
    assert [c for c, _ in out] == [0, 1, 2]
    assert sorted(np.concatenate([items for _, items in out]).tolist()) == list(range(inst.n))
    assert makespan(inst, out) == pytest.approx(_brute_force(inst), abs=inst.n * 1e-3)


def test_rebalance_goes_past_single_moves_and_swaps(llama3):
    """The scale benchmark's 64 GPUs x 256 sequences: the heuristic's plan is a local optimum of
    local_search (single moves and swaps), yet rebalancing lowers it, keeping every group's configuration."""
    lat = hs.latency_model(llama3, hs.Cluster(gpus=64))
    from hetero_sched.workload import synthetic
    inst = build_instance(synthetic("lognormal:n=256,context=131072,seed=0"), lat)
    sol = heuristic_solution(inst, overhead_area_bound(inst, 1e9), 1e9, time.monotonic() + 1, restarts=False)
    stuck = local_search(inst, sol, time.monotonic() + 5)
    for seed in range(20):  # a few seconds per try: CP-SAT finds less in its 0.1 s when the cores are busy
        out = lns.rebalance(inst, stuck, time.monotonic() + 4, seed=seed)
        if makespan(inst, out) < makespan(inst, stuck) - 0.1:
            break
    assert [c for c, _ in out] == [c for c, _ in stuck]
    assert sorted(np.concatenate([items for _, items in out]).tolist()) == list(range(inst.n))
    assert makespan(inst, out) < makespan(inst, stuck) - 0.1


def test_swap_towards_follows_the_mix_within_a_gpu_count():
    """Two 2-GPU configurations A, B and a 1-GPU C; the plan runs two groups of A, the LP mix says one A and
    one B: one group becomes B; C is never a candidate (other GPU count); a group whose sequence cannot run
    on B keeps A."""
    cost = np.array([[5.0, 4.0, 9.0], [5.0, 4.0, 9.0], [5.0, np.inf, 9.0]])
    inst = Instance(lengths=np.array([1, 2, 3]), configs=[(1, 2, False), (2, 1, False), (1, 1, False)],
                    gpus=np.array([2, 2, 1]), overhead=np.zeros(3), cost=cost, total_gpus=5)
    sol = [(0, np.array([2])), (0, np.array([0, 1]))]
    swapped = lns.swap_towards(inst, sol, np.array([1.0, 1.0, 0.0]))
    assert [c for c, _ in swapped] == [0, 1]  # the first group's sequence 2 does not fit B
    assert lns.swap_towards(inst, sol, np.array([2.0, 0.0, 5.0])) is None


def _lp_instance(seed=5, gpus=12, gpn=4):
    rng = np.random.default_rng(seed)
    lat = hs.latency_model(SMALL, hs.Cluster(gpus=gpus, gpus_per_node=gpn))
    lengths = random_batch(rng, 6, 256, 6000)
    return build_instance(lengths, lat), build_instance(lengths, lat, prune=False, all_cps=True)


def test_config_mix_counts_the_lp_solution():
    inst, _ = _lp_instance()
    lp = patterns.PatternLP(inst)
    lower = overhead_area_bound(inst, 1e9)
    lp.infeasible(lower * 1.05, time.monotonic() + 10)
    value = lp.h.getInfo().objective_function_value
    assert float(lp.config_mix() @ inst.gpus) == pytest.approx(value, rel=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_an_interrupted_trial_resumes_to_the_same_verdict(seed):
    """infeasible(T) cut short by a deadline returns None and keeps its state; resumed, it reaches the verdict
    a fresh LP reaches."""
    inst, full = _lp_instance(seed)
    optimum = brute_force_makespan(full)
    for T in (optimum * 0.99, optimum * 1.02):
        fresh = patterns.PatternLP(inst).infeasible(T, time.monotonic() + 20)
        lp = patterns.PatternLP(inst)
        first = lp.infeasible(T, time.monotonic())  # no time: only a T no sequence fits is decided at once
        if first is None:
            assert lp.paused[0] == T
            first = lp.infeasible(T, time.monotonic() + 20)
        assert first == fresh
        assert not (fresh and T >= optimum)  # never proves a makespan a plan reaches


@pytest.mark.parametrize("seed", range(4))
def test_a_search_in_slices_stays_below_the_optimum(seed):
    """PatternBound.improve called in short slices, with a better plan given midway (tighten): the bound
    only rises and never passes the exhaustive optimum."""
    inst, full = _lp_instance(seed, gpus=11, gpn=8)
    optimum = brute_force_makespan(full)
    lower = overhead_area_bound(inst, optimum * 1.1)
    search = patterns.PatternBound(inst, lower, optimum * 1.1)
    seen = [lower]
    for k in range(40):
        if k == 5:
            search.tighten(optimum * 1.01)
        seen.append(search.improve(time.monotonic() + 0.02))
    assert seen == sorted(seen) and seen[-1] <= optimum * (1 + 1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_step_bound_by_family_never_passes_the_optimum(seed, monkeypatch):
    """With the slot MIP off, the step bound comes from the layout families (pure and mixed, each with its
    least sync, raised by the pattern LP with the time left): it stays ≤ the step of the plan the MIP
    proves optimal, and the plan found validates."""
    rng = np.random.default_rng(seed)
    lat = hs.latency_model(SMALL, hs.Cluster(gpus=16), overlap_param_gather=False)  # where the MIP proves the step
    lengths = random_batch(rng, 8, 256, 16000)
    exact = hs.solve(lengths, lat.cluster, lat, time_limit_s=30, objective="step")
    fastest = hs.solve(lengths, lat.cluster, lat, time_limit_s=30, objective="makespan")
    assert exact.solver.status == fastest.solver.status == "optimal"
    monkeypatch.setattr(solve_module, "MAX_MIP_VARIABLES", 0)
    plan = hs.solve(lengths, lat.cluster, lat, time_limit_s=4, objective="step")
    assert plan.solver.step_bound_ms <= exact.step_ms * (1 + 1e-9)
    assert plan.solver.makespan_bound_ms <= fastest.makespan_ms * (1 + 1e-9)
    assert plan.validate() == []


def test_ctrl_c_still_raises_after_lns(tmp_path):
    """CP-SAT's own SIGINT handler (on by default) leaves SIGINT at its default action once Solve returns, so
    a later Ctrl-C killed the planner instead of raising KeyboardInterrupt (the CLI's exit 130 and its
    one line never ran). After LNS's CP-SAT calls, SIGINT must still raise KeyboardInterrupt.
    The child installs Python's handler itself, as the CLI does: started with SIGINT ignored (nohup, a
    background job of a non-interactive shell, some CI runners) Python installs none."""
    import subprocess
    import sys
    script = tmp_path / "sigint.py"
    script.write_text(
        "import os, signal, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "import numpy as np\n"
        "from hetero_sched.milp import lns\n"
        "from hetero_sched.milp.instance import Instance\n"
        "inst = Instance(lengths=np.arange(1, 6), configs=[(1, 1, False), (1, 2, False), (1, 3, False)],\n"
        "                gpus=np.array([1, 1, 1]), overhead=np.zeros(3), cost=np.ones((5, 3)), total_gpus=3)\n"
        "start = [(0, np.arange(5)), (1, np.array([], dtype=int)), (2, np.array([], dtype=int))]\n"
        "lns.rebalance(inst, start, time.monotonic() + 1)\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(30)\n"  # generous: the signal is handled at once, unless it was lost
        "except KeyboardInterrupt:\n"
        "    print('KeyboardInterrupt')\n")
    out = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "KeyboardInterrupt", (out.returncode, out.stderr[-300:])
