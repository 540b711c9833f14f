"""ByteScale's scale (issue 24): the fast paths that make 16,384 GPUs x 65,536 sequences fit in 10 s keep
what the slower code computed, the step objective does not lose to the makespan objective's plan, and
the largest supported cluster plans and shows."""
import json

import numpy as np
import pytest

import hetero_sched as hs
from hetero_sched import planfile
from hetero_sched.milp import heuristic
from hetero_sched.milp.bounds import simple_bound
from hetero_sched.milp.instance import MAX_SOLVE_GPUS, build_instance
from hetero_sched.workload import synthetic


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return len(a) == len(b) and all(x[0] == y[0] and list(x[1]) == list(y[1]) for x, y in zip(a, b))


@pytest.mark.parametrize("gpus,seed", [(16, 0), (64, 1), (256, 2)])
def test_cover_by_bisection_is_the_scan(llama3, gpus, seed, monkeypatch):
    """Where a configuration's costs fall along the order, the fill bisects and skips placed sequences;
    the scan (forced by declaring no column sorted) must give the same groups, orders perturbed too."""
    lat = hs.latency_model(llama3, hs.Cluster(gpus=gpus), recompute="auto" if seed % 2 else "full")
    inst = build_instance(synthetic(f"lognormal:n={4 * gpus},context=131072,seed={seed}"), lat)
    rng = np.random.default_rng(seed)
    lower = simple_bound(inst)
    trials = []
    for T in (lower * 1.01, lower * 1.05, lower * 1.2):
        for rule in heuristic.RULES:
            noise = rng.lognormal(0, 0.3, size=inst.n)
            order = np.argsort(-heuristic.least_gpu_time(inst) * noise, kind="stable")
            trials += [(T, heuristic.default_order(inst), rule), (T, order, rule)]
    fast = [heuristic.cover(inst, T, order, rule) for T, order, rule in trials]
    monkeypatch.setattr(heuristic._Filler, "_column", lambda self, c: None)
    slow = [heuristic.cover(inst, T, order, rule) for T, order, rule in trials]
    assert any(s is not None for s in slow)
    assert all(_same(a, b) for a, b in zip(fast, slow))


def test_local_search_moves_and_swaps_as_before(llama3):
    """Costs gathered as needed (no (n, G) matrix): the polished solution is a valid one that is no slower."""
    lat = hs.latency_model(llama3, hs.Cluster(gpus=64))
    inst = build_instance(synthetic("lognormal:n=256,context=131072,seed=5"), lat)
    sol = heuristic.binary_search_cover(inst, simple_bound(inst), 1e9, float("inf"))
    polished = heuristic.local_search(inst, sol, float("inf"))
    assert sorted(np.concatenate([items for _, items in polished]).tolist()) == list(range(inst.n))
    assert [c for c, _ in polished] == [c for c, _ in sol]
    assert heuristic.makespan(inst, polished) <= heuristic.makespan(inst, sol)


def test_the_step_objective_does_not_lose_to_the_makespan_objectives_plan(llama3):
    """The step objective searches every configuration's slice first (the makespan objective's search),
    then the layouts: over the step its plan is no slower than the makespan objective's."""
    lat = hs.latency_model(llama3, hs.Cluster(gpus=256))
    lengths = synthetic("lognormal:n=1024,context=131072,seed=11")
    step = hs.solve(lengths, lat.cluster, lat, time_limit_s=2.0, objective="step")
    makespan = hs.solve(lengths, lat.cluster, lat, time_limit_s=2.0, objective="makespan")
    assert step.validate() == [] and makespan.validate() == []
    assert step.step_ms <= makespan.step_ms * (1 + 1e-9), step.solver.message


def test_the_largest_supported_cluster_plans(llama3):
    """16,384 GPUs (2,048 nodes): a valid plan, never worse than the warm start, ranks across the cluster."""
    assert MAX_SOLVE_GPUS >= 16_384
    lat = hs.latency_model(llama3, hs.Cluster(gpus=MAX_SOLVE_GPUS))
    lengths = synthetic("lognormal:n=8192,context=131072,seed=3")
    plan = hs.solve(lengths, lat.cluster, lat, time_limit_s=3.0, objective="makespan")
    assert plan.validate() == []
    assert plan.makespan_ms <= plan.baseline["makespan_ms"] * (1 + 1e-9)
    assert max(r for g in plan.groups for r in g.ranks) < MAX_SOLVE_GPUS


def test_a_cluster_beyond_the_supported_one_is_refused_in_one_line(llama3):
    lat = hs.latency_model(llama3, hs.Cluster(gpus=MAX_SOLVE_GPUS + 8))
    with pytest.raises(ValueError, match=f"at most {MAX_SOLVE_GPUS}") as err:
        hs.solve([1024] * 4, lat.cluster, lat)
    assert "\n" not in str(err.value)


def _full_check_message(data) -> str | None:
    from jsonschema.exceptions import best_match
    error = best_match(planfile._validator(data["schema_version"]).iter_errors(data))
    return None if error is None else f"malformed plan JSON: {planfile.schema_message(error)}"


@pytest.mark.parametrize("path,value", [
    (("sequences", 700, "length"), 0),
    (("sequences", 3, "id"), "3"),
    (("sequences", 900), {"id": 900}),
    (("groups", 2, "sequence_ids", -1), -4),
    (("groups", 1, "micro_batches", 0), []),
    (("groups", 0, "ranks", 1), 1.0),
    (("groups", 3, "recompute_layers", 0), True),
    (("groups", 1, "tp"), 3),
    (("makespan_ms",), "fast"),
])
def test_the_reduced_schema_check_says_what_the_full_one_says(llama3, path, value):
    """Long arrays of simple items are checked item by item here and cut before jsonschema sees them: the
    verdict and the first error named are those of the full document."""
    lat = hs.latency_model(llama3, hs.Cluster(gpus=32))
    lengths = synthetic("lognormal:n=1000,context=32768,seed=4")
    plan = hs.solve(lengths, lat.cluster, lat, time_limit_s=0.5)
    data = json.loads(plan.to_json())
    assert _full_check_message(data) is None
    planfile.check_schema(data)  # valid: nothing raised
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    expected = _full_check_message(data)
    assert expected is not None
    with pytest.raises(ValueError) as err:
        planfile.check_schema(data)
    assert str(err.value) == expected


def test_megatron_first_fit_by_tree_is_the_scan():
    """Arrival-order first fit through a max-tree: the micro-batches of the plain scan, oversize too."""
    from hetero_sched.baselines.megatron import first_fit_arrival

    def scan(lengths, capacity):
        batches, room = [], []
        for i, x in enumerate(lengths):
            b = next((b for b, free in enumerate(room) if x <= free), None)
            if b is None:
                batches.append([i])
                room.append(capacity - x)
            else:
                batches[b].append(i)
                room[b] -= x
        return batches

    rng = np.random.default_rng(0)
    for _ in range(500):
        capacity = int(rng.choice([1, 7, 64, 1000]))
        lengths = rng.integers(1, int(capacity * 1.3) + 2, size=int(rng.integers(0, 50))).tolist()
        assert first_fit_arrival(lengths, capacity) == scan(lengths, capacity)


@pytest.mark.parametrize("kwargs, needle", [({"time_limit_s": float("nan")}, "nan"), ({"time_limit_s": -1}, "-1"),
                                            ({"deterministic_limit": float("nan")}, "nan"),
                                            ({"deterministic_limit": float("inf")}, "inf"),
                                            ({"deterministic_limit": 0}, "0")])
def test_limits_that_are_not_finite_positive_numbers_are_refused(llama3, kwargs, needle):
    """A NaN work limit reached CP-SAT as MODEL_INVALID and returned the warm start; inf switched every
    limit off."""
    lat = hs.latency_model(llama3, hs.Cluster(gpus=16))
    with pytest.raises(ValueError, match=needle):
        hs.solve([32768, 1024], lat.cluster, lat, **kwargs)
