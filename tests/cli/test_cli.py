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


@pytest.mark.parametrize("command", ["", "solve", "compare", "sweep", "validate", "show", "latency", "run",
                                     "plan-dataset", "profile"])
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
    assert len(lines) == 5 and lines[0].startswith("problem,objective,backend,time_limit_s,threads,seed")
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
    (["solve", "--lengths", "1024", "--lengths", "2048"], "--lengths given twice"),
    (["solve", "--synthetic", "uniform:n=3"], "uniform"),
    (["solve", "--lengths", "1024", "--gpus", "8", "--model", "llama2-70b"], "cannot fit"),
    (["sweep", "--lengths", "1024", "--backends", "cpsat,foo"], "foo"),
    (["sweep", "--lengths", "1024", "--time-limits", "1,x"], "'x'"),
    (["show", "missing.json"], "missing.json"),
    (["solve", "--lengths", "99999999999999999999"], "99999999999999999999"),
    (["latency", "--max-cp", "0"], "--max-cp"),
    (["latency", "--at", "1K,abc"], "abc"),
    (["solve", "--lengths", "1024", "--model", "llama3-8b", "--hf-config", "c.json"], "not both"),
    (["solve", "--lengths", "1024", "--round-lengths", "0"], "--round-lengths"),
    (["solve", "--lengths", "1024", "--time-limit", "inf"], "--time-limit"),
    (["solve", "--lengths", "1024", "--gpus", "abc"], "--gpus"),
    (["solve", "--lengths", "1024", "--objective", "fast"], "--objective"),
    (["sweep", "--lengths", "1024", "--threads", "0"], "--threads"),
    (["solve", "--lengths", "1024", "--work-limit", "nan"], "--work-limit"),
    (["solve", "--lengths", "1024", "--work-limit", "inf"], "--work-limit"),
    (["sweep", "--lengths", "1024", "--time-limits", "1,nan"], "--time-limits"),
    (["bogus"], "bogus"),
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


def test_solve_says_what_ran_and_the_objective(tmp_path):
    r = run("solve", "--synthetic", "lognormal:n=400,context=32768,seed=0", "--gpus", "64", "--time-limit", "3")
    assert r.returncode == 0, r.stderr
    assert "objective step" in r.stdout and "exact MIP not built" in r.stdout


def test_latency_accepts_suffixes_and_writes_csv(tmp_path):
    r = run("latency", "--at", "1K,32K", "--max-cp", "2", "--csv", str(tmp_path / "l.csv"))
    assert r.returncode == 0, r.stderr
    assert "1,024 tok" in r.stdout and "32,768 tok" in r.stdout
    lines = (tmp_path / "l.csv").read_text().splitlines()
    assert lines[0] == "gpu,calibrated,tp,cp,max_tokens,overhead_ms,ms_at_1024,ms_at_32768" and len(lines) > 2


def test_gpu_names_are_case_insensitive():
    r = run("solve", "--lengths", "1024,2048", "--gpu", "H100", "--time-limit", "1")
    assert r.returncode == 0, r.stderr


def test_moe_configs_are_refused(tmp_path):
    cfg = {"num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
           "intermediate_size": 14336, "vocab_size": 32000, "num_local_experts": 8, "num_experts_per_tok": 2}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    r = run("solve", "--lengths", "1024", "--hf-config", str(tmp_path / "c.json"))
    assert r.returncode == 2 and "mixture-of-experts" in r.stderr and r.stderr.count("\n") == 1


def test_written_files_honour_the_umask(tmp_path):
    import stat
    import subprocess as sp
    out = tmp_path / "p.json"
    cmd = f"umask 022 && {EXE} solve --lengths 1024,2048 --time-limit 1 --out {out}"
    assert sp.run(cmd, shell=True, capture_output=True, check=False).returncode == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_sweep_refuses_a_csv_of_another_problem(tmp_path):
    csv = tmp_path / "s.csv"
    base = ["sweep", "--gpus", "8", "--time-limits", "0.2", "--backends", "cpsat", "--out", str(csv)]
    assert run(*base, "--lengths", "32768,1024").returncode == 0
    before = csv.read_text()
    r = run(*base, "--lengths", "32768,2048")
    assert r.returncode == 2 and "another problem" in r.stderr and r.stderr.count("\n") == 1
    assert csv.read_text() == before


def test_round_lengths_prices_upper_bounds_and_plans_true_lengths(tmp_path):
    out = tmp_path / "p.json"
    r = run("solve", "--lengths", "32001,1001,1003,2047", "--gpus", "8", "--round-lengths", "64", "--time-limit", "2",
            "--out", str(out))
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert [s["length"] for s in data["sequences"]] == [32001, 1001, 1003, 2047]
    assert run("validate", str(out)).returncode == 0


def test_compare_sorts_marks_the_best_and_exports(tmp_path):
    r = run("compare", "--lengths", "32768,1024,1024", "--gpus", "8", "--time-limit", "2", "--json",
            "--csv", str(tmp_path / "c.csv"))
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    fits = [x for x in rows if x["fits"]]
    assert [x["step_ms"] for x in fits] == sorted(x["step_ms"] for x in fits)
    assert fits[0]["best"] and sum(x["best"] for x in rows) >= 1
    assert all(not x["fits"] for x in rows[len(fits):])
    assert (tmp_path / "c.csv").read_text().startswith("plan,tp,cp,pp,dp")


def test_show_refuses_an_invalid_plan(plan_file, tmp_path):
    data = json.loads(plan_file.read_text())
    data["groups"][0]["latency_ms"] = 1.0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    r = run("show", str(bad))
    assert r.returncode == 1 and "latency_ms" in r.stderr and "makespan" not in r.stdout


@pytest.mark.parametrize("suffix,magic", [(".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_show_writes_svg_and_pdf(plan_file, tmp_path, suffix, magic):
    path = tmp_path / f"g{suffix}"
    r = run("show", str(plan_file), "--png", str(path))
    assert r.returncode == 0, r.stderr
    assert path.read_bytes()[:len(magic)] == magic


def test_run_executes_a_plan_on_local_workers(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "p.json"
    assert run("solve", "--lengths", "9000,3000,1000", "--gpus", "4", "--model", "llama2-7b", "--time-limit", "2",
               "--out", str(out)).returncode == 0
    r = run("run", str(out), "--nproc", "4", "--max-tokens", "64")
    assert r.returncode == 0, r.stderr
    assert "loss" in r.stdout and "measured s" in r.stdout
    r = run("run", str(out), "--nproc", "3")
    assert r.returncode == 2 and "--nproc 3" in r.stderr
    big = tmp_path / "big.json"
    assert run("solve", "--lengths", "4096", "--gpus", "1024", "--time-limit", "1", "--out", str(big)).returncode == 0
    r = run("run", str(big))
    assert r.returncode == 2 and "torchrun" in r.stderr and r.stderr.count("\n") == 1


def test_module_entry_for_torchrun_has_help():
    pytest.importorskip("torch")
    r = subprocess.run([sys.executable, "-m", "hetero_sched.runtime", "--help"], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0 and "torchrun" in r.stdout


def test_profile_without_cuda_exits_2(tmp_path):
    pytest.importorskip("torch")
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    r = run("profile", "--out", str(tmp_path / "c.json"))
    assert r.returncode == 2 and "no CUDA device" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "c.json").exists()


def test_plans_made_with_a_calibration_validate_with_it(tmp_path):
    from hetero_sched.latency.kernels import reference_document

    (tmp_path / "c.json").write_text(json.dumps(reference_document()))
    out = tmp_path / "p.json"
    r = run("solve", *SMALL, "--calibration", str(tmp_path / "c.json"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    r = run("validate", str(out))  # the file is needed to rebuild the model: missing input, exit 2, one line
    assert r.returncode == 2 and "--calibration" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run("validate", str(out), "--calibration", str(tmp_path / "c.json"))
    assert r.returncode == 0, r.stderr


def test_latency_flags_uncalibrated_presets(tmp_path):
    r = run("latency", "--gpu", "b200", "--max-cp", "1", "--csv", str(tmp_path / "l.csv"))
    assert r.returncode == 0 and "UNCALIBRATED" in r.stdout
    assert (tmp_path / "l.csv").read_text().splitlines()[1].startswith("b200,False")


# ---- issue 25: what a new user hit --------------------------------------------------------------------------
WRONG_TYPES = [(lambda d: d["groups"][0].__setitem__("tp", "1"), "groups[0].tp"),
               (lambda d: d["groups"][0].__setitem__("ranks", None), "groups[0].ranks"),
               (lambda d: d["groups"][0].__setitem__("memory_gb", "x"), "groups[0].memory_gb"),
               (lambda d: d["sequences"][1].__setitem__("length", 10.5), "sequences[1].length"),
               (lambda d: d.pop("groups"), "groups is missing")]


@pytest.mark.parametrize("command", ["validate", "show", "run"])
@pytest.mark.parametrize("mutate,field", WRONG_TYPES, ids=[f for _, f in WRONG_TYPES])
def test_wrong_types_in_a_plan_file_exit_2_naming_the_field(plan_file, tmp_path, command, mutate, field):
    data = json.loads(plan_file.read_text())
    mutate(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    r = run(command, str(bad))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1 and field in r.stderr, r.stderr


def test_show_refuses_an_unknown_image_format_before_printing(plan_file, tmp_path):
    r = run("show", str(plan_file), "--png", str(tmp_path / "g.jpg"))
    assert r.returncode == 2 and r.stdout == "" and ".jpg" in r.stderr and r.stderr.count("\n") == 1


def test_counts_are_pluralised(plan_file, tmp_path):
    data = json.loads(plan_file.read_text())
    data["makespan_ms"] *= 0.5  # one problem: the makespan
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    assert "(1 problem)" in run("validate", str(bad)).stderr
    one = tmp_path / "one.json"
    assert run("solve", "--lengths", "65536", "--gpus", "8", "--time-limit", "1", "--out", str(one)).returncode == 0
    r = run("validate", str(one))
    assert r.returncode == 0 and "(1 group, 1 sequence," in r.stdout, r.stdout


def test_sweep_options_have_help():
    r = run("sweep", "--help")
    text = " ".join(r.stdout.split())
    assert "--time-limits TIME_LIMITS comma-separated time limits" in text
    assert "--backends BACKENDS comma-separated backends" in text


def _calibration(tmp_path, filename="c.json", **device):
    from hetero_sched.latency.kernels import reference_document

    doc = reference_document()
    doc["device"].update(device)
    (tmp_path / filename).write_text(json.dumps(doc))
    return tmp_path / filename


def test_show_and_validate_take_the_calibration_and_check_its_hash(tmp_path):
    calib = _calibration(tmp_path)
    other = _calibration(tmp_path, "other.json", memory_gb=79.0)
    plan = tmp_path / "p.json"
    assert run("solve", *SMALL, "--calibration", str(calib), "--out", str(plan)).returncode == 0
    r = run("show", str(plan), "--calibration", str(calib))
    assert r.returncode == 0 and "calibration c.json" in r.stdout, r.stderr
    for command in ("show", "validate"):
        r = run(command, str(plan), "--calibration", str(other))
        assert r.returncode == 2 and "is not the file the plan was made with" in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1
    r = run("validate", str(plan_file_without_calibration(tmp_path)), "--calibration", str(calib))
    assert r.returncode == 2 and "made without a calibration file" in r.stderr


def plan_file_without_calibration(tmp_path):
    path = tmp_path / "plain.json"
    assert run("solve", *SMALL, "--out", str(path)).returncode == 0
    return path


def test_show_and_validate_take_an_unshipped_table(tmp_path):
    from hetero_sched._data import model_data_path

    table = tmp_path / "t.csv"
    table.write_text(model_data_path("h100", "Llama-2-7b-hf.csv").read_text() + "\n")  # same rows, another hash
    plan = tmp_path / "p.json"
    args = ["--lengths", "8192,1024", "--gpus", "8", "--model", "llama2-7b", "--time-limit", "1"]
    assert run("solve", *args, "--table", str(table), "--out", str(plan)).returncode == 0
    r = run("show", str(plan))  # the file is needed to rebuild the model: missing input, exit 2, one line
    assert r.returncode == 2 and "--table" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    for command in ("show", "validate"):
        assert run(command, str(plan), "--table", str(table)).returncode == 0


def test_solve_names_the_device_a_calibration_was_measured_on(tmp_path):
    calib = _calibration(tmp_path, kind="cpu", name="x86_64")
    r = run("solve", *SMALL, "--gpu", "h200", "--calibration", str(calib))
    assert r.returncode == 0, r.stderr
    assert "8 x x86_64 (calibration c.json" in " ".join(r.stdout.split())
    assert "8 x h200" not in r.stdout and "8 x h100" not in r.stdout
    assert "note: calibration" in r.stderr and "not on a h200" in r.stderr
    same = _calibration(tmp_path, "gpu.json", kind="cuda", name="NVIDIA H100 80GB HBM3")
    r = run("solve", *SMALL, "--calibration", str(same))
    assert r.returncode == 0 and "note:" not in r.stderr and "NVIDIA H100 80GB HBM3" in r.stdout


def test_a_folder_given_as_a_batch_file_says_so(tmp_path):
    r = run("solve", "--batch", str(tmp_path), "--gpus", "8")
    assert r.returncode == 2 and "is a folder, not a file" in r.stderr and r.stderr.count("\n") == 1, r.stderr
