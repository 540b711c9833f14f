"""check-model: the closed loop on CPU (a CPU calibration predicts the CPU layers it was made on), the
layers it times are the runtime's, the recompute setting is one parameter, and bad input exits 2."""
import dataclasses
import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

import hetero_sched as hs
from hetero_sched.cli import main
from hetero_sched.latency.kernels import reference_document

torch = pytest.importorskip("torch")

EXE = shutil.which("hetero-sched") or os.path.join(os.path.dirname(sys.executable), "hetero-sched")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The command of the issue, in a scratch folder, with a umask of 027 (files must honour it)."""
    folder = tmp_path_factory.mktemp("check")
    r = subprocess.run(f"umask 027 && exec '{EXE}' check-model --device cpu --quick --out check.json", shell=True,
                       capture_output=True, text=True, cwd=folder, timeout=300, check=False,
                       env={**os.environ, "COLUMNS": "140"})
    return folder, r


def test_closed_loop_on_cpu(quick_run):
    """≥ 4 lengths, predicted and measured growing with length, median |error| ≤ 30 %."""
    folder, r = quick_run
    assert r.returncode == 0, r.stderr
    doc = json.loads((folder / "check.json").read_text())
    rows = doc["rows"]
    assert len(rows) >= 4
    predicted = [row["predicted_ms"] for row in rows]
    measured = [row["measured_ms"] for row in rows]
    assert all(b > a for a, b in zip(predicted, predicted[1:])), predicted
    assert all(b > a for a, b in zip(measured, measured[1:])), measured
    errors = sorted(abs(p / m - 1) for p, m in zip(predicted, measured))
    assert np.median(errors) == pytest.approx(doc["median_abs_error"])
    assert doc["median_abs_error"] <= 0.30, rows
    assert "median |error|" in r.stdout and "measured ms" in r.stdout


def test_check_json_records_device_versions_and_calibration(quick_run):
    import hashlib

    folder, _ = quick_run
    doc = json.loads((folder / "check.json").read_text())
    calib = folder / "check.calibration.json"
    assert doc["calibration"]["sha256"] == hashlib.sha256(calib.read_bytes()).hexdigest()
    assert doc["calibration"]["made_here"] and doc["device"]["kind"] == "cpu"
    assert doc["software"]["torch"] == torch.__version__ and doc["software"]["attention"] == "torch-sdpa"
    assert doc["shape"]["hidden"] == 512 and doc["shape"]["heads"] == 4 and doc["recompute"] == "full"
    assert all("predicted_gb" not in row for row in doc["rows"])  # memory is measured on CUDA only
    # written atomically with the umask honoured (027: no bits for others), no temporary file left behind
    for path in (folder / "check.json", calib):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in folder.iterdir()) == ["check.calibration.json", "check.json"]
    # the calibration profiled here is one the step model reads
    hs.latency_model(hs.ModelSpec.from_dict(doc["shape"]), hs.Cluster(gpus=8), calibration=calib)


def test_the_timed_layer_is_the_runtimes_block():
    """The fused-attention block computes what runtime/model.py's Block computes (one document)."""
    from hetero_sched.check_model import attention_kernel, build_stack
    from hetero_sched.runtime.model import Block, TinyConfig

    shape = hs.ModelSpec(name="t", layers=1, hidden=64, heads=4, kv_heads=2, ffn=96, vocab=50)
    kernel, impl = attention_kernel(torch, "cpu")
    stack = build_stack(torch, shape, 1, "cpu", torch.float64, kernel)
    ref = Block(TinyConfig(vocab=50, hidden=64, layers=1, heads=4, kv_heads=2, ffn=96)).double()
    ref.load_state_dict(stack.blocks[0].state_dict())
    x, pos = torch.randn(37, 64, dtype=torch.float64), torch.arange(37)
    doc = torch.zeros(37, dtype=torch.long)
    assert impl == "torch-sdpa"
    torch.testing.assert_close(stack.blocks[0](x, pos, doc), ref(x, pos, doc), rtol=1e-10, atol=1e-10)
    loss = stack.loss(torch.randint(50, (37,)), 1, checkpointed=True)
    loss.backward()
    assert all(p.grad is not None for p in stack.blocks[0].parameters())


class _FakeBench:
    """Stands in for the timed layers: records what was asked, answers fixed times."""

    def __init__(self):
        self.asked = []

    def per_layer_ms(self, L, n1, checkpointed, gpus):
        self.asked.append(checkpointed)
        return (2.0 if checkpointed else 1.0), None


@pytest.mark.parametrize("recompute", ["full", "auto"])
def test_recompute_is_one_parameter(tmp_path, recompute):
    """'full' times checkpointed layers against the model's k = layers; 'auto' times what the full model's
    k/layers says (0 for a short micro-batch that fits) against the model's own charge for that k."""
    from hetero_sched.check_model import _has_recompute_choice, _row, quick_shape

    if not _has_recompute_choice():
        pytest.skip("this step model has no recompute choice")
    (tmp_path / "c.json").write_text(json.dumps(reference_document()))
    shape = quick_shape(hs.ModelSpec.preset("llama3-8b"))
    cluster = hs.Cluster(gpus=8)

    def lat(layers):
        return hs.latency_model(dataclasses.replace(shape, layers=layers), cluster, calibration=tmp_path / "c.json",
                                recompute=recompute)
    lats, bench = {1: lat(1), 2: lat(2)}, _FakeBench()
    row = _row(bench, lat(shape.layers), lats, 4096, 1, 2, 8)
    k = 2 if recompute == "full" else 0
    expect = (lats[2].overhead_ms(1, 1) + lats[2].seq_latency_ms(4096, 1, 1, recompute_layers=k)
              - lats[1].overhead_ms(1, 1) - lats[1].seq_latency_ms(4096, 1, 1, recompute_layers=k // 2))
    assert row.predicted_ms == pytest.approx(expect)
    assert bench.asked == [recompute == "full"]
    assert row.measured_ms == (2.0 if recompute == "full" else 1.0)
    assert row.recomputed_fraction == (1.0 if recompute == "full" else 0.0)


def test_quick_shape_keeps_head_dim_and_gqa_ratio():
    from hetero_sched.check_model import quick_shape

    s = quick_shape(hs.ModelSpec.preset("llama3-8b"))
    assert (s.hidden, s.heads, s.kv_heads, s.ffn, s.head_dim, s.layers) == (512, 4, 1, 1792, 128, 32)
    s = quick_shape(hs.ModelSpec.preset("llama2-13b"))
    assert (s.heads, s.kv_heads, s.head_dim) == (5, 5, 128)


@pytest.mark.parametrize("args,needle", [
    (["--model", "nope"], "unknown model"),
    (["--calibration", "{bad}"], "cannot read calibration"),
    (["--calibration", "{other}"], "not a hetero-sched calibration"),
    (["--calibration", "{missing}"], "cannot read calibration"),
    (["--lengths", "12x"], "not a positive integer"),
    (["--lengths", "1099511627776"], "at most 2,097,152"),
    (["--threads", "0"], "threads"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, needle):
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "other.json").write_text('{"format": "x"}')
    paths = {"bad": tmp_path / "bad.json", "other": tmp_path / "other.json", "missing": tmp_path / "none.json"}
    args = [a.format(**paths) for a in args]
    out = tmp_path / "check.json"
    assert main(["check-model", "--device", "cpu", "--quick", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not out.exists() and not (tmp_path / "check.calibration.json").exists()


def test_no_cuda_exits_2(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert main(["check-model", "--out", str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def _gpu_report():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_report.py"
    spec = importlib.util.spec_from_file_location("gpu_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_report_of_the_cpu_rehearsal(quick_run, tmp_path):
    folder, _ = quick_run
    run = tmp_path / "run"
    run.mkdir()
    doc = json.loads((folder / "check.json").read_text())
    doc["calibration"]["path"] = str(run / "calibration-llama3-8b.json")
    (run / "check-llama3-8b.json").write_text(json.dumps(doc))
    (run / "calibration-llama3-8b.json").write_bytes((folder / "check.calibration.json").read_bytes())
    text, rehearsal = _gpu_report().report(run, 0, 1.0)
    assert rehearsal and "CPU REHEARSAL" in text and "| 1,024 |" in text and "predicted GB" not in text


def test_gpu_report_of_a_cuda_run(tmp_path):
    """The GPU path of the report, from a CUDA-shaped check.json and a (reference) calibration: memory
    columns, the capacity line, prices under the calibration against the shipped constants."""
    from hetero_sched.check_model import CheckResult, CheckRow

    run = tmp_path / "run"
    run.mkdir()
    calib = run / "calibration-llama3-8b.json"
    calib.write_text(json.dumps({**reference_document(), "device": {"name": "NVIDIA H200", "memory_gb": 143.8}}))
    model = hs.ModelSpec.preset("llama3-8b")
    result = CheckResult(
        model=model, shape=model, device={"kind": "cuda", "name": "NVIDIA H200", "memory_gb": 143.8},
        software={"torch": "2.x", "cuda": "12.x", "python": "3.12", "attention": "flash-attn"},
        calibration={"path": str(calib), "sha256": "ab" * 32, "made_here": False, "quick": False},
        recompute="full", layers=(1, 3),
        rows=[CheckRow(length=1024, predicted_ms=10.0, measured_ms=11.0, predicted_gb=40.0, measured_gb=38.5)],
        capacity={"tokens": 100000, "layers": 32, "gpus": 8, "predicted_gb": 120.0, "usable_gb": 129.4,
                  "device_gb": 143.8, "predicted_ms": 40000.0, "fits": True, "measured_gb": 110.0,
                  "measured_ms": 42000.0})
    (run / "check-llama3-8b.json").write_text(json.dumps(result.to_dict()))
    text, rehearsal = _gpu_report().report(run, 0, 1.0)
    assert not rehearsal and "NVIDIA H200" in text and "| 1,024 | 10.00 | 11.00 | -9.1% | 40.0 | 38.5 |" in text
    assert "100,000-token micro-batch" in text and "fits: peak 110.0 GB" in text
    assert "calibration vs shipped H100 constants" in text
