"""NCCL collectives as smooth, monotone curves fitted on measured timings (vidur H100 tables): latency +
size / bandwidth per regime, no steps (interpolating the raw table carried a protocol step at 128 KB
into the planner: 1K tokens on TP8 cost 17.1 ms at CP4 and 6.1 ms at CP5).

- send/recv (the CP ring): t(b) = min_r (α_r + b / β_r), the least concave majorant of the medians per
  half-octave of message size. Concave, so c·(t(b/c) − t(0)) never falls as c grows: splitting a
  sequence over more CP ranks never lowers its GPU-time through the ring.
- all-reduce (TP): t(b) = max(α, α₂ + b / β): a latency floor, then a bandwidth line (least relative
  squares above the knee that fits best). The measured TP all-reduce is flat up to the knee (0.03-0.04 ms
  up to 256 KB-4 MB), so fewer tokens per CP rank can cost a TP group the same latency: the one cited
  effect by which a sequence's GPU-time may fall (by < 1 %) as CP grows.
Beyond the largest measured message the last regime's bandwidth applies. Fit errors against every
measurement: benchmarks/results/calibration_*.md.
"""
from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd

from .._data import model_data_path


class NcclCurve:
    """Time (ms) of one collective of `bytes` for a fixed (kind, workers, devices_per_node): piecewise
    linear in bytes through `knots`/`values`, extended by the first regime's line down to 0 bytes and
    the last regime's bandwidth beyond."""

    def __init__(self, sizes: np.ndarray, times_ms: np.ndarray, kind: str = "send_recv") -> None:
        sizes, times = np.asarray(sizes, float), np.asarray(times_ms, float)
        knots = _latency_bandwidth(sizes, times) if kind == "all_reduce" else \
            _upper_concave_hull(*_half_octave_medians(sizes, times))
        self.knots, self.values = knots[:, 0], knots[:, 1]
        slopes = np.diff(self.values) / np.diff(self.knots) if len(self.knots) > 1 else np.array([0.0])
        self.tail_ms_per_byte = float(max(slopes[-1], 0.0))
        self.zero_ms = max(0.0, float(self.values[0] - max(slopes[0], 0.0) * self.knots[0]))

    def __call__(self, nbytes):
        b = np.asarray(nbytes, dtype=float)
        inside = np.interp(b, self.knots, self.values)
        below = self.zero_ms + b * (self.values[0] - self.zero_ms) / self.knots[0]
        beyond = self.values[-1] + (b - self.knots[-1]) * self.tail_ms_per_byte
        return np.where(b < self.knots[0], below, np.where(b > self.knots[-1], beyond, inside))

    @property
    def floor_ms(self) -> float:
        """t(0): the latency a message pays whatever its size."""
        return self.zero_ms

    def regimes(self) -> list[tuple[float, float]]:
        """(latency ms, bandwidth GB/s) of each linear piece, smallest messages first (inf: flat)."""
        if len(self.knots) == 1:
            return [(float(self.values[0]), float("inf"))]
        out = []
        for k in range(len(self.knots) - 1):
            slope = (self.values[k + 1] - self.values[k]) / (self.knots[k + 1] - self.knots[k])
            out.append((float(self.values[k] - slope * self.knots[k]), float("inf") if slope <= 0 else 1e-6 / slope))
        return out


def _latency_bandwidth(sizes: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Knots of max(α, α₂ + b/β): α the median time up to the knee, (α₂, β) least relative squares
    from the knee up; the knee (a power of two, 64 KB-16 MB) with the least mean relative error wins."""
    best = None
    for knee in 2.0 ** np.arange(16, 25):
        low, high = sizes <= knee, sizes >= knee
        if low.sum() < 3 or high.sum() < 3:
            continue
        alpha = float(np.median(times[low]))
        A = np.stack([np.ones(high.sum()), sizes[high]], axis=1) / times[high][:, None]
        (a2, slope), *_ = np.linalg.lstsq(A, np.ones(high.sum()), rcond=None)
        slope = max(float(slope), 1e-15)
        fit = np.maximum(alpha, a2 + slope * sizes)
        score = float(np.mean(np.abs(fit / times - 1)))
        if best is None or score < best[0]:
            best = (score, alpha, float(a2), slope)
    if best is None:  # too few measurements for two regimes: a single line through the medians
        return _upper_concave_hull(*_half_octave_medians(sizes, times))
    _, alpha, a2, slope = best
    lo, hi = float(sizes.min()), float(sizes.max())
    cross = min(max((alpha - a2) / slope, lo), hi)  # where the bandwidth line leaves the latency floor
    pts = [(lo, max(alpha, a2 + slope * lo))] + ([(cross, alpha)] if lo < cross < hi else [])
    return np.array(pts + [(hi, max(alpha, a2 + slope * hi))])


def _half_octave_medians(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median size and time of the measurements in each half-octave of size (robust to single spikes)."""
    order = np.argsort(x)
    x, y = x[order], y[order]
    bins = np.floor(2 * np.log2(x)).astype(int)
    keys = np.unique(bins)
    return (np.array([np.median(x[bins == k]) for k in keys]), np.array([np.median(y[bins == k]) for k in keys]))


def _upper_concave_hull(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Vertices of the least concave majorant of the points (x increasing), made non-decreasing."""
    pts: list[tuple[float, float]] = []
    for p in zip(x, np.maximum.accumulate(y)):
        while len(pts) >= 2:
            (x1, y1), (x2, y2) = pts[-2], pts[-1]
            if (y2 - y1) * (p[0] - x1) <= (p[1] - y1) * (x2 - x1):
                pts.pop()  # the middle point lies on or under the chord: not a vertex
            else:
                break
        pts.append(p)
    return np.array(pts)


@cache
def nccl_curve(gpu: str, kind: str, workers: int, devices_per_node: int) -> NcclCurve:
    table = _nccl_table(gpu, kind)
    rows = table[(table.num_workers == workers) & (table.devices_per_node == devices_per_node)]
    if rows.empty:
        raise ValueError(f"no measured {kind} for {workers} workers, {devices_per_node} per node on {gpu}")
    return NcclCurve(rows["bytes"].to_numpy(), rows["time_ms"].to_numpy(), kind)


@cache
def _nccl_table(gpu: str, kind: str) -> pd.DataFrame:
    return pd.read_csv(model_data_path(gpu, f"nccl_{kind}.csv"))
