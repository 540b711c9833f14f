"""The step objective's cover on larger groups, where thousands of groups leave few, large gradient buckets."""
import time

import numpy as np

import hetero_sched as hs
from hetero_sched.latency.base import GroupStepEnds
from hetero_sched.milp import solve
from hetero_sched.milp.bounds import simple_bound
from hetero_sched.milp.heuristic import binary_search_cover, makespan
from hetero_sched.milp.instance import build_instance


def _covered(gpus: int, n: int):
    lat = hs.latency_model(hs.ModelSpec.preset("llama3-8b"), hs.Cluster(gpus=gpus))
    lengths = np.random.default_rng(0).choice([1024, 2048, 4096, 8192], size=n)
    inst = build_instance(lengths, lat)
    sol = binary_search_cover(inst, simple_bound(inst), 1e6, time.monotonic() + 60, rule="efficient")
    return lat, inst, sol


def test_many_groups_get_a_cover_on_larger_groups_with_less_exposed_sync():
    lat, inst, sol = _covered(2048, 6000)
    found = solve._fewer_groups(inst, sol, lat, 1, simple_bound(inst), 1e6, time.monotonic() + 60, 0.0)
    assert found is not None
    size, larger = found
    assert size >= 2 * np.bincount(inst.gpus[[c for c, _ in sol]].astype(int)).argmax()
    assert all(inst.gpus[c] >= size for c, _ in larger)
    assert sum(inst.gpus[c] for c, _ in larger) <= inst.total_gpus
    held = np.sort(np.concatenate([items for _, items in larger]))
    assert np.array_equal(held, np.arange(inst.n))  # every sequence once
    assert len(larger) < len(sol)
    least = [GroupStepEnds(lat, [1], len(s)).least for s in (sol, larger)]
    assert least[1] < least[0]
    assert makespan(inst, larger) < 1e6


def test_few_groups_are_left_as_they_are():
    lat, inst, sol = _covered(64, 256)
    assert solve._fewer_groups(inst, sol, lat, 1, simple_bound(inst), 1e6, time.monotonic() + 60, 0.0) is None
