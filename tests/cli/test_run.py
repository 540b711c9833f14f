"""`hetero-sched run` and the torchrun entry (`python -m hetero_sched.runtime`): the same checks before any
process group exists, one line on bad input, and a quiet Ctrl-C."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from test_cli import EXE, run

torch = pytest.importorskip("torch")

ENTRY = [sys.executable, "-m", "hetero_sched.runtime"]
PROG = "python -m hetero_sched.runtime: error:"


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    """A valid 4-GPU plan, and copies broken in the ways a user breaks them."""
    folder = tmp_path_factory.mktemp("plans")
    good = folder / "p4.json"
    r = run("solve", "--lengths", "9000,3000,1000", "--gpus", "4", "--model", "llama2-7b", "--time-limit", "2",
            "--out", str(good))
    assert r.returncode == 0, r.stderr
    data = json.loads(good.read_text())
    dup = json.loads(good.read_text())
    ranks = [r for g in dup["groups"] for r in g["ranks"]]
    dup["groups"][-1]["ranks"][-1] = ranks[0]  # a hand-tampered plan: one rank in two places
    (folder / "dup.json").write_text(json.dumps(dup))
    (folder / "text.json").write_text("not json")
    assert data["cluster"]["gpus"] == 4
    return folder


def entry(*args, rank=0, world=4, env_extra=None, timeout=120, cwd=None):
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "1", **(env_extra or {})}
    if rank is None:
        for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(name)
    # -m puts the working directory first on sys.path: run elsewhere than the checkout, to test the installed package
    return subprocess.run([*ENTRY, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False,
                          cwd=cwd)


@pytest.mark.parametrize("name,world,needle", [
    ("p4.json", 2, "a world of 2 processes does not match the plan's 4 GPUs"),
    ("missing.json", 4, "cannot read plan"),
    ("text.json", 4, "not valid JSON"),
    ("dup.json", 4, "is not a valid plan"),
])
def test_the_torchrun_entry_checks_the_plan_before_any_process_group(plans, name, world, needle):
    r = entry(str(plans / name), world=world, cwd=plans)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(PROG) and needle in r.stderr, r.stderr


@pytest.mark.parametrize("args,needle", [((), "RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT are not set"),
                                         (("--max-tokens", "1"), "--max-tokens"), (("--timeout", "0"), "--timeout"),
                                         (("--bogus",), "unrecognized arguments")])
def test_the_torchrun_entry_refuses_bad_options_in_one_line(plans, args, needle):
    r = entry(str(plans / "p4.json"), *args, rank=None if not args else 0, cwd=plans)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and needle in r.stderr, r.stderr


def test_under_torchrun_rank_0_says_it_once(plans):
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    r = subprocess.run([torchrun, "--nproc-per-node", "2", "-m", "hetero_sched.runtime", str(plans / "p4.json")],
                       capture_output=True, text=True, timeout=180, check=False, cwd=plans)
    assert r.returncode != 0
    assert r.stderr.count(PROG) == 1 and "does not match the plan's 4 GPUs" in r.stderr, r.stderr
    # nothing from the ranks but that line (torchrun itself reports the failed rank and its exit code 2)
    assert "ValueError" not in r.stderr and "gloo" not in r.stderr.lower() and "exitcode  : 2" in r.stderr


@pytest.mark.parametrize("args,needle", [(["--timeout", "0"], "--timeout"), (["--timeout", "-1"], "--timeout"),
                                         (["--nproc", "0"], "--nproc must be >= 1"),
                                         (["--nproc", "-1"], "--nproc must be >= 1"),
                                         (["--max-tokens", "1"], "--max-tokens")])
def test_run_refuses_bad_options_in_one_line(plans, args, needle):
    r = run("run", str(plans / "p4.json"), *args)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and needle in r.stderr, r.stderr


@pytest.mark.parametrize("name,needle", [("dup.json", "is not a valid plan"), ("text.json", "not valid JSON")])
def test_run_refuses_a_broken_plan_in_one_line(plans, name, needle):
    r = run("run", str(plans / name))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and needle in r.stderr, r.stderr


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs /proc to see the workers start")
def test_ctrl_c_during_run_exits_130_with_one_line(plans):
    """Ctrl-C reaches the whole foreground process group: the command and its workers (which are still
    importing torch here, where each used to print a KeyboardInterrupt traceback)."""
    proc = subprocess.Popen([EXE, "run", str(plans / "p4.json"), "--max-tokens", "64"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while len(_children(proc.pid)) < 4 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.count("\n") == 1 and "interrupted" in err and "Traceback" not in err, err


def test_run_takes_the_calibration_the_plan_was_made_with(tmp_path):
    from hetero_sched.latency.kernels import reference_document

    calib = tmp_path / "c.json"
    calib.write_text(json.dumps(reference_document()))
    plan = tmp_path / "p.json"
    r = run("solve", "--lengths", "3000,1000", "--gpus", "2", "--model", "llama2-7b", "--time-limit", "1",
            "--calibration", str(calib), "--out", str(plan))
    assert r.returncode == 0, r.stderr
    r = run("run", str(plan), "--max-tokens", "16")
    assert r.returncode == 2 and "--calibration" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = run("run", str(plan), "--max-tokens", "16", "--calibration", str(calib))
    assert r.returncode == 0 and "loss" in r.stdout, r.stderr
