"""The measured curves behind the step model, as one object: H100 defaults (constants.py), the H100 curves
scaled by datasheet ratios for an uncalibrated GPU preset, or a calibration file written by
`hetero-sched profile`. Every part of the step model reads its numbers from here."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..specs import REFERENCE_GPU, GpuSpec, gpu_preset
from . import constants as K
from .calibfile import check_document
from .nccl import NcclCurve, nccl_curve

CALIBRATION_FORMAT = "hetero-sched-calibration"
CALIBRATION_VERSION = 1


def reference_document() -> dict:
    """A calibration document holding the shipped H100 constants (a template; loading it reproduces the
    default model, measured NCCL curves aside)."""
    return {"format": CALIBRATION_FORMAT, "version": CALIBRATION_VERSION,
            "device": {"name": "h100 (shipped constants)", "memory_gb": 80.0},
            "gemm": {"floor_ms": K.GEMM_FLOOR_MS, "peak_tflops": K.GEMM_PEAK_TFLOPS, "m_half": K.GEMM_M_HALF},
            "pointwise": {op: list(v) for op, v in K.POINTWISE.items()},
            "attention": {"fwd_seqlen": list(K.FA_FWD_SEQLEN), "fwd_tflops": list(K.FA_FWD_TFLOPS),
                          "bwd_rate": K.FA_BWD_RATE, "floor_ms": K.ATTN_FLOOR_MS},
            "nccl": {}}


class ScaledCurve:
    """An NCCL curve with every time multiplied by `factor` (a slower or faster link)."""

    def __init__(self, curve: NcclCurve, factor: float) -> None:
        self.curve, self.factor = curve, factor

    def __call__(self, nbytes):
        return self.curve(nbytes) * self.factor

    @property
    def floor_ms(self) -> float:
        return self.curve.floor_ms * self.factor


@dataclass(kw_only=True, slots=True)
class Kernels:
    gemm_floor_ms: float = K.GEMM_FLOOR_MS
    gemm_peak_tflops: float = K.GEMM_PEAK_TFLOPS
    gemm_m_half: float = K.GEMM_M_HALF
    pointwise: dict = field(default_factory=lambda: dict(K.POINTWISE))
    fa_fwd_seqlen: tuple = K.FA_FWD_SEQLEN
    fa_fwd_tflops: tuple = K.FA_FWD_TFLOPS
    fa_bwd_rate: float = K.FA_BWD_RATE
    attn_floor_ms: float = K.ATTN_FLOOR_MS
    compute_scale: float = 1.0
    """Time multiplier for GEMMs and attention (H100 peak / this GPU's peak when uncalibrated)."""
    memory_scale: float = 1.0
    """Time multiplier for pointwise kernels (H100 HBM bandwidth / this GPU's)."""
    nvlink_scale: float = 1.0
    ib_scale: float = 1.0
    memory_gb: float | None = None
    """Device memory measured by the profiler (None: the preset's)."""
    nccl: dict = field(default_factory=dict)
    """Measured curves: (kind, workers, devices_per_node) → NcclCurve (others come from the preset)."""
    reference_gpu: str = REFERENCE_GPU
    source: str = "H100 constants (latency/constants.py)"
    device: dict = field(default_factory=dict)
    """The calibration file's `device` (name, kind, memory_gb, ...), when one was read."""
    sha256: str | None = None
    """Hash of the calibration file, when one was read."""
    path: str | None = None
    """The calibration file, when one was read (worker processes reload it from here)."""

    @classmethod
    def for_gpu(cls, spec: GpuSpec) -> Kernels:
        """H100 curves, scaled by datasheet ratios unless the preset is calibrated."""
        if spec.calibrated:
            return cls()
        ref = gpu_preset(REFERENCE_GPU)
        return cls(compute_scale=ref.peak_tflops / spec.peak_tflops, memory_scale=ref.hbm_tbps / spec.hbm_tbps,
                   nvlink_scale=ref.nvlink_gbps / spec.nvlink_gbps, ib_scale=ref.ib_gbps / spec.ib_gbps,
                   source=f"H100 curves scaled to {spec.name} by datasheet ratios (uncalibrated)")

    @classmethod
    def from_file(cls, path: str | Path) -> Kernels:
        path = Path(path)
        try:
            raw = path.read_bytes()
            data = json.loads(raw)
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read calibration {str(path)!r}: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise ValueError(f"{str(path)!r} is not a hetero-sched calibration file")
        if data.get("version") != CALIBRATION_VERSION:
            raise ValueError(f"{str(path)!r} has calibration version {data.get('version')!r}; this tool reads "
                             f"{CALIBRATION_VERSION}")
        try:
            check_document(data)
            return cls._from_dict(data, hashlib.sha256(raw).hexdigest(), str(path))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed calibration {str(path)!r}: {exc}") from None

    @classmethod
    def _from_dict(cls, data: dict, sha: str, where: str) -> Kernels:
        gemm, att, pw = data["gemm"], data["attention"], data["pointwise"]
        device = data.get("device") or {}
        missing = sorted(set(K.POINTWISE) - set(pw))
        if missing:
            raise ValueError(f"pointwise operators {missing} are missing")
        nccl = {}
        for kind, rows in (data.get("nccl") or {}).items():
            if kind not in ("all_reduce", "send_recv") or not rows:
                continue
            arr = np.asarray(rows, dtype=float)
            for w, d in {(int(a), int(b)) for a, b in arr[:, :2]}:
                sel = arr[(arr[:, 0] == w) & (arr[:, 1] == d)]
                nccl[(kind, w, d)] = NcclCurve(sel[:, 2], sel[:, 3], kind)
        out = cls(gemm_floor_ms=float(gemm["floor_ms"]), gemm_peak_tflops=float(gemm["peak_tflops"]),
                  gemm_m_half=float(gemm["m_half"]),
                  pointwise={op: (float(pw[op][0]), float(pw[op][1])) for op in K.POINTWISE},
                  fa_fwd_seqlen=tuple(float(x) for x in att["fwd_seqlen"]),
                  fa_fwd_tflops=tuple(float(x) for x in att["fwd_tflops"]), fa_bwd_rate=float(att["bwd_rate"]),
                  attn_floor_ms=float(att["floor_ms"]), memory_gb=device.get("memory_gb"), device=device,
                  nccl=nccl, source=f"calibration {where} ({device.get('name', '?')})", sha256=sha, path=where)
        out._check()
        return out

    def _check(self) -> None:
        numbers = [self.gemm_floor_ms, self.gemm_peak_tflops, self.gemm_m_half, self.fa_bwd_rate, self.attn_floor_ms]
        numbers += [x for pair in self.pointwise.values() for x in pair] + list(self.fa_fwd_tflops)
        if not all(np.isfinite(numbers)) or min(numbers) < 0 or self.gemm_peak_tflops <= 0 or self.fa_bwd_rate <= 0:
            raise ValueError("every fitted constant must be a finite non-negative number (peaks > 0)")
        if len(self.fa_fwd_seqlen) != len(self.fa_fwd_tflops) or len(self.fa_fwd_seqlen) < 1 \
                or min(self.fa_fwd_tflops) <= 0 or list(self.fa_fwd_seqlen) != sorted(self.fa_fwd_seqlen):
            raise ValueError("attention needs increasing fwd_seqlen and positive fwd_tflops of the same length")

    def curve(self, gpu_name: str, kind: str, workers: int, devices_per_node: int):
        """A measured curve of the calibration file, else the reference table scaled to this GPU's links."""
        measured = self.nccl.get((kind, workers, devices_per_node))
        if measured is not None:
            return measured
        base = nccl_curve(self.reference_gpu, kind, workers, devices_per_node)
        factor = self.ib_scale if devices_per_node < workers or (kind == "send_recv" and devices_per_node == 1) \
            else self.nvlink_scale
        return base if factor == 1.0 else ScaledCurve(base, factor)

    @property
    def calibrated_by_file(self) -> bool:
        return self.sha256 is not None
