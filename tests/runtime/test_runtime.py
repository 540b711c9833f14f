"""Executing plans on 8 gloo processes (CPU, float64): gradients equal one process running TinyLlama."""

import pytest

torch = pytest.importorskip("torch")

from hetero_sched.baselines.wlb_llm import wlb_llm_plan

import hetero_sched as hs

WORLD = 8
SEED = 1234
TINY_LAYERS = 2  # the executed model's blocks, unless a scenario names others (layers= of _worker)


def _lat(gpus=WORLD, gpn=8, recompute="auto"):
    return hs.latency_model(hs.ModelSpec.preset("llama3-8b"), hs.Cluster(gpus=gpus, gpus_per_node=gpn),
                            recompute=recompute)


def _plans() -> dict:
    """The plans of the proof: solved (≥ 3 shapes), hand-mixed TP/CP, homogeneous, an idle rank,
    several micro-batches in a group."""
    lat = _lat()
    full = _lat(recompute="full")  # every layer recomputed: this batch then solves to three shapes
    solved = hs.solve([6550, 2306, 5407, 38336, 47587, 2905, 8196], full.cluster, full, time_limit_s=5,
                      objective="makespan", threads=1, deterministic_limit=5.0)
    assert len({(g.tp, g.cp) for g in solved.groups}) >= 3
    mixed = hs.Plan.build([9000, 3000, 2500, 1200, 800, 700], [(2, 2, [0]), (1, 2, [1, 2]), (1, 1, [3, 4]),
                                                                (1, 1, [5])], lat, ranks=[[0, 1, 2, 3], [4, 5], [6], [7]])
    homogeneous = wlb_llm_plan([4096, 3000, 2048, 1024, 1024, 512], lat.cluster, lat, tp=2, cp=2)
    idle = hs.Plan.build([5000, 700, 600], [(4, 1, [0]), (1, 2, [1, 2])], lat, ranks=[[0, 1, 2, 3], [5, 6]])
    many = hs.Plan.build([30000, 30000, 20000, 1000], [(1, 1, [0, 1, 2]), (2, 2, [3])], lat,
                         ranks=[[7], [0, 1, 2, 3]])
    assert sum(g.gpus for g in idle.groups) < WORLD and max(len(g.micro_batches) for g in many.groups) >= 2
    return {"solved": solved, "mixed": mixed, "homogeneous": homogeneous, "idle": idle, "micro-batches": many,
            "recompute": _recompute_plan(lat)}


def _recompute_plan(lat):
    """Micro-batches recomputing none, some and all of the layers (the tiny model's 0, 1 and 2 blocks),
    as recompute='auto' chooses them, beside a CP group and a TP group."""
    plan = hs.Plan.build([30000, 7000, 3000, 1000, 900, 800], [(1, 1, [0, 1, 2]), (2, 2, [3, 4]), (2, 1, [5])],
                         lat, ranks=[[7], [0, 1, 2, 3], [4, 5]])
    ks = sorted(plan.groups[0].recompute_layers)
    assert ks[0] == 0 and 0 < ks[1] < 16 and ks[2] == 32 and plan.validate(lat) == []
    return plan


def _tokens(plan, vocab):
    """Stand-ins for the plan's lengths (CPU cannot afford them): short, but ≥ 2·cp, some not divisible."""
    cp_of = {i: g.cp for g in plan.groups for i in g.sequence_ids}
    gen = torch.Generator().manual_seed(7)
    return [torch.randint(vocab, (2 * cp_of[i] + 3 + (i * 5) % 11,), generator=gen) for i in range(len(plan.lengths))]


def _worker(rank, plans_json, out_dir, layers=None):
    """Run every plan of plans_json (name → JSON) on this rank, with TinyConfig(layers=layers[name]) (default
    TINY_LAYERS); rank 0 also computes the one-process reference. Saves everything to out_dir/rank{rank}.pt."""
    import torch.distributed as dist

    from hetero_sched.runtime import TinyConfig, TinyLlama, init_groups, rank_plan, reference_loss, run_step
    from hetero_sched.runtime.parallel import BLOCK_CALLS

    torch.set_default_dtype(torch.float64)
    results = {}
    for name, text in plans_json.items():
        plan = hs.Plan.from_json(text)
        torch.manual_seed(SEED)
        model = TinyLlama(TinyConfig(layers=(layers or {}).get(name, TINY_LAYERS)))
        tokens = _tokens(plan, model.config.vocab)
        view = rank_plan(plan, rank)
        mine = [tokens[i] if i in view.sequence_ids else torch.zeros(len(tokens[i]), dtype=torch.long)
                for i in range(len(tokens))]  # a rank reads only its own group's sequences
        groups = init_groups(plan)
        BLOCK_CALLS[0] = 0
        grads = run_step(plan, model, mine, groups)
        block_calls = BLOCK_CALLS[0]
        views = [None] * WORLD
        dist.all_gather_object(views, (view.group, view.tp_rank, view.cp_rank, view.pp_rank, view.tp_ranks,
                                       view.cp_ranks))
        reference = {}
        if rank == 0:
            loss = reference_loss(model, tokens)
            loss.backward()
            reference = {n: p.grad for n, p in model.named_parameters()}
            reference["__loss__"] = float(loss)
        results[name] = {"grads": dict(grads), "loss": grads.loss, "views": views, "reference": reference,
                         "block_calls": block_calls, "layers": model.config.layers}
    torch.save(results, f"{out_dir}/rank{rank}.pt")


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    from hetero_sched.runtime.launch import spawn

    out = tmp_path_factory.mktemp("runtime")
    plans = _plans()
    spawn(_worker, WORLD, {k: p.to_json() for k, p in plans.items()}, str(out))
    return plans, [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


NAMES = ["solved", "mixed", "homogeneous", "idle", "micro-batches", "recompute"]


def check_gradients(ranks, name):
    """Every rank's loss and gradients equal the one-process reference."""
    ref = ranks[0][name]["reference"]
    for r in range(WORLD):
        got = ranks[r][name]
        assert got["loss"] == pytest.approx(ref["__loss__"], rel=1e-12)
        for param, g in got["grads"].items():
            scale = ref[param].abs().max().item()
            assert scale > 0, param
            assert (g - ref[param]).abs().max().item() <= 1e-9 * scale, (r, param)


def check_block_calls(plan, ranks, name):
    """Block forwards run on a rank = its stage's blocks per micro-batch + the blocks its k recomputes there
    (checkpointed blocks run their forward again in backward)."""
    from hetero_sched.runtime.parallel import checkpointed_blocks

    layers = ranks[0][name]["layers"]
    for r in range(WORLD):
        owner = [g for g in plan.groups if r in g.ranks]
        expected = sum(layers // owner[0].pp + checkpointed_blocks(k, layers, plan.model.layers, owner[0].pp)
                       for k in owner[0].recompute_layers) if owner else 0
        assert ranks[r][name]["block_calls"] == expected, (name, r)


def check_views(plan, ranks, name):
    """Every rank's coordinates, as its worker saw them, place it where the plan lists it."""
    from hetero_sched.runtime import rank_plan

    views = ranks[0][name]["views"]
    for r, (group, tp_rank, cp_rank, pp_rank, tp_ranks, cp_ranks) in enumerate(views):
        owner = [k for k, g in enumerate(plan.groups) if r in g.ranks]
        assert group == (owner[0] if owner else None)
        if owner:
            g = plan.groups[group]
            stage = g.ranks[pp_rank * g.tp * g.cp:(pp_rank + 1) * g.tp * g.cp]
            assert g.ranks[(pp_rank * g.cp + cp_rank) * g.tp + tp_rank] == r
            assert list(tp_ranks) == stage[cp_rank * g.tp:(cp_rank + 1) * g.tp]
            assert list(cp_ranks) == stage[tp_rank::g.tp]
        assert rank_plan(plan, r).group == group


@pytest.mark.parametrize("name", NAMES)
def test_gradients_equal_one_process(outcome, name):
    check_gradients(outcome[1], name)


@pytest.mark.parametrize("name", NAMES)
def test_each_micro_batch_recomputes_the_plans_blocks(outcome, name):
    plans, ranks = outcome
    check_block_calls(plans[name], ranks, name)


@pytest.mark.parametrize("name", NAMES)
def test_every_rank_sees_the_plan(outcome, name):
    plans, ranks = outcome
    check_views(plans[name], ranks, name)


def _bad_worker(rank, plan_json, small_json, staged_json, out_dir):
    from hetero_sched.runtime import TinyConfig, TinyLlama, run_step

    plan, small, staged = (hs.Plan.from_json(text) for text in (plan_json, small_json, staged_json))
    model = TinyLlama(TinyConfig())
    good = _tokens(plan, 128)
    cases = {
        "world": (small, model, _tokens(small, 128)),
        "not 1-D": (plan, model, [t.view(1, -1) if i == 0 else t for i, t in enumerate(good)]),
        "too short": (plan, model, [t[:3] if i == 1 else t for i, t in enumerate(good)]),  # CP2 needs 4
        "heads": (plan, TinyLlama(TinyConfig(hidden=48, heads=6, kv_heads=6, ffn=96)), good),
        "stages": (staged, TinyLlama(TinyConfig(layers=3)), _tokens(staged, 128)),  # PP2 cannot split 3 blocks
    }
    errors = {}
    for name, (p, m, toks) in cases.items():
        try:
            run_step(p, m, toks)
            errors[name] = None
        except ValueError as exc:
            errors[name] = str(exc)
    torch.save(errors, f"{out_dir}/bad{rank}.pt")


def test_bad_input_raises_the_same_value_error_on_every_rank(tmp_path):
    from hetero_sched.runtime.launch import spawn

    lat = _lat()
    plan = hs.Plan.build([9000, 3000], [(4, 1, [0]), (2, 2, [1])], lat, ranks=[[0, 1, 2, 3], [4, 5, 6, 7]])
    small = hs.Plan.build([4000, 1000], [(1, 2, [0]), (1, 1, [1])], _lat(gpus=4))
    staged = hs.Plan.build([9000, 3000], [(2, 1, 2, [0]), (2, 2, [1])], lat, ranks=[[0, 1, 2, 3], [4, 5, 6, 7]])
    spawn(_bad_worker, WORLD, plan.to_json(), small.to_json(), staged.to_json(), str(tmp_path), timeout_s=60)
    errors = [torch.load(tmp_path / f"bad{r}.pt") for r in range(WORLD)]
    needles = {"world": "world has 8", "not 1-D": "1-D", "too short": "2*cp", "heads": "TP4 does not divide",
               "stages": "PP2 does not divide the tiny model's layers=3"}
    for name, needle in needles.items():
        messages = {e[name] for e in errors}
        assert len(messages) == 1 and needle in messages.pop(), name
