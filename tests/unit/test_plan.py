import json

import pytest
from hetero_sched.baselines.megatron import megatron_best
from hetero_sched.baselines.wlb_llm import wlb_llm_best, wlb_llm_plan

import hetero_sched as hs
from hetero_sched.placement import nodes_spanned, place_groups


@pytest.fixture(scope="module")
def plan(lat16):
    return hs.solve([32768] + [1024] * 32, lat16.cluster, lat16, time_limit_s=5)


def test_json_round_trip(plan):
    again = hs.Plan.from_json(plan.to_json())
    assert again.to_json() == plan.to_json()
    assert again.validate() == []


def test_json_has_the_documented_fields(plan):
    d = json.loads(plan.to_json())
    assert d["schema_version"] == 3
    assert {"tp", "cp", "pp", "ranks", "sequence_ids", "micro_batches", "latency_ms", "memory_gb",
            "recompute_layers"} <= set(d["groups"][0])
    assert len(d["groups"][0]["recompute_layers"]) == len(d["groups"][0]["micro_batches"])
    assert d["latency_model"]["recompute"] == "auto" and d["latency_model"]["overlap_param_gather"] is True
    assert {"backend", "status", "objective_ms", "bound_ms", "gap", "wall_s"} <= set(d["solver"])
    assert d["baseline"]["name"] == "wlb-llm"
    assert d["latency_model"]["kind"] == "analytic"


@pytest.mark.parametrize("mutate,reason", [
    (lambda d: d["groups"][0]["sequence_ids"].append(d["groups"][1]["sequence_ids"][0]), "exactly"),
    (lambda d: d["groups"][0].__setitem__("ranks", d["groups"][1]["ranks"]), "already used"),
    (lambda d: d.__setitem__("makespan_ms", d["makespan_ms"] * 0.9), "makespan_ms"),
    (lambda d: d["groups"][0].__setitem__("latency_ms", 1.0), "latency_ms"),
    (lambda d: d["groups"][0].__setitem__("tp", 3), "not a valid configuration"),
])
def test_validate_catches_corruption(plan, mutate, reason):
    d = json.loads(plan.to_json())
    mutate(d)
    problems = hs.Plan.from_dict(d).validate()
    assert any(reason in p for p in problems), problems


def test_unknown_schema_version(plan):
    d = json.loads(plan.to_json())
    d["schema_version"] = 99
    with pytest.raises(ValueError, match="99"):
        hs.Plan.from_dict(d)


def test_malformed_json():
    with pytest.raises(ValueError, match="not valid JSON"):
        hs.Plan.from_json("{")
    with pytest.raises(ValueError, match="malformed"):
        hs.Plan.from_json('{"schema_version": 1}')


class TestBaselines:
    def test_wlb_plan_is_homogeneous_and_uses_dp_replicas(self, lat16):
        p = wlb_llm_plan([32768] + [1024] * 32, lat16.cluster, lat16, tp=8, cp=1)
        assert {(g.tp, g.cp) for g in p.groups} == {(8, 1)} and len(p.groups) == 2
        assert p.validate() == []

    def test_wlb_infeasible_config_names_the_sequence(self, lat16):
        with pytest.raises(ValueError, match="sequence 0"):
            wlb_llm_plan([200000, 1024], lat16.cluster, lat16, tp=1, cp=1)

    def test_best_beats_or_ties_every_config(self, lat16):
        lengths = [32768] + [1024] * 32
        for objective in ("step", "makespan"):
            best = wlb_llm_best(lengths, lat16.cluster, lat16, objective=objective)
            for tp, cp in [(1, 1), (2, 1), (4, 1), (8, 1), (8, 2), (2, 8), (1, 8), (4, 2)]:
                other = wlb_llm_plan(lengths, lat16.cluster, lat16, tp=tp, cp=cp, objective=objective)
                attr = f"{objective}_ms"
                assert getattr(best, attr) <= getattr(other, attr) + 1e-9

    def test_megatron_is_no_better_than_wlb(self, lat16):
        lengths = [1024] * 20 + [32768, 16384] + [2048] * 10
        assert megatron_best(lengths, lat16.cluster, lat16, objective="makespan").makespan_ms >= \
            wlb_llm_best(lengths, lat16.cluster, lat16, objective="makespan").makespan_ms - 1e-9


class TestPlacement:
    def test_tp_groups_stay_inside_nodes_on_a_partial_node(self):
        shapes = [(8, 4), (1, 1), (2, 1)]
        ranks = place_groups(shapes, 36, 8)
        for (tp, _), rk in zip(shapes, ranks):
            assert all(nodes_spanned(rk[k:k + tp], 8) == 1 for k in range(0, len(rk), tp))

    def test_small_cp_groups_avoid_crossing_nodes(self):
        ranks = place_groups([(1, 6), (1, 6), (1, 2), (1, 2)], 16, 8)
        assert all(nodes_spanned(rk, 8) == 1 for rk in ranks)

    def test_too_many_gpus(self):
        with pytest.raises(ValueError, match="17"):
            place_groups([(1, 9), (1, 8)], 16, 8)
