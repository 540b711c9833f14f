"""Pipeline stages: the 1F1B simulation, stage memory, plans with (TP, CP, PP) groups, the solver's
pp_degrees, the 4D baselines, and bad input."""
import json

import numpy as np
import pytest

import hetero_sched as hs
from hetero_sched.baselines.megatron import megatron_best
from hetero_sched.baselines.wlb_llm import wlb_llm_best, wlb_llm_plan
from hetero_sched.latency.base import pipeline_ms
from hetero_sched.milp.exhaustive import brute_force_pipelined
from hetero_sched.milp.instance import build_instance

SMALL = hs.ModelSpec(name="small-1b", layers=24, hidden=2048, heads=16, kv_heads=16, ffn=5632, vocab=32000)


@pytest.fixture(scope="module")
def lat8b():
    return hs.latency_model(hs.ModelSpec.preset("llama3-8b"), hs.Cluster(gpus=16))


class TestSimulation:
    @pytest.mark.parametrize("m,pp", [(1, 1), (1, 4), (3, 2), (8, 4), (5, 8)])
    def test_uniform_micro_batches_take_m_plus_pp_minus_one_slots(self, m, pp):
        f, b = np.full((m, pp), 1.5), np.full((m, pp), 3.0)
        assert pipeline_ms(f, b) == pytest.approx((m + pp - 1) * 4.5)

    def test_one_stage_runs_back_to_back(self):
        f, b = np.array([[1.0], [2.0], [5.0]]), np.array([[2.0], [4.0], [10.0]])
        assert pipeline_ms(f, b) == pytest.approx(24.0)

    def test_longer_ops_never_finish_earlier(self):
        rng = np.random.default_rng(7)
        for _ in range(200):
            m, pp = int(rng.integers(1, 7)), int(rng.integers(1, 5))
            f, b = rng.uniform(0.1, 2, (m, pp)), rng.uniform(0.1, 4, (m, pp))
            base = pipeline_ms(f, b)
            f2 = f.copy()
            f2[rng.integers(m), rng.integers(pp)] += rng.uniform(0, 1)
            assert pipeline_ms(f2, b) >= base - 1e-12
            # never below the busiest stage, never above running every op one after another
            assert (f + b).sum(axis=0).max() - 1e-9 <= base <= (f + b).sum() + 1e-9

    def test_group_latency_is_the_simulation_and_above_its_additive_bound(self, lat8b):
        lengths = [131072 // 8, 4096, 2048, 2048, 1024, 30000, 8000, 500]
        for tp, cp, pp in [(2, 1, 2), (1, 2, 4), (4, 1, 2), (1, 1, 8)]:
            total = lat8b.group_latency_ms(lengths, tp, cp, pp=pp)
            lower = lat8b.overhead_ms(tp, cp, None, pp) + lat8b.seq_latency_array(np.array(lengths), tp, cp, pp=pp).sum()
            assert total >= lower - 1e-9

    @pytest.mark.parametrize("length", [1024, 8192, 32768])
    def test_a_lone_micro_batch_cannot_pipeline(self, length):
        """With the same recompute, one sequence through pp stages is never faster than on one stage."""
        lat = hs.latency_model(hs.ModelSpec.preset("llama3-8b"), hs.Cluster(gpus=16), recompute="full")
        for tp, cp in [(1, 1), (2, 1), (1, 2)]:
            alone = lat.group_latency_ms([length], tp, cp)
            for pp in (2, 4):
                assert lat.group_latency_ms([length], tp, cp, pp=pp) >= alone


class TestMemory:
    def test_stages_split_the_weights_not_the_activations(self, lat8b):
        static1 = lat8b.memory_gb(0, 1, 1, 32)
        static4 = lat8b.memory_gb(0, 1, 1, 32, pp=4)
        assert static4 < static1 / 2
        # the first stage holds 4 micro-batches of 8 blocks: as many activations as without stages
        per_token1 = lat8b.memory_gb(8192, 1, 1, 0) - static1
        per_token4 = lat8b.memory_gb(8192, 1, 1, 0, pp=4) - static4
        assert per_token4 >= 0.9 * per_token1

    def test_every_stage_k_is_a_multiple_of_pp(self, lat8b):
        assert lat8b.recompute_layers(60000, 1, 1, pp=4) % 4 == 0
        with pytest.raises(ValueError, match="multiple of pp"):
            lat8b.tokens_cap(1, 1, 3, pp=4)

    def test_405b_fits_only_with_stages(self):
        lat = hs.latency_model(hs.ModelSpec.preset("llama3-405b"), hs.Cluster(gpus=512))
        assert lat.max_tokens(8, 8) == 0
        assert lat.max_tokens(8, 2, 9) >= 131072
        assert lat.memory_gb(131072, 8, 2, None, 9) <= lat.usable_bytes / 1e9


class TestBadInput:
    @pytest.mark.parametrize("pp,match", [(3, "does not divide"), (64, "more pipeline stages"), (0, "positive"),
                                          (2.0, "positive")])
    def test_bad_pp(self, lat8b, pp, match):
        with pytest.raises(ValueError, match=match):
            lat8b.group_latency_ms([1024], 1, 1, pp=pp)

    def test_solve_refuses_a_pp_degree_that_does_not_divide_the_layers(self, lat8b):
        with pytest.raises(ValueError, match="pp=5"):
            hs.solve([4096, 1024], lat8b.cluster, lat8b, time_limit_s=1, pp_degrees=(1, 5))

    def test_cli_says_one_line_and_exits_2(self, tmp_path, capsys):
        from hetero_sched.cli import main
        assert main(["solve", "--lengths", "4096,1024", "--gpus", "8", "--pp-degrees", "3"]) == 2
        assert "pp=3" in capsys.readouterr().err
        out = tmp_path / "p.json"
        assert main(["solve", "--lengths", "4096,1024,2048", "--gpus", "8", "--pp-degrees", "2", "--time-limit", "2",
                     "--out", str(out)]) == 0
        d = json.loads(out.read_text())
        assert {g["pp"] for g in d["groups"]} == {2}
        d["groups"][0]["pp"] = 3
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(d))
        capsys.readouterr()
        assert main(["validate", str(bad)]) == 2
        assert "pp=3" in capsys.readouterr().err


class TestPlans:
    def test_a_mixed_plan_validates_and_round_trips(self, lat8b):
        rng = np.random.default_rng(3)
        lengths = [int(x) for x in rng.integers(500, 20000, 24)]
        plan = hs.Plan.build(lengths, [(2, 1, 2, range(0, 8)), (1, 2, range(8, 16)), (1, 1, 2, range(16, 24))], lat8b)
        assert [g.gpus for g in plan.groups] == [4, 2, 2] and [g.pp for g in plan.groups] == [2, 1, 2]
        assert plan.validate(lat8b) == []
        again = hs.Plan.from_json(plan.to_json())
        assert again.validate() == [] and [g.pp for g in again.groups] == [2, 1, 2]
        pipelined = plan.groups[0]
        assert pipelined.latency_ms == pytest.approx(lat8b.pipeline_latency_ms(
            [[lengths[i] for i in mb] for mb in pipelined.micro_batches], 2, 1, 2, False, pipelined.recompute_layers))

    def test_a_version_2_file_loads_with_one_stage(self, lat8b):
        plan = hs.Plan.build([4096, 2048, 1024], [(1, 1, [0, 1]), (2, 1, [2])], lat8b)
        d = json.loads(plan.to_json())
        d["schema_version"] = 2
        for g in d["groups"]:
            del g["pp"]
        old = hs.Plan.from_dict(d)
        assert [g.pp for g in old.groups] == [1, 1] and old.validate() == []

    def test_recompute_not_a_multiple_of_pp_is_refused(self, lat8b):
        plan = hs.Plan.build([4096, 2048, 1024], [(1, 1, 2, [0, 1, 2])], lat8b)
        plan.groups[0].recompute_layers = [3] * len(plan.groups[0].micro_batches)
        assert any("multiple of 2" in p for p in plan.validate(lat8b))


class TestSolver:
    def test_pp_degrees_restricts_the_search(self, lat8b):
        rng = np.random.default_rng(11)
        lengths = [int(x) for x in np.minimum(rng.lognormal(np.log(2048), 1.25, 48), 32768).astype(int) + 1]
        plan = hs.solve(lengths, lat8b.cluster, lat8b, time_limit_s=3, pp_degrees=(2,))
        assert {g.pp for g in plan.groups} == {2} and plan.validate(lat8b) == []
        wlb = wlb_llm_best(lengths, lat8b.cluster, lat8b, pp_degrees=(2,))
        assert wlb.baseline["pp"] == 2 and wlb.validate(lat8b) == []
        assert plan.step_ms <= wlb.step_ms * (1 + 1e-9)
        assert plan.solver.step_bound_ms <= plan.step_ms

    def test_405b_plans_with_stages_and_never_loses_to_4d_wlb_llm(self):
        cluster = hs.Cluster(gpus=512)
        lat = hs.latency_model(hs.ModelSpec.preset("llama3-405b"), cluster)
        rng = np.random.default_rng(21)
        lengths = [int(x) for x in np.minimum(rng.lognormal(np.log(2048), 1.25, 96), 131072).astype(int) + 1]
        lengths[0] = 131072
        plan = hs.solve(lengths, cluster, lat, time_limit_s=4)
        wlb = wlb_llm_best(lengths, cluster, lat)
        assert plan.validate(lat) == [] and all(g.pp > 1 for g in plan.groups) and wlb.baseline["pp"] > 1
        assert max(g.memory_gb for g in plan.groups) <= lat.usable_bytes / 1e9
        assert plan.step_ms <= wlb.step_ms * (1 + 1e-9)
        meg = megatron_best(lengths, cluster, lat)
        assert meg.baseline["pp"] > 1 and meg.validate(lat) == []

    def test_a_homogeneous_4d_plan(self, lat8b):
        plan = wlb_llm_plan([8192, 4096, 4096, 2048, 1024], lat8b.cluster, lat8b, tp=2, cp=1, pp=2)
        assert {(g.tp, g.cp, g.pp) for g in plan.groups} == {(2, 1, 2)} and plan.baseline["dp"] == 4
        assert plan.validate(lat8b) == []


@pytest.mark.parametrize("lengths", [[3000, 800, 1200], [2500, 2500, 400, 300]])
def test_pipelined_bounds_hold_against_brute_force(lengths):
    """On tiny clusters the exhaustive optimum over (TP, CP, PP) groups priced by the simulation: the
    solver's bound never exceeds it and its plan is never below it."""
    lat = hs.latency_model(SMALL, hs.Cluster(gpus=4, gpus_per_node=4))
    optimum = brute_force_pipelined(lengths, lat, (1, 2))
    plan = hs.solve(lengths, lat.cluster, lat, time_limit_s=5, threads=1, objective="makespan", pp_degrees=(1, 2))
    assert plan.solver.makespan_bound_ms <= optimum * (1 + 1e-9)
    assert plan.makespan_ms >= optimum * (1 - 1e-9)
    assert plan.validate(lat) == []
    instance = build_instance(lengths, lat, prune=False, pp_degrees=(1, 2))
    assert instance.pipelined


class TestReviewFindings:
    def test_pipelined_groups_pipeline_their_sequences(self):
        """Packed up to the memory cap, 4 sequences on 8 stages ran as one micro-batch (627 ms); one each, 1F1B
        overlaps them."""
        lat = hs.latency_model(hs.ModelSpec.preset("llama3-8b"), hs.Cluster(gpus=8))
        lengths = [4096, 2048, 1024, 1024]
        plan = hs.solve(lengths, lat.cluster, lat, pp_degrees=(8,), time_limit_s=2)
        g = plan.groups[0]
        assert len(g.micro_batches) == 4 and g.latency_ms < 400
        one_batch = lat.pipeline_latency_ms([lengths], 1, 1, 8, False, [g.recompute_layers[0]])
        assert g.latency_ms < one_batch

    def test_largest_sequence_counts_stages(self):
        from hetero_sched.milp.instance import largest_sequence
        lat = hs.latency_model(hs.ModelSpec.preset("llama3-405b"), hs.Cluster(gpus=128))
        assert largest_sequence(lat) >= 8192
        with pytest.raises(ValueError, match="need at least 32 GPUs"):
            largest_sequence(hs.latency_model(hs.ModelSpec.preset("llama3-8b"), hs.Cluster(gpus=16)), (32,))

    def test_cli_odd_pp_inputs(self, capsys):
        from hetero_sched.cli import main
        for bad in ("1,,2", "abc", "0", "-2", "64"):
            assert main(["solve", "--lengths", "1024", "--gpus", "8", "--pp-degrees", bad]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "Traceback" not in err
        assert main(["latency", "--model", "llama3-405b", "--gpus", "512", "--pp", "9", "--at", "4K"]) == 0
        assert "9 stages" in capsys.readouterr().out
        assert main(["latency", "--gpus", "8", "--pp", "3"]) == 2
