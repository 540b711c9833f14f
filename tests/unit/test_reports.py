"""What the sweep CSV and the dataset summary say: columns named by what they measure, honest axes."""
import csv

import numpy as np
import pytest

import hetero_sched as hs
from hetero_sched.sweep import FIELDS, OLD_FIELDS, load_rows, run_sweep


def test_the_sweep_csv_names_each_bound_and_baseline_by_its_objective(tmp_path):
    lat = hs.latency_model(hs.ModelSpec.preset("llama3-8b"), hs.Cluster(gpus=8))
    rows = run_sweep([32768, 1024, 2048], lat, ["cpsat"], [0.2], 1, 1, tmp_path / "s.csv", None)
    header = (tmp_path / "s.csv").read_text().splitlines()[0].split(",")
    assert header == FIELDS and "bound_ms" not in header and "baseline_ms" not in header
    (r,) = rows
    assert r["makespan_bound_ms"] <= r["makespan_ms"] and r["step_bound_ms"] <= r["step_ms"]
    assert r["baseline_step_ms"] >= r["step_ms"] - 1e-9


def test_an_older_sweep_csv_resumes_under_the_named_columns(tmp_path):
    path = tmp_path / "old.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(OLD_FIELDS)
        w.writerow(["k", "step", "cpsat", 1.0, 2, 0, 100.0, 104.0, 0.01, "feasible", 0.5, 105.0, 120.0])
    (r,) = load_rows(path, "k")
    assert r["step_bound_ms"] == 104.0 and r["baseline_step_ms"] == 120.0
    assert np.isnan(r["makespan_bound_ms"]) and np.isnan(r["baseline_makespan_ms"])


def test_summary_axes_count_in_integers_and_say_when_nothing_was_delayed():
    pytest.importorskip("matplotlib")
    from hetero_sched.dataset import summary_figure

    s = {"per_step_speedup": [1.01, 1.05, 1.2]}  # 3 steps: matplotlib's default ticks fell on 0.5
    fig = summary_figure(s, np.zeros(40, dtype=int))
    counts, delays = fig.axes
    assert all(float(t).is_integer() for t in counts.get_yticks())
    assert not delays.patches and "no document delayed" in " ".join(t.get_text() for t in delays.texts)
    fig = summary_figure(s, np.array([0] * 30 + [1, 2, 2]))
    assert delays is not fig.axes[1] and fig.axes[1].patches
    assert all(float(t).is_integer() for t in fig.axes[1].get_xticks())
