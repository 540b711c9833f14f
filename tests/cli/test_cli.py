"""The installed console script, run in a subprocess from a scratch folder."""
import json
import os
import shutil
import subprocess
import sys

import jsonschema
import pytest

from hetero_sched._data import plan_schema

EXE = shutil.which("hetero-sched") or os.path.join(os.path.dirname(sys.executable), "hetero-sched")
SMALL = ["--lengths", "32768,1024,1024,2048", "--gpus", "8", "--time-limit", "3"]


def run(*args, cwd=None, timeout=120):
    return subprocess.run([EXE, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False,
                          env={**os.environ, "COLUMNS": "140"})


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plan")
    path = folder / "plan.json"
    r = run("solve", *SMALL, "--out", str(path), cwd=folder)
    assert r.returncode == 0, r.stderr
    return path


@pytest.mark.parametrize("command", ["", "solve", "compare", "sweep", "validate", "show", "latency"])
def test_help(command):
    r = run(*([command] if command else []), "--help")
    assert r.returncode == 0 and "usage" in r.stdout


def test_solve_prints_the_table_and_baseline(tmp_path):
    r = run("solve", *SMALL, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for word in ("TP", "CP", "ranks", "makespan", "sync", "step", "gap", "best WLB-LLM"):
        assert word in r.stdout


def test_plan_file_matches_the_published_schema_and_validates(plan_file):
    data = json.loads(plan_file.read_text())
    jsonschema.validate(data, plan_schema())
    r = run("validate", str(plan_file))
    assert r.returncode == 0 and "valid" in r.stdout


def test_validate_reports_an_invalid_plan(plan_file, tmp_path):
    data = json.loads(plan_file.read_text())
    data["makespan_ms"] *= 0.5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    r = run("validate", str(bad))
    assert r.returncode == 1 and "makespan_ms" in r.stderr


@pytest.mark.parametrize("content", ["", "{", "[1, 2]", '{"schema_version": 2}', '{"schema_version": 1}'])
def test_validate_unreadable_plan_exits_2(tmp_path, content):
    path = tmp_path / "p.json"
    path.write_text(content)
    r = run("validate", str(path))
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_show_writes_a_gantt_png(plan_file, tmp_path):
    png = tmp_path / "g.png"
    r = run("show", str(plan_file), "--png", str(png))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_compare_lists_homogeneous_configs_and_what_does_not_fit(tmp_path):
    r = run("compare", "--lengths", "32768,1024", "--gpus", "8", "--time-limit", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "does not fit" in r.stdout and "Megatron" in r.stdout and "hetero-sched" in r.stdout


def test_compare_seed_cases():
    r = run("compare", "--seed-cases", "--time-limit", "5")
    assert r.returncode == 0, r.stderr
    assert "1.43x" in r.stdout and "1x64K" in r.stdout


def test_sweep_writes_csv_and_plot_and_resumes(tmp_path):
    csv, png = tmp_path / "s.csv", tmp_path / "s.png"
    args = ["sweep", "--lengths", "32768,1024,1024,4096", "--gpus", "8", "--time-limits", "0.2,0.5",
            "--backends", "cpsat,highs", "--out", str(csv), "--png", str(png)]
    r = run(*args)
    assert r.returncode == 0, r.stderr
    lines = csv.read_text().splitlines()
    assert len(lines) == 5 and lines[0].startswith("backend,time_limit_s,threads,seed")
    assert png.read_bytes()[:4] == b"\x89PNG"
    r = run(*args, "--repeat", "2")  # resumes: only the 4 new seed-1 runs are added
    assert r.returncode == 0 and len(csv.read_text().splitlines()) == 9


def test_latency_table():
    r = run("latency", "--gpus", "16")
    assert r.returncode == 0 and "max tokens" in r.stdout


def test_batch_files(tmp_path):
    files = {"b.txt": "32768\n1024\n", "b.json": "[32768, 1024]", "b.csv": "len\n32768\n1024\n",
             "b.jsonl": '{"length": 32768}\n{"input_ids": [1, 2, 3]}\n'}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        r = run("solve", "--batch", str(tmp_path / name), "--gpus", "8", "--time-limit", "1")
        assert r.returncode == 0, (name, r.stderr)


def test_synthetic_batch():
    r = run("solve", "--synthetic", "prolong:tokens=131072,context=32768,seed=1", "--gpus", "16",
            "--time-limit", "2")
    assert r.returncode == 0, r.stderr


BAD = [
    (["solve", "--lengths", "1024,abc"], "'abc'"),
    (["solve", "--lengths", "1024,0"], "0"),
    (["solve", "--lengths", "1024,-5"], "-5"),
    (["solve", "--lengths", "1024.5"], "1024.5"),
    (["solve", "--lengths", ""], "''"),
    (["solve", "--lengths", "1024", "--gpus", "0"], "0"),
    (["solve", "--lengths", "1024", "--gpus", "-3"], "-3"),
    (["solve", "--lengths", "1024,9000000", "--gpus", "16"], "sequence 1"),
    (["solve", "--lengths", "1024", "--model", "gpt-9"], "gpt-9"),
    (["solve", "--lengths", "1024", "--gpu", "tpu"], "tpu"),
    (["solve", "--lengths", "1024", "--backend", "gurobi"], "gurobi"),
    (["solve", "--lengths", "1024", "--time-limit", "-1"], "-1"),
    (["solve", "--batch", "missing.txt"], "missing.txt"),
    (["solve", "--lengths", "1024", "--out", "no/such/folder/plan.json"], "no/such/folder"),
    (["solve"], "exactly one"),
    (["solve", "--lengths", "1024", "--synthetic", "prolong:tokens=10"], "exactly one"),
    (["solve", "--synthetic", "uniform:n=3"], "uniform"),
    (["solve", "--lengths", "1024", "--gpus", "16", "--model", "llama2-70b"], "cannot fit"),
    (["sweep", "--lengths", "1024", "--backends", "cpsat,foo"], "foo"),
    (["sweep", "--lengths", "1024", "--time-limits", "1,x"], "'x'"),
    (["show", "missing.json"], "missing.json"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_exits_2_with_one_line(tmp_path, args, needle):
    r = run(*args, cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert needle in r.stderr
    assert list(tmp_path.iterdir()) == []  # no partial output


@pytest.mark.parametrize("name,text", [("empty.txt", ""), ("trunc.json", "[32768, 10"), ("shape.json", '{"a": 1}'),
                                       ("text.txt", "32768\nhello\n"), ("two.csv", "a,b\n1,2\n"),
                                       ("neg.jsonl", '{"length": -4}\n')])
def test_bad_batch_files_exit_2(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    r = run("solve", "--batch", str(tmp_path / name), "--out", str(tmp_path / "p.json"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "p.json").exists()
