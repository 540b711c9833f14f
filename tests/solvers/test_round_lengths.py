"""round_lengths: the search prices lengths rounded up, so its own bounds hold for those costs only; the
bounds a plan reports are proven on the lengths rounded down, and hold for the true ones."""
import numpy as np
import pytest
from plan_draws import long_tail

import hetero_sched as hs


@pytest.mark.parametrize("objective", ["makespan", "step"])
def test_bounds_under_rounding_hold_for_the_true_lengths(objective):
    lat = hs.latency_model(hs.ModelSpec.preset("llama3-8b"), hs.Cluster(gpus=16))
    lengths = long_tail(np.random.default_rng(3), 48, cap=32768)
    exact = hs.solve(lengths, lat.cluster, lat, objective=objective, threads=1, deterministic_limit=1.0)
    rounded = hs.solve(lengths, lat.cluster, lat, objective=objective, threads=1, deterministic_limit=1.0,
                       round_lengths=4096)
    # rounding up to 4K costs the plan a lot here: the bound must not follow it up
    assert rounded.makespan_ms > exact.makespan_ms
    assert 0 < rounded.solver.makespan_bound_ms <= exact.makespan_ms + 1e-6
    assert rounded.solver.makespan_bound_ms <= rounded.solver.step_bound_ms <= exact.step_ms + 1e-6
    assert rounded.solver.status != "optimal" and "rounded down" in rounded.solver.message
