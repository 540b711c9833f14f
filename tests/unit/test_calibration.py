"""Calibration files: every part of the step model reads them; profile → file → load round-trips; GPU presets."""
import copy
import json

import numpy as np
import pytest

import hetero_sched as hs
from hetero_sched.latency import constants as K
from hetero_sched.latency.kernels import reference_document

LLAMA = hs.ModelSpec.preset("llama3-8b")


def h100_document() -> dict:
    return reference_document()


def lat_with(tmp_path, doc, gpus=16):
    path = tmp_path / "calib.json"
    path.write_text(json.dumps(doc))
    return hs.latency_model(LLAMA, hs.Cluster(gpus=gpus), calibration=path)


def nccl_rows(kind, workers, per_node, scale):
    from hetero_sched.latency.nccl import _nccl_table

    t = _nccl_table("h100", kind)
    t = t[(t.num_workers == workers) & (t.devices_per_node == per_node)]
    return [[workers, per_node, b, ms * scale] for b, ms in zip(t.bytes, t.time_ms)]


def test_the_h100_document_reproduces_the_default_model(tmp_path):
    default = hs.latency_model(LLAMA, hs.Cluster(gpus=16))
    calibrated = lat_with(tmp_path, h100_document())
    for tp, cp in [(1, 1), (2, 4), (8, 2)]:
        for length in (1024, 32768):
            assert calibrated.seq_latency_ms(length, tp, cp) == pytest.approx(default.seq_latency_ms(length, tp, cp))
        assert calibrated.overhead_ms(tp, cp) == pytest.approx(default.overhead_ms(tp, cp))
        assert calibrated.max_tokens(tp, cp) == default.max_tokens(tp, cp)
    assert calibrated.calibrated and "calibration_sha256" in calibrated.describe()


PARTS = {  # part of the file → (how it is changed, what must move)
    "gemm peak": (lambda d: d["gemm"].__setitem__("peak_tflops", K.GEMM_PEAK_TFLOPS / 2),
                  lambda lat: lat.seq_latency_ms(8192, 1, 1)),
    "gemm floor": (lambda d: d["gemm"].__setitem__("floor_ms", K.GEMM_FLOOR_MS * 3), lambda lat: lat.overhead_ms(1, 1)),
    "pointwise": (lambda d: d.__setitem__("pointwise", {op: [a, b * 5] for op, (a, b) in K.POINTWISE.items()}),
                  lambda lat: lat.seq_latency_ms(8192, 1, 1)),
    "attention forward": (lambda d: d["attention"].__setitem__("fwd_tflops", [x / 2 for x in K.FA_FWD_TFLOPS]),
                          lambda lat: lat.seq_latency_ms(65536, 4, 1)),
    "attention backward": (lambda d: d["attention"].__setitem__("bwd_rate", K.FA_BWD_RATE / 2),
                           lambda lat: lat.seq_latency_ms(65536, 4, 1)),
    "attention floor": (lambda d: d["attention"].__setitem__("floor_ms", 1.0), lambda lat: lat.overhead_ms(1, 1)),
    "nccl all-reduce": (lambda d: d["nccl"].__setitem__("all_reduce", nccl_rows("all_reduce", 2, 2, 3.0)),
                        lambda lat: lat.seq_latency_ms(8192, 2, 1)),
    "nccl send/recv": (lambda d: d["nccl"].__setitem__("send_recv", nccl_rows("send_recv", 2, 1, 3.0)),
                       lambda lat: lat.seq_latency_ms(8192, 1, 16)),
    "memory": (lambda d: d["device"].__setitem__("memory_gb", 141.0), lambda lat: lat.max_tokens(1, 1)),
}


@pytest.mark.parametrize("part", list(PARTS))
def test_every_part_of_the_step_model_reads_the_calibration(tmp_path, part):
    change, measure = PARTS[part]
    base = lat_with(tmp_path, h100_document())
    doc = copy.deepcopy(h100_document())
    change(doc)
    (tmp_path / "b").mkdir()
    changed = lat_with(tmp_path / "b", doc)
    assert measure(changed) != pytest.approx(measure(base), rel=1e-3), part


@pytest.mark.parametrize("bad,needle", [("{", "cannot read"), ('{"format": "x"}', "not a hetero-sched"),
                                        (json.dumps({**h100_document(), "version": 9}), "version 9"),
                                        (json.dumps({**h100_document(), "gemm": {"floor_ms": 1}}), "malformed")])
def test_bad_calibration_files(tmp_path, bad, needle):
    path = tmp_path / "c.json"
    path.write_text(bad)
    with pytest.raises(ValueError, match=needle):
        hs.latency_model(LLAMA, hs.Cluster(gpus=16), calibration=path)


def test_profile_round_trips_on_cpu(tmp_path):
    """profile (CPU, quick) → file → load: the step model's curves are exactly the fitted constants."""
    pytest.importorskip("torch")
    from hetero_sched.latency.analytic import block_gemm_shapes, pointwise_widths
    from hetero_sched.profile import profile, write_calibration

    small = hs.ModelSpec(name="small", layers=2, hidden=512, heads=8, kv_heads=4, ffn=1024, vocab=1000)
    doc = profile(small, device="cpu", quick=True, tps=(1, 2))
    write_calibration(doc, tmp_path / "c.json")
    lat = hs.latency_model(small, hs.Cluster(gpus=2), calibration=tmp_path / "c.json")
    g, pw = doc["gemm"], doc["pointwise"]
    for tp in (1, 2):
        for tokens in (100.0, 5000.0):
            gemm = sum(g["floor_ms"] + 2 * n * k * (tokens + g["m_half"]) / (g["peak_tflops"] * 1e9)
                       for n, k in block_gemm_shapes(512, 8, 4, 1024, True, tp).values())
            point = sum(pw[op][0] + pw[op][1] * tokens * w for op, w in pointwise_widths(512, 8, 4, 1024, tp).items())
            assert float(lat.linear_fwd_ms(np.array([tokens]), tp)[0]) == pytest.approx(gemm + point, rel=1e-12)
    a = doc["attention"]
    flops = 2 * 512 * 512 * small.head_dim * small.heads  # one CP rank, 512 tokens: tile-exact
    assert lat._attention_fwd_ms(np.array([512.0]), 1, 1)[0] == pytest.approx(
        flops * (1 + 128 / 512) / (np.interp(np.log2(512), np.log2(a["fwd_seqlen"]), a["fwd_tflops"]) * 1e9))
    assert doc["device"]["kind"] == "cpu" and doc["software"]["attention"] == "torch-sdpa" and doc["quick"]
    # two gloo ranks stand in for NCCL on the CPU path: the curves are measured, loaded and used
    assert {r[0] for r in doc["nccl"]["all_reduce"]} == {2} and doc["nccl"]["send_recv"]
    assert ("all_reduce", 2, 2) in lat.k.nccl and ("send_recv", 2, 2) in lat.k.nccl
    assert "gloo" in doc["nccl_note"]


def test_gpu_presets_are_datasheet_scaled_and_flagged():
    lats = {g: hs.latency_model(LLAMA, hs.Cluster(gpus=16, gpu=g)) for g in ("h100", "a100-80g", "h200", "b200")}
    cost = {g: lat.seq_latency_ms(32768, 4, 2) for g, lat in lats.items()}
    assert cost["a100-80g"] > cost["h100"] > cost["b200"]
    assert lats["h200"].max_tokens(1, 1) > lats["h100"].max_tokens(1, 1)
    assert lats["h100"].calibrated and not any(lats[g].calibrated for g in ("a100-80g", "h200", "b200"))
    assert hs.Cluster(gpus=8, gpu="H200").gpu == "h200"


def _with(change) -> dict:
    doc = copy.deepcopy(h100_document())
    change(doc)
    return doc


BAD_FIELDS = {  # a calibration file broken in one field → the path the error must name
    "negative all-reduce": (lambda d: d["nccl"].__setitem__("all_reduce", nccl_rows("all_reduce", 2, 2, -1.0)),
                            "nccl.all_reduce[0]: time_ms"),
    "negative send/recv": (lambda d: d["nccl"].__setitem__("send_recv", nccl_rows("send_recv", 2, 1, -1.0)),
                           "nccl.send_recv[0]: time_ms"),
    "zero bytes": (lambda d: d["nccl"].__setitem__("send_recv", [[2, 1, 0, 0.01]]), "nccl.send_recv[0]: bytes"),
    "short row": (lambda d: d["nccl"].__setitem__("all_reduce", [[2, 2, 1024]]), "nccl.all_reduce[0] must be"),
    "more per node than workers": (lambda d: d["nccl"].__setitem__("all_reduce", [[2, 4, 1024, 0.01]]),
                                   "devices_per_node 4 exceeds workers 2"),
    "unknown collective": (lambda d: d["nccl"].__setitem__("all_gather", []), "nccl.all_gather"),
    "no gemm": (lambda d: d.pop("gemm"), "gemm is missing"),
    "no peak": (lambda d: d["gemm"].pop("peak_tflops"), "gemm.peak_tflops is missing"),
    "negative peak": (lambda d: d["gemm"].__setitem__("peak_tflops", -5), "gemm.peak_tflops"),
    "text floor": (lambda d: d["gemm"].__setitem__("floor_ms", "fast"), "gemm.floor_ms"),
    "pointwise op": (lambda d: d["pointwise"].pop("mlp_act"), "pointwise.mlp_act is missing"),
    "pointwise slope": (lambda d: d["pointwise"].__setitem__("add", [0.001, -1e-9]), "pointwise.add[1]"),
    "seqlen order": (lambda d: d["attention"].__setitem__("fwd_seqlen", [512, 512, 2048, 4096, 8192, 16384]),
                     "attention.fwd_seqlen must increase"),
    "tflops length": (lambda d: d["attention"].__setitem__("fwd_tflops", [300.0]), "attention.fwd_tflops has 1"),
    "zero tflops": (lambda d: d["attention"]["fwd_tflops"].__setitem__(2, 0), "attention.fwd_tflops[2]"),
    "backward rate": (lambda d: d["attention"].__setitem__("bwd_rate", 0), "attention.bwd_rate"),
    "memory": (lambda d: d["device"].__setitem__("memory_gb", -80), "device.memory_gb"),
}


@pytest.mark.parametrize("case", list(BAD_FIELDS))
def test_every_calibration_field_is_checked_and_named(tmp_path, case):
    change, needle = BAD_FIELDS[case]
    with pytest.raises(ValueError, match="malformed calibration") as info:
        lat_with(tmp_path, _with(change))
    assert needle in str(info.value), str(info.value)


def test_non_finite_calibration_numbers_are_refused(tmp_path):
    path = tmp_path / "calib.json"
    path.write_text(json.dumps(h100_document()).replace('"bwd_rate": 0.725', '"bwd_rate": NaN'))
    with pytest.raises(ValueError, match="attention.bwd_rate must be a finite number"):
        hs.latency_model(LLAMA, hs.Cluster(gpus=16), calibration=path)


def test_a_profiled_cpu_file_still_loads(tmp_path):
    """What `profile --device cpu` writes: memory_gb null, gloo rows for the collectives."""
    doc = _with(lambda d: d.__setitem__("device", {"kind": "cpu", "name": "x86_64", "memory_gb": None, "count": 1}))
    doc["nccl"] = {"all_reduce": nccl_rows("all_reduce", 2, 2, 1.0), "send_recv": nccl_rows("send_recv", 2, 2, 1.0)}
    lat = lat_with(tmp_path, doc)
    assert lat.k.device["kind"] == "cpu" and ("send_recv", 2, 2) in lat.k.nccl
