"""Recompute chosen per micro-batch, the overlapped parameter all-gather, and the order that serves both."""
import itertools
import json

import numpy as np
import pytest
from hetero_sched.baselines.wlb_llm import wlb_llm_best, wlb_llm_plan

import hetero_sched as hs
from hetero_sched.latency.base import ADVICE_TOKENS
from hetero_sched.latency import constants as K
from hetero_sched import plan as plan_module


def _lat(gpus=16, **options):
    return hs.latency_model(hs.ModelSpec.preset("llama3-8b"), hs.Cluster(gpus=gpus), **options)


SHORT_DOCS = [int(x) for x in np.random.default_rng(3).integers(2048, 4097, size=112)]
README_BATCH = [32768] + [1024] * 32


class TestLeastK:
    @pytest.mark.parametrize("tp,cp", [(1, 1), (2, 1), (4, 2), (8, 4)])
    def test_k_is_the_least_that_fits(self, tp, cp):
        lat = _lat(gpus=64)
        usable = lat.usable_bytes / 1e9
        for tokens in np.linspace(1, lat.max_tokens(tp, cp), 40).astype(int):
            k = lat.recompute_layers(int(tokens), tp, cp)
            assert lat.memory_gb(int(tokens), tp, cp, k) <= usable + 1e-9
            if k > 0:
                assert lat.memory_gb(int(tokens), tp, cp, k - 1) > usable
            assert int(tokens) <= lat.tokens_cap(tp, cp, k)

    def test_more_recompute_costs_more_and_holds_more(self):
        lat = _lat()
        costs = [lat.seq_latency_ms(8192, 1, 1, recompute_layers=k) for k in range(33)]
        caps = [lat.tokens_cap(1, 1, k) for k in range(33)]
        assert all(b > a for a, b in itertools.pairwise(costs))
        assert all(b >= a for a, b in itertools.pairwise(caps)) and caps[0] < caps[-1] == lat.max_tokens(1, 1)
        # k/layers of one extra forward of every layer (the LM head is never recomputed)
        fwd, rec, _ = lat.seq_parts_array([8192], 1, 1, recompute_layers=32)
        assert costs[32] - costs[0] == pytest.approx(float(rec[0]))
        assert costs[16] - costs[0] == pytest.approx(float(rec[0]) / 2)
        assert float(rec[0]) < float(fwd[0])

    def test_full_recomputes_every_layer(self):
        full = _lat(recompute="full")
        assert full.recompute_layers(1024, 1, 1) == 32
        assert full.seq_latency_ms(1024, 1, 1) > _lat().seq_latency_ms(1024, 1, 1)

    def test_bad_options_are_refused(self):
        with pytest.raises(ValueError, match="recompute"):
            _lat(recompute="some")
        with pytest.raises(ValueError, match="overlap_param_gather"):
            _lat(overlap_param_gather="yes")
        with pytest.raises(ValueError, match="recompute_layers=33"):
            _lat().tokens_cap(1, 1, 33)
        with pytest.raises(ValueError, match="exceeds max_tokens"):
            _lat().recompute_layers(10**7, 1, 1)


class TestPlans:
    def test_short_documents_plan_faster_with_auto(self):
        steps = {}
        for mode in ("auto", "full"):
            lat = _lat(recompute=mode)
            plan = hs.solve(SHORT_DOCS, lat.cluster, lat, time_limit_s=5, threads=1, deterministic_limit=2.0)
            assert plan.validate() == []
            steps[mode] = plan.step_ms
            ks = [k for g in plan.groups for k in g.recompute_layers]
            assert (min(ks) < 32) == (mode == "auto")
        assert steps["full"] / steps["auto"] >= 1.12

    def test_group_latency_is_the_sum_of_each_sequence_at_its_own_k(self):
        """Micro-batches hold one recompute class each, so a micro-batch's least k is its sequences' own."""
        lat = _lat()
        rng = np.random.default_rng(5)
        for _ in range(20):
            lengths = [int(x) for x in np.exp(rng.uniform(np.log(500), np.log(30000), size=12))]
            plan = hs.Plan.build(lengths, [(1, 1, range(12))], lat, ranks=[[0]])
            g = plan.groups[0]
            assert g.latency_ms == pytest.approx(lat.group_latency_ms(lengths, 1, 1), rel=1e-12)
            for mb, k in zip(g.micro_batches, g.recompute_layers):
                assert k == lat.recompute_layers(sum(lengths[i] for i in mb), 1, 1)
            assert {len(set(lat.recompute_layers(lengths[i], 1, 1) for i in mb)) for mb in g.micro_batches} == {1}

    def test_a_128k_micro_batch_without_recompute_fails_validation(self):
        lat = _lat()
        plan = hs.Plan.build([131072] + [2048] * 8, [(4, 2, [0, 1, 2]), (2, 4, range(3, 9))], lat)
        d = json.loads(plan.to_json())
        g = d["groups"][0]
        j = next(j for j, mb in enumerate(g["micro_batches"]) if 0 in mb)
        assert g["recompute_layers"][j] > 0
        g["recompute_layers"][j] = 0
        problems = hs.Plan.from_dict(d).validate()
        assert any("does not fit with 0 recomputed layers" in p for p in problems), problems

    def test_wrong_recompute_records_are_reported(self):
        lat = _lat()
        d = json.loads(hs.Plan.build([4096, 1024], [(1, 1, [0, 1])], lat).to_json())
        d["groups"][0]["recompute_layers"] = [0, 0, 0]
        assert any("recompute_layers" in p for p in hs.Plan.from_dict(d).validate())

    def test_a_full_recompute_plan_recomputes_every_layer(self):
        lat = _lat(recompute="full")
        d = json.loads(hs.Plan.build([4096, 1024], [(1, 1, [0, 1])], lat).to_json())
        d["groups"][0]["recompute_layers"] = [0] * len(d["groups"][0]["micro_batches"])
        assert any("recompute 'full'" in p for p in hs.Plan.from_dict(d).validate())

    def test_version_1_files_load_as_full_recompute(self):
        lat = _lat(recompute="full", overlap_param_gather=False)
        d = json.loads(hs.solve(README_BATCH, lat.cluster, lat, time_limit_s=3).to_json())
        d["schema_version"] = 1
        for g in d["groups"]:
            del g["recompute_layers"]
        for key in ("recompute", "overlap_param_gather"):
            del d["latency_model"][key]
        old = hs.Plan.from_dict(d)
        assert old.validate() == [] and {k for g in old.groups for k in g.recompute_layers} == {32}
        assert json.loads(old.to_json())["schema_version"] == 3

    def test_baselines_run_one_global_k(self):
        lat = _lat()
        lengths = [20000, 9000, 3000, 2500, 2048, 1024]
        plan = wlb_llm_plan(lengths, lat.cluster, lat, tp=1, cp=1)
        ks = {k for g in plan.groups for k in g.recompute_layers}
        assert ks == {lat.recompute_layers(20000, 1, 1)} and plan.baseline["recompute"] == "global"
        adaptive = wlb_llm_plan(lengths, lat.cluster, lat, tp=1, cp=1, recompute="per-micro-batch")
        assert len({k for g in adaptive.groups for k in g.recompute_layers}) > 1
        assert adaptive.step_ms <= plan.step_ms
        assert sum(g.latency_ms for g in adaptive.groups) < sum(g.latency_ms for g in plan.groups)
        with pytest.raises(ValueError, match="recompute"):
            wlb_llm_best(lengths, lat.cluster, lat, recompute="sometimes")

    def test_never_slower_than_either_wlb_llm(self):
        lat = _lat()
        plan = hs.solve(SHORT_DOCS[:40] + [65536], lat.cluster, lat, time_limit_s=3, threads=1)
        for setting in ("global", "per-micro-batch"):
            best = wlb_llm_best(plan.lengths, lat.cluster, lat, recompute=setting)
            assert plan.step_ms <= best.step_ms * (1 + 1e-9), setting


class TestOverlappedAllGather:
    def test_readme_batch_has_a_lower_step_and_exposed_sync_with_overlap(self):
        plans = {}
        for overlap in (True, False):
            lat = _lat(overlap_param_gather=overlap)
            plans[overlap] = hs.solve(README_BATCH, lat.cluster, lat, time_limit_s=3, threads=1)
        assert plans[True].step_ms < plans[False].step_ms
        assert plans[True].sync_ms < plans[False].sync_ms

    def test_a_long_first_forward_hides_the_gather(self):
        lat = _lat()
        _, _, allgather = lat.sync_parts([1])
        short, long_ = lat.gather_delays(allgather, [1.0, 1e5], groups=2)
        assert short == pytest.approx(allgather, rel=0.05)  # waits for almost all of it
        at_once = allgather * sum(share for share, pos in lat.param_buckets(2) if pos == 0.0)
        assert long_ == pytest.approx(at_once)  # only the buckets needed at once: embedding and layer 0

    def test_param_buckets_cover_every_parameter_in_forward_order(self):
        buckets = _lat().param_buckets(groups=4)
        assert sum(s for s, _ in buckets) == pytest.approx(1.0)
        assert [p for _, p in buckets] == sorted(p for _, p in buckets) and buckets[0][1] == 0.0

    @pytest.mark.parametrize("overlap", [True, False])
    def test_step_lower_bound_holds_for_any_timings(self, overlap):
        lat = _lat(overlap_param_gather=overlap)
        rng = np.random.default_rng(1)
        for _ in range(300):
            k = int(rng.integers(1, 6))
            ends = rng.uniform(20, 3000, size=k)
            lasts = ends * rng.uniform(0.01, 1.0, size=k)
            firsts = ends * rng.uniform(0.0, 1.0, size=k)
            timings = list(zip(ends, K.FORWARD_SHARE_MAX * firsts, K.BACKWARD_SHARE * lasts))
            tps = [int(x) for x in rng.choice([1, 2, 4, 8], size=k)]
            makespan = float(ends.max())
            lower = makespan * rng.uniform(0.5, 1.0)
            step = makespan + lat.sync_exposed_ms(tps, timings)
            assert lower + lat.sync_exposed_lower_ms(min(tps), lower) <= step * (1 + 1e-12)

    def test_the_order_chosen_is_the_best_of_every_order(self):
        """Brute force over every run order of every group's micro-batches, on small plans."""
        lat = _lat()
        rng = np.random.default_rng(11)
        for trial in range(6):
            lengths = [int(x) for x in np.exp(rng.uniform(np.log(800), np.log(30000), size=9))]
            cut = sorted(rng.choice(np.arange(1, 9), size=2, replace=False))
            parts = [list(range(0, cut[0])), list(range(cut[0], cut[1])), list(range(cut[1], 9))]
            plan = hs.Plan.build(lengths, [(1, 1, p) for p in parts], lat, ranks=[[0], [1], [2]])
            assert plan.validate() == []
            best = min(_step_in_order(plan, lat, orders)
                       for orders in itertools.product(*[itertools.permutations(range(len(g.micro_batches)))
                                                         for g in plan.groups]))
            assert plan.step_ms == pytest.approx(best, rel=1e-12), trial

    def test_many_alike_groups_are_not_stuck_on_a_plateau(self):
        """Sixteen groups (more than every order can be priced for), each a long sequence in one micro-batch
        and short ones in another: long first (its forward hides the all-gather) beats long last for each,
        but flipping one group alone cannot lower the step while the others keep the worse order. The
        order chosen is no worse than either uniform choice."""
        lat = hs.latency_model(hs.ModelSpec.preset("llama3-8b"), hs.Cluster(gpus=64))
        lengths, groups = [], []
        for _ in range(16):
            groups.append((2, 2, list(range(len(lengths), len(lengths) + 4))))
            lengths += [40000, 4000, 4000, 4000]
        plan = hs.Plan.build(lengths, groups, lat)
        assert len(plan.groups) > plan_module.EXACT_ORDER_GROUPS
        assert all(len(g.micro_batches) == 2 for g in plan.groups)
        uniform = [_step_in_order(plan, lat, [order] * len(plan.groups)) for order in ((0, 1), (1, 0))]
        assert max(uniform) > min(uniform) * 1.01  # the choice matters
        assert plan.step_ms <= min(uniform) * (1 + 1e-12)


def _step_in_order(plan, lat, orders) -> float:
    copy = hs.Plan.from_dict(plan.to_dict())
    for g, order in zip(copy.groups, orders):
        g.micro_batches = [g.micro_batches[j] for j in order]
        g.recompute_layers = [g.recompute_layers[j] for j in order]
    copy.reprice(lat)
    return copy.step_ms


def test_cli_records_the_options(tmp_path):
    from hetero_sched.cli import main

    out = tmp_path / "p.json"
    assert main(["solve", "--lengths", "8192,1024,1024", "--gpus", "8", "--time-limit", "2", "--recompute", "full",
                 "--no-overlap-param-gather", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["latency_model"]["recompute"] == "full" and d["latency_model"]["overlap_param_gather"] is False
    assert {k for g in d["groups"] for k in g["recompute_layers"]} == {32}
    assert main(["validate", str(out)]) == 0


def test_a_model_that_cannot_fit_says_what_would():
    lat = hs.latency_model(hs.ModelSpec.preset("llama3-405b"), hs.Cluster(gpus=512))
    assert lat.max_tokens(8, 4) == 0 and lat.max_tokens(8, 1, 9) > 0  # 405B fits with pipeline stages only
    for model, gpus in (("llama3-70b", 8), ("llama3-70b", 4), ("llama3-8b", 1), ("llama3-405b", 64)):
        with pytest.raises(ValueError, match="use at least") as err:
            hs.latency_model(hs.ModelSpec.preset(model), hs.Cluster(gpus=gpus))
        least = int(str(err.value).split("use at least ")[1].split()[0])
        assert _most_tokens_per_gpu(model, least) >= ADVICE_TOKENS  # fits, with room for a real micro-batch
        assert _most_tokens_per_gpu(model, least - 1) < ADVICE_TOKENS


def _most_tokens_per_gpu(model: str, gpus: int) -> int:
    """The most tokens one GPU of any (TP, PP) group holds (CP 1) on this cluster; 0 when nothing fits."""
    try:
        lat = hs.latency_model(hs.ModelSpec.preset(model), hs.Cluster(gpus=gpus))
    except ValueError as exc:
        assert "cannot fit" in str(exc)
        return 0
    return max(lat.max_tokens(tp, 1, pp) for tp, pp in lat.fitting_layouts())


def test_a_single_sequence_is_proven_with_the_all_gather_overlapped():
    lat = _lat(gpus=12)
    plan = hs.solve([1024], lat.cluster, lat, time_limit_s=3, threads=1)
    assert plan.solver.status == "optimal", plan.solver.message


def test_the_capped_step_bound_holds_against_random_plans():
    """The step bound (each family's first-forward cap included) is below every plan we can build."""
    rng = np.random.default_rng(2)
    for trial in range(8):
        gpus = int(rng.choice([8, 12, 16]))
        lat = _lat(gpus=gpus)
        lengths = [int(x) for x in np.exp(rng.uniform(np.log(500), np.log(30000), size=int(rng.integers(1, 5))))]
        bound = hs.solve(lengths, lat.cluster, lat, time_limit_s=2, threads=1).solver.step_bound_ms
        for _ in range(25):
            groups, left, ids = [], gpus, list(range(len(lengths)))
            rng.shuffle(ids)
            while ids:
                tp = int(rng.choice([t for t in (1, 2, 4, 8) if t <= left]))
                cp = int(rng.integers(1, left // tp + 1))
                take = ids[:int(rng.integers(1, len(ids) + 1))]
                if max(lengths[i] for i in take) > lat.max_tokens(tp, cp) or len(groups) == 3:
                    break
                groups.append((tp, cp, take))
                ids, left = ids[len(take):], left - tp * cp
                if left == 0:
                    break
            if ids:
                continue
            try:
                plan = hs.Plan.build(lengths, groups, lat)
            except ValueError:
                continue  # not placeable
            assert bound <= plan.step_ms * (1 + 1e-9), (trial, groups)


@pytest.mark.parametrize("overlap", [True, False])
def test_step_bound_below_the_brute_force_step_optimum(overlap):
    """One node of 8 GPUs, 3 sequences: every partition, every (TP, CP) per block, each plan built (its
    micro-batch order is the best one, see above) — the solver's step bound never passes the optimum."""
    from hetero_sched.milp.exhaustive import set_partitions

    lat = _lat(gpus=8, overlap_param_gather=overlap)
    configs = [(tp, cp) for tp in (1, 2, 4, 8) for cp in range(1, 8 // tp + 1)]
    rng = np.random.default_rng(4)
    for _ in range(3):
        lengths = [int(x) for x in np.exp(rng.uniform(np.log(700), np.log(40000), size=3))]
        best = np.inf
        for part in set_partitions(list(range(3))):
            for shapes in itertools.product(configs, repeat=len(part)):
                if sum(tp * cp for tp, cp in shapes) > 8 or any(
                        max(lengths[i] for i in block) > lat.max_tokens(tp, cp) for (tp, cp), block in zip(shapes, part)):
                    continue
                best = min(best, hs.Plan.build(lengths, [(tp, cp, b) for (tp, cp), b in zip(shapes, part)],
                                               lat).step_ms)
        plan = hs.solve(lengths, lat.cluster, lat, time_limit_s=3, threads=1)
        assert plan.solver.step_bound_ms <= best * (1 + 1e-9) <= plan.step_ms * (1 + 1e-9), lengths
