"""Homogeneous baselines are placed as they would really run, and the best one is found exactly."""
import pytest
from hetero_sched.baselines.megatron import megatron_plan
from hetero_sched.baselines.wlb_llm import wlb_llm_best, wlb_llm_plan

import hetero_sched as hs
from hetero_sched.placement import nodes_spanned, tp_group_inside_node
from hetero_sched.workload import synthetic


@pytest.fixture(scope="module")
def prolong64(llama3):
    """The realistic-suite batch of issue 11: ProLong lengths at 64 GPUs, 64K context, seed 2."""
    lat = hs.latency_model(llama3, hs.Cluster(gpus=64))
    return synthetic("prolong:tokens=1048576,context=65536,seed=2"), lat


@pytest.mark.parametrize("objective", ["step", "makespan"])
def test_best_equals_the_exhaustive_search_over_configs_and_replicas(prolong64, objective):
    lengths, lat = prolong64
    best = wlb_llm_best(lengths, lat.cluster, lat, objective=objective)
    every = []
    for tp, cp in lat.cluster.configs(lat.model):
        try:
            every.append(wlb_llm_plan(lengths, lat.cluster, lat, tp=tp, cp=cp, objective=objective))
        except ValueError:
            continue
    key = f"{objective}_ms"
    assert getattr(best, key) == pytest.approx(min(getattr(p, key) for p in every), rel=1e-12)
    assert best.validate() == []


def test_a_replica_that_crosses_nodes_is_priced_so(llama3):
    # 11 GPUs at 8 per node: TP1xCP5 fits one replica inside node 0, the second must cross (5 = 3 + 2)
    lat = hs.latency_model(llama3, hs.Cluster(gpus=24, gpus_per_node=8))
    plan = wlb_llm_plan([4096] * 6, lat.cluster, lat, tp=1, cp=5, objective="makespan")
    assert plan.validate() == []
    spans = [nodes_spanned(g.ranks, 8) for g in plan.groups]
    assert len(plan.groups) <= 4 and all(tp_group_inside_node(g.ranks, g.tp, 8) for g in plan.groups)
    crossing = [g for g, s in zip(plan.groups, spans) if s > 1]
    for g in crossing:  # priced on InfiniBand
        ids = g.sequence_ids
        assert g.latency_ms == pytest.approx(lat.group_latency_ms([4096] * len(ids), 1, 5, cross_node=True))


def test_earliest_finish_gives_crossing_replicas_less_work(llama3):
    lat = hs.latency_model(llama3, hs.Cluster(gpus=24, gpus_per_node=8))
    plan = wlb_llm_plan([2048] * 40, lat.cluster, lat, tp=1, cp=3, objective="makespan")
    inside = [len(g.sequence_ids) for g in plan.groups if nodes_spanned(g.ranks, 8) == 1]
    across = [len(g.sequence_ids) for g in plan.groups if nodes_spanned(g.ranks, 8) > 1]
    assert inside and across and max(across) <= min(inside)


def test_megatron_is_placed_too(llama3):
    lat = hs.latency_model(llama3, hs.Cluster(gpus=24, gpus_per_node=8))
    plan = megatron_plan([2048] * 40, lat.cluster, lat, tp=1, cp=3)
    assert plan.validate() == [] and plan.baseline["name"] == "megatron"
