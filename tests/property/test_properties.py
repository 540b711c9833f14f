"""Hypothesis properties over random batches and clusters (small instances, CP-SAT and a share on MIPs)."""
import json

import numpy as np
import pytest
from hetero_sched.baselines.wlb_llm import wlb_llm_best
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hetero_sched as hs
from hetero_sched.milp.exhaustive import brute_force_makespan
from hetero_sched.milp.instance import build_instance

SMALL = hs.ModelSpec(name="small-1b", layers=24, hidden=2048, heads=16, kv_heads=16, ffn=5632, vocab=32000)
_LAT = {}


def lat_for(gpus: int, gpn: int):
    key = (gpus, gpn)
    if key not in _LAT:
        _LAT[key] = hs.latency_model(SMALL, hs.Cluster(gpus=gpus, gpus_per_node=gpn))
    return _LAT[key]


batches = st.lists(st.integers(min_value=1, max_value=200_000), min_size=1, max_size=12)
clusters = st.tuples(st.integers(min_value=1, max_value=24), st.sampled_from([2, 4, 8]))
PROFILE = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROFILE
@given(lengths=batches, cluster=clusters, backend=st.sampled_from(["cpsat", "cpsat", "highs", "cbc", "none"]),
       objective=st.sampled_from(["step", "makespan"]))
def test_every_plan_is_valid_never_worse_than_wlb_and_honest(lengths, cluster, backend, objective):
    lat = lat_for(*cluster)
    try:
        plan = hs.solve(lengths, lat.cluster, lat, backend=backend, time_limit_s=2, threads=1, objective=objective)
    except ValueError as exc:  # only a sequence no configuration can hold may be refused
        assert "sequence" in str(exc) and "fits" in str(exc)
        cap = max(lat.max_tokens(tp, cp) for tp, cp in lat.cluster.configs(SMALL))
        assert max(lengths) > cap
        return
    assert plan.validate() == []
    assert hs.Plan.from_json(plan.to_json()).to_json() == plan.to_json()
    wlb = wlb_llm_best(lengths, lat.cluster, lat, objective=objective)
    assert getattr(plan, f"{objective}_ms") <= getattr(wlb, f"{objective}_ms")  # exactly, on the objective
    s = plan.solver
    assert s.objective == objective and s.objective_ms == getattr(plan, f"{objective}_ms")
    assert s.bound_ms <= s.objective_ms and 0 <= s.gap <= 1
    assert s.makespan_bound_ms <= plan.makespan_ms and s.step_bound_ms <= plan.step_ms
    assert plan.sync_ms <= plan.sync_ms_upper + 1e-9
    assert (s.status == "optimal") == (s.gap <= 1e-6)


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(min_value=256, max_value=60_000), min_size=1, max_size=5),
       gpus=st.integers(min_value=1, max_value=12), gpn=st.sampled_from([2, 4, 8]))
def test_bound_never_exceeds_the_exhaustive_optimum(lengths, gpus, gpn):
    lat = lat_for(gpus, gpn)
    cap = max(lat.max_tokens(tp, cp) for tp, cp in lat.cluster.configs(SMALL))
    lengths = [min(x, cap) for x in lengths]
    plan = hs.solve(lengths, lat.cluster, lat, backend="cpsat", time_limit_s=5, threads=1, objective="makespan")
    optimum = brute_force_makespan(build_instance(lengths, lat, prune=False, all_cps=True))
    assert plan.solver.bound_ms <= optimum * (1 + 1e-9)
    assert plan.makespan_ms >= optimum * (1 - 1e-9)
    if plan.solver.status == "optimal":
        assert plan.makespan_ms <= optimum * (1 + 1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_same_seed_and_one_thread_give_identical_plans(seed):
    rng = np.random.default_rng(seed)
    lengths = [int(x) for x in rng.integers(512, 40_000, size=20)]
    lat = lat_for(16, 8)
    a = hs.solve(lengths, lat.cluster, lat, threads=1, seed=seed, time_limit_s=30, deterministic_limit=1.0)
    b = hs.solve(lengths, lat.cluster, lat, threads=1, seed=seed, time_limit_s=30, deterministic_limit=1.0)
    strip = lambda p: {k: v for k, v in json.loads(p.to_json())["solver"].items() if k != "wall_s"}
    assert strip(a) == strip(b)
    assert [g for g in json.loads(a.to_json())["groups"]] == [g for g in json.loads(b.to_json())["groups"]]
