"""The step bound from the group count (milp.groups, LatencyModel.sync_exposed_lower_grouped): the bucketings
listed are every bucketing a group count gives, no plan holds fewer groups than least_groups allows at its
makespan, no plan exposes less sync than its group count's buckets allow, and no plan of a family takes
less over the step than the family's grouped bound. Plans of hundreds of small groups on 512 GPUs, where
the bucket size (1M parameters a group) passes 40M."""
from itertools import pairwise

import numpy as np
import pytest
from plan_draws import long_tail

import hetero_sched as hs
from hetero_sched.milp.bounds import simple_bound
from hetero_sched.milp.groups import GroupCount, grouped_step_bound
from hetero_sched.milp.instance import build_instance

GPUS = 512
SHAPES = [(1, 1), (1, 2), (2, 1), (2, 2), (4, 1)]


@pytest.fixture(scope="module")
def lat():
    return hs.latency_model(hs.ModelSpec.preset("llama3-8b"), hs.Cluster(gpus=GPUS))


def small_groups_plan(rng, lengths, lat, tps):
    """Groups of small random shapes (TP in tps) filling most of the cluster, each sequence in a random group
    that can hold it (None when some sequence fits none)."""
    shapes = [s for s in SHAPES if s[0] in tps]
    groups, left = [], int(rng.integers(GPUS // 2, GPUS + 1))
    while left >= max(tps):
        tp, cp = shapes[int(rng.integers(len(shapes)))]
        if tp * cp <= left:
            groups.append([tp, cp, []])
            left -= tp * cp
    for i, n in enumerate(lengths):
        fits = [g for g in groups if n <= lat.max_tokens(g[0], g[1])]
        if not fits:
            return None
        fits[int(rng.integers(len(fits)))][2].append(i)
    return hs.Plan.build(lengths, [tuple(g) for g in groups if g[2]], lat)


@pytest.fixture(scope="module")
def draws(lat):
    rng = np.random.default_rng(5)
    lengths = long_tail(rng, 900, cap=24576)
    plans = []
    for tps in ([1], [1, 2], [2], [1, 2, 4], [2, 4]):
        for _ in range(4):
            plan = small_groups_plan(rng, lengths, lat, tps)
            if plan is not None:
                plans.append(plan)
    assert len(plans) >= 12
    return lengths, plans


@pytest.mark.parametrize("groups", [1, 39, 40, 41, 97, 218, 219, 300, 437, 511, 512])
def test_bucketings_hold_every_group_count(lat, groups):
    caps, (cum, pos), (shares, done) = lat.bucketings()
    k = int(np.searchsorted(caps, lat.bucket_cap(groups)))
    param, grad = lat.param_buckets(groups), lat.gradient_buckets(groups)
    n = len(param)
    assert np.allclose(cum[k, :n], np.cumsum([s for s, _ in param])) and np.allclose(pos[k, :n], [p for _, p in param])
    assert np.allclose(shares[k, :len(grad)], [s for s, _ in grad]) and np.allclose(done[k, :len(grad)], [d for _, d in grad])
    assert not cum[k, n:].any() and not shares[k, len(grad):].any()


def test_grouped_sync_bound_is_above_the_pieces_bound(lat):
    for t in (1, 2, 4):
        for groups in (1, 100, 512):
            grouped = lat.sync_exposed_lower_grouped(t, [2000.0], [groups])[0]
            assert grouped >= lat.sync_exposed_lower_ms(t, 2000.0) - 1e-9
    many = lat.sync_exposed_lower_grouped(1, [2000.0, 2000.0], [1, 512])
    assert many[1] > many[0]  # 512 groups: buckets of 512M parameters, each waited for whole


def test_no_plan_has_fewer_groups_than_least_groups(lat, draws):
    lengths, plans = draws
    count = GroupCount(build_instance(lengths, lat, prune=False, all_cps=True))
    for plan in plans:
        assert count.least_groups(plan.makespan_ms) <= len(plan.groups) + 1e-6


def test_least_groups_falls_with_the_makespan(lat, draws):
    lengths, _ = draws
    count = GroupCount(build_instance(lengths, lat))
    values = [count.least_groups(T) for T in (1500.0, 2000.0, 3000.0, 6000.0)]
    assert all(a >= b - 1e-6 for a, b in pairwise(values))
    assert values[-1] < GPUS


def test_no_plan_exposes_less_than_its_buckets_allow(lat, draws):
    _, plans = draws
    for plan in plans:
        tps = {g.tp for g in plan.groups}
        bound = lat.sync_exposed_lower_grouped(min(tps), [plan.makespan_ms], [len(plan.groups)], len(tps) > 1)[0]
        assert bound <= plan.step_ms - plan.makespan_ms + 1e-6


@pytest.mark.parametrize("t,mixed", [(1, False), (1, True), (2, False), (2, True)])
def test_no_plan_of_a_family_beats_its_grouped_bound(lat, draws, t, mixed):
    lengths, plans = draws
    full = build_instance(lengths, lat, prune=False, all_cps=True)
    cols = np.array([c for c, cfg in enumerate(full.configs) if (cfg[0] >= t if mixed else cfg[0] == t)])
    inst = full.subset(cols)
    members = [p for p in plans if min(g.tp for g in p.groups) == t
               and mixed == any(g.tp > t for g in p.groups)]
    assert members
    upper = 2 * max(p.step_ms for p in members)
    bound = grouped_step_bound(inst, lat, t, mixed, simple_bound(inst), upper)
    for plan in members:
        assert bound <= plan.step_ms + 1e-6
    assert bound > simple_bound(inst)  # the group count's buckets add to the makespan bound


def test_least_groups_is_tight_where_the_area_is(lat):
    """512 sequences of 4K, one per GPU: at that plan's makespan no other configuration fits the area, so the
    bound counts (nearly) one group a GPU."""
    lengths = [4096] * GPUS
    plan = hs.Plan.build(lengths, [(1, 1, [i]) for i in range(GPUS)], lat)
    least = GroupCount(build_instance(lengths, lat, prune=False, all_cps=True)).least_groups(plan.makespan_ms)
    assert 0.95 * GPUS <= least <= GPUS + 1e-6


def test_solve_proves_more_with_the_group_count(monkeypatch):
    """4,096 documents of 2K on 1,024 GPUs: the plan has 512 groups (buckets of 512M parameters); the group
    count lifts the step bound (730.3 -> 739.1 ms when written) and names itself, below the plan's step."""
    from hetero_sched.milp import solve as solve_module

    lat = hs.latency_model(hs.ModelSpec.preset("llama3-8b"), hs.Cluster(gpus=1024))
    lengths = [2048] * 4096
    plan = hs.solve(lengths, lat.cluster, lat, time_limit_s=30, threads=1, deterministic_limit=1.0)
    assert plan.solver.step_bound_ms <= plan.step_ms + 1e-6
    assert "by group count" in plan.solver.message
    monkeypatch.setattr(solve_module, "grouped_step_bound", lambda *args, **kw: args[6])  # floor: no gain
    without = hs.solve(lengths, lat.cluster, lat, time_limit_s=30, threads=1, deterministic_limit=1.0)
    assert without.step_ms == plan.step_ms
    assert without.solver.step_bound_ms < plan.solver.step_bound_ms - 5.0
