"""Faults and limits through the console script: interrupts, zero time, determinism, input limits."""
import csv
import json
import signal
import subprocess
import time

import numpy as np
import pytest
from test_cli import EXE, run

import hetero_sched as hs

# 40 log-uniform lengths on 16 GPUs: CP-SAT does not close the gap within seconds, so runs use their limit
HARD = np.exp(np.random.default_rng(7).uniform(np.log(512), np.log(32768), 40)).astype(int)
BATCH = ["--lengths", ",".join(str(x) for x in HARD), "--gpus", "16"]


def test_ctrl_c_during_a_sweep_exits_130_and_leaves_a_whole_csv(tmp_path):
    """SIGINT once the sweep has written its first row (so the CLI's handler is installed, whatever the
    test was started with and however slowly the interpreter starts on a busy machine), with 58 s of
    limits still to run."""
    out = tmp_path / "s.csv"
    proc = subprocess.Popen([EXE, "sweep", *BATCH, "--time-limits", "2,3,4,5,6", "--repeat", "3",
                             "--backends", "cpsat", "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    while not out.exists() and proc.poll() is None and time.monotonic() - started < 120:
        time.sleep(0.05)
    assert out.exists(), "no row written within 120 s"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    rows = list(csv.DictReader(out.open()))  # every row written is complete and the sweep resumes from it
    assert 1 <= len(rows) < 15 and all(r["status"] in ("optimal", "feasible", "baseline") for r in rows)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_zero_time_limit_still_returns_a_valid_plan(tmp_path):
    r = run("solve", *BATCH, "--time-limit", "0", "--out", str(tmp_path / "p.json"))
    assert r.returncode == 0, r.stderr
    plan = hs.Plan.from_json((tmp_path / "p.json").read_text())
    assert plan.validate() == [] and plan.solver.status in ("baseline", "feasible", "optimal")
    assert plan.step_ms <= plan.baseline["step_ms"]


@pytest.mark.parametrize("backend", ["cpsat", "highs"])
def test_work_limit_with_one_thread_is_reproducible(backend):
    args = ["solve", "--lengths", "32768,16384,8192,4096,2048,2048,1024,1024,1024,700,600,500", "--gpus", "16",
            "--threads", "1", "--work-limit", "0.5" if backend == "cpsat" else "50", "--backend", backend,
            "--time-limit", "60", "--json"]
    a, b = run(*args), run(*args)
    assert a.returncode == 0 and b.returncode == 0, a.stderr
    strip = lambda text: {k: v for k, v in json.loads(text).items() if k != "solver"}
    sa, sb = json.loads(a.stdout)["solver"], json.loads(b.stdout)["solver"]
    assert strip(a.stdout) == strip(b.stdout)
    assert {k: v for k, v in sa.items() if k != "wall_s"} == {k: v for k, v in sb.items() if k != "wall_s"}
    assert sa["work_limit"] > 0 and sa["time_limit_s"] is None  # the 60 s were not applied: not recorded


@pytest.mark.parametrize("args,needle", [
    (["--gpus", "16392"], "at most 16384"),
    (["--gpus", "1000000000"], "at most 16384"),  # refused before anything of the cluster's size is built
    (["--threads", "0"], "--threads"),
    (["--work-limit", "-1"], "--work-limit"),
])
def test_input_limits(args, needle):
    r = run("solve", "--lengths", "1024", *args)
    assert r.returncode == 2 and needle in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_too_many_sequences_is_refused():
    from hetero_sched.milp.instance import MAX_SOLVE_SEQUENCES
    lat = hs.latency_model(hs.ModelSpec.preset("llama3-8b"), hs.Cluster(gpus=16))
    with pytest.raises(ValueError, match=str(MAX_SOLVE_SEQUENCES)):
        hs.solve([1024] * (MAX_SOLVE_SEQUENCES + 1), lat.cluster, lat)


@pytest.mark.parametrize("backend", ["cbc", "highs", "cpsat"])
def test_every_backend_keeps_a_short_time_limit(backend):
    """24 GPUs x 256 sequences: CBC took 8.85 s for a 1 s limit when its model was built regardless."""
    start = time.monotonic()
    r = run("solve", "--synthetic", "lognormal:n=256,context=32768,seed=0", "--gpus", "24", "--backend", backend,
            "--time-limit", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["solver"]["wall_s"] <= 1.25
    # the solver's own wall (model building included) keeps the promise; the process around it only has to
    # end: interpreter start and imports take seconds when other processes keep both cores busy
    assert time.monotonic() - start < 1.25 + 15.0
