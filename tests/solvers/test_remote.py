"""The pattern LP searched in a worker process (milp/remote.py): what it reports is what the same search
proves here, it keeps its deadline, it is stopped on request, a worker that fails costs nothing but its
bound, and solve starts one only with a core to spare. Also Farley's bound and the salvage of a trial
cut short (milp/patterns.py), which the worker relies on."""
import time

import numpy as np
import pytest
from conftest import random_batch

import hetero_sched as hs
from hetero_sched.milp import patterns, remote
from hetero_sched.milp import solve as solve_module
from hetero_sched.milp.bounds import overhead_area_bound
from hetero_sched.milp.heuristic import heuristic_solution, makespan
from hetero_sched.milp.instance import build_instance

SMALL = hs.ModelSpec(name="small-1b", layers=24, hidden=2048, heads=16, kv_heads=16, ffn=5632, vocab=32000)


def _instance(seed: int = 1, gpus: int = 16, n: int = 24):
    rng = np.random.default_rng(seed)
    lat = hs.latency_model(SMALL, hs.Cluster(gpus=gpus))
    inst = build_instance(random_batch(rng, n, 256, 16000), lat)
    lower = overhead_area_bound(inst, 1e9)
    sol = heuristic_solution(inst, lower, 1e9, time.monotonic() + 1, restarts=False)
    return inst, lower, makespan(inst, sol), sol


def _wait(worker: remote.RemoteBound, seconds: float) -> float:
    """Seconds until the worker says it is done (inf if it does not within `seconds`)."""
    started = time.monotonic()
    while not worker.exhausted:
        if time.monotonic() - started > seconds:
            return np.inf
        time.sleep(0.02)
    return time.monotonic() - started


def test_the_worker_proves_what_the_same_search_proves_here():
    """Run to the end (no deadline in sight), both searches stop within rel_tol of the LP's threshold: the
    bound that comes back through the pipe is the local one, to that tolerance."""
    inst, lower, upper, _ = _instance()
    here = patterns.PatternBound(inst, lower, upper, (), threads=1, first_step=None)
    while not here.exhausted:
        here.improve(time.monotonic() + 60)
    worker = remote.RemoteBound(inst, lower, upper, seconds=60)
    assert _wait(worker, 60) < 60
    assert worker.peak_rss_bytes > 10 * 2**20  # its own peak, reported (it imported numpy and HiGHS)
    there = worker.close()
    assert remote.worker_peak_rss_bytes() >= worker.peak_rss_bytes
    assert here.lo > lower  # the LP proves something here, so the comparison means something
    assert there == pytest.approx(here.lo, abs=2 * here.rel_tol * upper)


def test_the_worker_keeps_its_deadline_and_close_stops_it():
    """A 64-GPU x 256 search needs far more than 1 s: the worker reports and exits on its own within the
    second (plus its start-up), and close() on a fresh worker returns at once with the lower bound."""
    lat = hs.latency_model(hs.ModelSpec.preset("llama3-8b"), hs.Cluster(gpus=64))
    from hetero_sched.workload import synthetic
    inst = build_instance(synthetic("lognormal:n=256,context=131072,seed=0"), lat)
    lower = overhead_area_bound(inst, 1e9)
    worker = remote.RemoteBound(inst, lower, lower * 1.01, seconds=1.0)
    assert _wait(worker, 1.0 + 30 * remote.STARTUP_S) < np.inf  # start-up is slower on a busy machine
    assert lower <= worker.close() < lower * 1.01
    started = time.monotonic()
    fresh = remote.RemoteBound(inst, lower, lower * 1.01, seconds=60)
    assert fresh.close() == lower
    assert time.monotonic() - started < 10
    assert fresh._proc.poll() is not None


def test_a_worker_that_fails_leaves_the_lower_bound(monkeypatch):
    monkeypatch.setattr(remote, "_BOOT", "import sys; sys.exit(3)")
    inst, lower, upper, _ = _instance()
    worker = remote.RemoteBound(inst, lower, upper, seconds=30)
    assert _wait(worker, 30) < 30
    assert worker.failed and not worker.done
    assert worker.close() == lower


def test_solve_starts_a_worker_only_with_a_core_to_spare(monkeypatch):
    """Step objective, slot MIP off (so the pattern LP bounds each family): with threads=2 the pure family's
    LP runs in a worker, with threads=1 it does not; every bound stays below the MIP's proven optimum, also
    when the worker fails."""
    rng = np.random.default_rng(4)
    lat = hs.latency_model(SMALL, hs.Cluster(gpus=16), overlap_param_gather=False)  # the MIP proves the step
    lengths = random_batch(rng, 10, 256, 16000)
    exact = hs.solve(lengths, lat.cluster, lat, time_limit_s=30, objective="step")
    assert exact.solver.status == "optimal"
    started = []

    class Recorded(remote.RemoteBound):
        def __init__(self, *args, **kwargs):
            started.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(solve_module, "RemoteBound", Recorded)
    monkeypatch.setattr(solve_module, "MAX_MIP_VARIABLES", 0)
    for threads, workers, boot in ((1, 0, remote._BOOT), (2, 1, remote._BOOT), (2, 1, "import sys; sys.exit(3)")):
        monkeypatch.setattr(remote, "_BOOT", boot)  # the last: a worker that fails (its family is searched here)
        started.clear()
        plan = hs.solve(lengths, lat.cluster, lat, time_limit_s=4, objective="step", threads=threads)
        assert len(started) == workers
        assert plan.solver.step_bound_ms <= exact.step_ms * (1 + 1e-9)
        assert plan.solver.wall_s <= 4 * 1.25
        assert plan.validate() == []


@pytest.mark.parametrize("seed", range(6))
def test_farley_bounds_the_gpus_of_every_plan_that_fits(seed):
    """For any duals π ≥ 0, a plan of makespan ≤ T covers every sequence with its groups, so its GPUs are
    ≥ π·m/θ(T) (Farley); the heuristic's plan, at its own makespan, with random duals."""
    inst, _, upper, sol = _instance(seed, n=16)
    lp = patterns.PatternLP(inst)
    rng = np.random.default_rng(seed)
    used = sum(int(inst.gpus[c]) for c, _ in sol)
    for _ in range(5):
        pi = rng.uniform(0, 1, lp.J) * rng.integers(0, 2, lp.J)
        if pi.any():
            assert lp.farley(pi, upper) <= used * (1 + 1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_a_salvaged_trial_never_passes_what_the_lp_allows(seed):
    """Trials cut short after a few milliseconds, again and again: the salvaged bounds only rise and stay
    below the level a search with all the time it needs finds the LP to allow."""
    inst, lower, upper, _ = _instance(seed)
    full = patterns.PatternBound(inst, lower, upper, (), threads=1, first_step=None, rel_tol=1e-6)
    while not full.exhausted:
        full.improve(time.monotonic() + 60)
    sliced = patterns.PatternBound(inst, lower, upper, (), threads=1, first_step=None)
    seen = [lower]
    for _ in range(60):
        seen.append(sliced.improve(time.monotonic() + 0.005))
    assert seen == sorted(seen)
    assert seen[-1] <= full.hi * (1 + 1e-9)
