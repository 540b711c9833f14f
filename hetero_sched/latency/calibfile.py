"""What a calibration file (`hetero-sched profile`) must hold before the step model reads it: every field
present, finite, positive where the model divides by it or takes its logarithm, increasing where it
interpolates along it. Errors name the field's path (`gemm.peak_tflops`, `nccl.all_reduce[3]`)."""
from __future__ import annotations

import math

from . import constants as K

NCCL_KINDS = ("all_reduce", "send_recv")
NCCL_ROW = ("workers", "devices_per_node", "bytes", "time_ms")


def check_document(data: dict) -> None:
    """ValueError naming the first field of a calibration document the step model cannot use."""
    _check_device(data.get("device"))
    gemm = _object(data, "gemm")
    _number(gemm, "gemm", "floor_ms", positive=False)
    _number(gemm, "gemm", "peak_tflops")
    _number(gemm, "gemm", "m_half", positive=False)
    pointwise = _object(data, "pointwise")
    for op in K.POINTWISE:
        _pair(pointwise, op)
    _check_attention(_object(data, "attention"))
    _check_nccl(data.get("nccl"))


def _check_device(device) -> None:
    if device is None:
        return
    if not isinstance(device, dict):
        raise ValueError(f"device must be an object, got {_short(device)}")
    if device.get("memory_gb") is not None:
        _number(device, "device", "memory_gb")


def _check_attention(att: dict) -> None:
    seqlen = _list(att, "attention", "fwd_seqlen")
    tflops = _list(att, "attention", "fwd_tflops")
    for name, values in (("fwd_seqlen", seqlen), ("fwd_tflops", tflops)):
        for k, x in enumerate(values):
            _positive(x, f"attention.{name}[{k}]")
    if len(tflops) != len(seqlen):
        raise ValueError(f"attention.fwd_tflops has {len(tflops)} values for {len(seqlen)} fwd_seqlen")
    for k in range(1, len(seqlen)):  # the model interpolates along the sequence length
        if seqlen[k] <= seqlen[k - 1]:
            raise ValueError(f"attention.fwd_seqlen must increase: [{k - 1}] is {seqlen[k - 1]}, [{k}] is {seqlen[k]}")
    _number(att, "attention", "bwd_rate")
    _number(att, "attention", "floor_ms", positive=False)


def _check_nccl(nccl) -> None:
    if nccl is None:
        return
    if not isinstance(nccl, dict):
        raise ValueError(f"nccl must be an object, got {_short(nccl)}")
    unknown = sorted(set(nccl) - set(NCCL_KINDS))
    if unknown:
        raise ValueError(f"nccl.{unknown[0]} is not a collective this tool reads ({', '.join(NCCL_KINDS)})")
    for kind, rows in nccl.items():
        if not isinstance(rows, list):
            raise ValueError(f"nccl.{kind} must be a list of [{', '.join(NCCL_ROW)}] rows, got {_short(rows)}")
        for k, row in enumerate(rows):
            _check_nccl_row(row, f"nccl.{kind}[{k}]")


def _check_nccl_row(row, where: str) -> None:
    if not isinstance(row, list) or len(row) != len(NCCL_ROW):
        raise ValueError(f"{where} must be [{', '.join(NCCL_ROW)}], got {_short(row)}")
    workers, per_node, nbytes, ms = row
    for name, x in (("workers", workers), ("devices_per_node", per_node)):
        if isinstance(x, bool) or not isinstance(x, int) or x < 1:
            raise ValueError(f"{where}: {name} must be a positive integer, got {_short(x)}")
    if per_node > workers:
        raise ValueError(f"{where}: devices_per_node {per_node} exceeds workers {workers}")
    _positive(nbytes, f"{where}: bytes")
    _positive(ms, f"{where}: time_ms")


# ---- fields --------------------------------------------------------------------------------------------------
def _object(parent: dict, name: str) -> dict:
    if name not in parent:
        raise ValueError(f"{name} is missing")
    if not isinstance(parent[name], dict):
        raise ValueError(f"{name} must be an object, got {_short(parent[name])}")
    return parent[name]


def _list(parent: dict, where: str, name: str) -> list:
    if name not in parent:
        raise ValueError(f"{where}.{name} is missing")
    value = parent[name]
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}.{name} must be a non-empty list of numbers, got {_short(value)}")
    return value


def _number(parent: dict, where: str, name: str, positive: bool = True) -> float:
    if name not in parent:
        raise ValueError(f"{where}.{name} is missing")
    return _positive(parent[name], f"{where}.{name}", strict=positive)


def _pair(pointwise: dict, op: str) -> None:
    where = f"pointwise.{op}"
    if op not in pointwise:
        raise ValueError(f"{where} is missing")
    pair = pointwise[op]
    if not isinstance(pair, list) or len(pair) != 2:
        raise ValueError(f"{where} must be [floor_ms, ms per token-element], got {_short(pair)}")
    _positive(pair[0], f"{where}[0] (floor_ms)", strict=False)
    _positive(pair[1], f"{where}[1] (ms per token-element)", strict=False)


def _positive(x, where: str, strict: bool = True) -> float:
    """x as a float: a finite number, > 0 (strict) or >= 0."""
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x) or x < 0 or (strict and x == 0):
        raise ValueError(f"{where} must be a finite number {'> 0' if strict else '>= 0'}, got {_short(x)}")
    return float(x)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---- the device it was measured on ----------------------------------------------------------------------------
def device_note(device: dict, gpu: str, path) -> str | None:
    """A line saying that the calibration's device is not the `gpu` preset the cluster names (None when
    they agree). The preset's family name (h100, a100, ...) must appear in the device's name."""
    name = str(device.get("name") or "?")
    family = gpu.split("-")[0].lower()
    if device.get("kind", "cuda") == "cuda" and family in name.lower():
        return None
    kind = device.get("kind")
    measured = f"{name} ({kind})" if kind else name
    return (f"calibration {str(path)!r} was measured on {measured}, not on a {gpu} (--gpu): its curves price "
            f"every kernel; the {gpu} preset gives only what it did not measure")
