"""Cutting a dataset into steps, with and without WLB-LLM's outlier delay."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetero_sched.dataset import StepRule, make_steps


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 200_000), min_size=1, max_size=300), budget=st.integers(1000, 300_000),
       delay=st.integers(0, 5), factor=st.floats(1.5, 8), shuffle=st.one_of(st.none(), st.integers(0, 9)))
def test_every_document_once_and_delays_bounded(lengths, budget, delay, factor, shuffle):
    rule = StepRule(tokens_per_step=budget, context=131072, delay_steps=delay, outlier_factor=factor, shuffle=shuffle)
    steps, delays = make_steps(lengths, rule)
    assert sorted(r for s in steps for r in s) == list(range(len(lengths)))
    assert all(steps) and max(delays.values()) <= delay
    assert set(delays) == set(range(len(lengths)))


def test_without_delay_steps_follow_file_order_and_budget():
    lengths = [100, 200, 300, 400, 50, 50]
    steps, delays = make_steps(lengths, StepRule(tokens_per_step=500, context=1000))
    assert steps == [[0, 1], [2], [3, 4, 5]] and set(delays.values()) == {0}


def test_delay_spreads_outliers_over_steps():
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.integers(500, 2000, 400)]
    lengths[10:22] = [60_000] * 12  # a burst of outliers early in the file
    rule = {"tokens_per_step": 300_000, "context": 131072}
    plain, _ = make_steps(lengths, StepRule(**rule))
    delayed, delays = make_steps(lengths, StepRule(**rule, delay_steps=3))
    crowd = lambda steps: max(sum(lengths[r] > 10_000 for r in s) for s in steps)
    assert crowd(delayed) < crowd(plain) and max(delays.values()) <= 3


@pytest.mark.parametrize("bad", [{"tokens_per_step": 0}, {"context": -1}, {"delay_steps": -2},
                                 {"outlier_factor": 0.5}, {"shuffle": -1}, {"shuffle": 1.5}])
def test_bad_rules(bad):
    with pytest.raises(ValueError):
        StepRule(**{"tokens_per_step": 1000, "context": 1000, **bad})


def test_ahead_planner_yields_in_order_and_falls_back_when_late(monkeypatch):
    import hetero_sched as hs
    from hetero_sched.dataset import AheadPlanner

    lat = hs.latency_model(hs.ModelSpec.preset("llama3-8b"), hs.Cluster(gpus=16))
    steps = [[32768, 1024, 2048], [8192] * 4, [1024] * 8]
    planner = AheadPlanner(steps, lat.cluster, lat, lookahead=2, workers=1, time_limit_s=2)
    plans = list(planner)
    assert [p.lengths for p in plans] == steps and all(p.validate() == [] for p in plans)
    assert planner.served == 3
    monkeypatch.setattr(AheadPlanner, "GRACE_S", 0.0)
    late = AheadPlanner(steps, lat.cluster, lat, lookahead=1, workers=1, time_limit_s=0.001)
    plans = list(late)  # a fresh process pool cannot answer within a millisecond
    assert late.late >= 1 and [p.lengths for p in plans] == steps
    assert all(p.validate() == [] for p in plans)


def test_steps_are_planned_with_the_calibration_given(tmp_path):
    """plan-dataset's workers rebuild the step model from PlanOptions: a calibration must travel with it."""
    import json

    import hetero_sched as hs
    from hetero_sched.dataset import PlanOptions, plan_step
    from hetero_sched.latency.kernels import reference_document

    doc = reference_document()
    doc["gemm"]["peak_tflops"] /= 2
    (tmp_path / "c.json").write_text(json.dumps(doc))
    cluster = hs.Cluster(gpus=16)
    opts = {"model": hs.ModelSpec.preset("llama3-8b").to_dict(), "cluster": cluster.to_dict(), "work_limit": 0.2}
    plain = json.loads(plan_step(0, [8192, 1024], [0, 1], PlanOptions(**opts)))
    slow = json.loads(plan_step(0, [8192, 1024], [0, 1], PlanOptions(**opts, calibration=str(tmp_path / "c.json"))))
    assert slow["latency_model"].get("calibration_sha256") and slow["makespan_ms"] > plain["makespan_ms"]


def test_a_dataset_whose_steps_would_exceed_the_budget_is_refused(tmp_path):
    """--tokens-per-step below --context: a longer document would get a step of its own, over the budget."""
    import hetero_sched as hs
    from hetero_sched.dataset import PlanOptions, plan_dataset

    opts = PlanOptions(model=hs.ModelSpec.preset("llama3-8b").to_dict(), cluster=hs.Cluster(gpus=8).to_dict())
    with pytest.raises(ValueError, match="document 1 has 32768 tokens after truncation"):
        plan_dataset([1000, 40000, 2000], StepRule(tokens_per_step=16384, context=32768), opts, tmp_path / "out")
    assert not (tmp_path / "out").exists()
