"""Executing plans with pipeline stages on 8 gloo processes (CPU, float64): 1F1B over TP/CP stages, beside
groups without stages, gives the gradients of one process running TinyLlama."""

import pytest

torch = pytest.importorskip("torch")

from test_runtime import WORLD, _lat, _worker, check_block_calls, check_gradients, check_views

import hetero_sched as hs
from hetero_sched.baselines.wlb_llm import wlb_llm_plan


def _plans() -> dict:
    """(a) WLB-LLM-like: two TP2xPP2 groups, several micro-batches recomputing 0 or some layers (recompute
    'auto'); (b) TP2xPP2, TP1xCP2 and TP1xPP2 on scrambled ranks (a next stage on a lower rank);
    (c) two TP1xCP2xPP2 groups, every micro-batch recomputing half of each stage (k = 16 of 32)."""
    lat = _lat()
    lengths = [40000, 30000, 20000, 9000, 5000, 3000]
    homogeneous = hs.Plan.build(lengths, [(2, 1, 2, [0, 2, 4]), (2, 1, 2, [1, 3, 5])], lat)
    mixed = hs.Plan.build([20000, 9000, 3000, 8000, 12000, 6000],
                          [(2, 1, 2, [0, 4]), (1, 2, [1, 2]), (1, 1, 2, [3, 5])], lat,
                          ranks=[[6, 7, 0, 1], [2, 5], [4, 3]])
    staged = hs.Plan.build([30000, 25000, 20000, 12000, 9000, 4000], [(1, 2, 2, [0, 3, 4]), (1, 2, 2, [1, 2, 5])],
                           lat, recompute_layers=16)
    for plan in (homogeneous, mixed, staged):
        assert plan.validate(lat) == [] and all(len(g.micro_batches) >= 2 for g in plan.groups if g.pp > 1)
    assert any(0 < k for g in homogeneous.groups for k in g.recompute_layers)
    assert all(k == 16 for g in staged.groups for k in g.recompute_layers)
    # (d) the WLB-LLM baseline's own TP2xCP1xPP2 plan; (e) a solved plan restricted to two stages
    wlb = wlb_llm_plan(lengths, lat.cluster, lat, tp=2, cp=1, pp=2)
    solved = hs.solve(lengths, lat.cluster, lat, pp_degrees=(2,), threads=1, deterministic_limit=2.0)
    for plan in (wlb, solved):
        assert plan.validate(lat) == [] and {g.pp for g in plan.groups} == {2}
    return {"homogeneous PP": homogeneous, "mixed PP": mixed, "all PP": staged, "WLB-LLM PP": wlb,
            "solved PP": solved}


LAYERS = {"all PP": 4}  # two blocks a stage: checkpointing the first of them is a real choice
NAMES = ["homogeneous PP", "mixed PP", "all PP", "WLB-LLM PP", "solved PP"]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    from hetero_sched.runtime.launch import spawn

    out = tmp_path_factory.mktemp("pipeline")
    plans = _plans()
    spawn(_worker, WORLD, {k: p.to_json() for k, p in plans.items()}, str(out), LAYERS)
    return plans, [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("name", NAMES)
def test_pipelined_gradients_equal_one_process(outcome, name):
    check_gradients(outcome[1], name)


@pytest.mark.parametrize("name", NAMES)
def test_each_stage_recomputes_its_share_of_the_plans_layers(outcome, name):
    plans, ranks = outcome
    check_block_calls(plans[name], ranks, name)
    if name == "all PP":  # k = 16 of 32: one of each stage's two blocks, for every micro-batch
        for r in range(WORLD):
            mbs = len(next(g for g in plans[name].groups if r in g.ranks).micro_batches)
            assert ranks[r][name]["block_calls"] == 3 * mbs


@pytest.mark.parametrize("name", NAMES)
def test_every_pipelined_rank_sees_the_plan(outcome, name):
    plans, ranks = outcome
    check_views(plans[name], ranks, name)


def test_stage_views_and_peers():
    from hetero_sched.runtime import rank_plan

    plan = _plans()["mixed PP"]  # group 0: stage 0 = ranks 6, 7, stage 1 = 0, 1; group 2: 4 → 3
    v = rank_plan(plan, 7)
    assert (v.pp, v.pp_rank, v.tp_rank, v.stage_ranks, v.prev_peer, v.next_peer) == (2, 0, 1, (6, 7), None, 1)
    assert v.first_stage and not v.last_stage
    v = rank_plan(plan, 0)
    assert (v.pp_rank, v.tp_rank, v.tp_ranks, v.cp_ranks, v.prev_peer, v.next_peer) == (1, 0, (0, 1), (0,), 6, None)
    assert v.last_stage
    assert (rank_plan(plan, 4).next_peer, rank_plan(plan, 3).prev_peer) == (3, 4)
    v = rank_plan(plan, 5)  # no stages: the whole group is its stage
    assert (v.pp, v.pp_rank, v.cp_rank, v.stage_ranks, v.prev_peer, v.next_peer) == (1, 0, 1, (2, 5), None, None)


@pytest.mark.parametrize("pp,m", [(1, 3), (2, 1), (2, 4), (4, 2), (4, 6)])
def test_one_f_one_b_order(pp, m):
    """Each stage runs every forward and backward once, a backward after its forward, at most pp − s
    micro-batches in flight, and forwards and backwards alternate once the warm-up is over."""
    from hetero_sched.runtime import pipeline_schedule

    for s in range(pp):
        ops = pipeline_schedule(pp, s, m)
        assert sorted(ops) == sorted([("F", j) for j in range(m)] + [("B", j) for j in range(m)])
        assert [j for op, j in ops if op == "F"] == list(range(m)) == [j for op, j in ops if op == "B"]
        in_flight = [sum(1 if op == "F" else -1 for op, _ in ops[:i + 1]) for i in range(len(ops))]
        assert min(in_flight) >= 0 and max(in_flight) == min(pp - s, m)
        warmup = min(pp - s - 1, m)
        assert [op for op, _ in ops[warmup:warmup + 2 * (m - warmup)]] == ["F", "B"] * (m - warmup)
