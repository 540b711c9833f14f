"""NCCL collectives as smooth, monotone curves fitted on measured timings (vidur H100 tables).

A curve is latency + size / bandwidth per regime: t(b) = min_r (α_r + b / β_r), the least concave
majorant of the measurements' medians per half-octave of message size (each regime's line lies on or
above those medians). Concave and increasing, it has no steps: interpolating the raw table carried
a protocol step at 128 KB into the planner (1K tokens on TP8: 17.1 ms at CP4, 6.1 ms at CP5), and a
concave t makes c·(t(b/c) − t(0)) non-decreasing in c, so splitting a sequence over more CP ranks
never lowers its GPU-time through communication. Beyond the largest measured message, the last
regime's bandwidth applies. Fit errors against every measurement: benchmarks/results/calibration_*.md.
"""
from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd

from .._data import model_data_path


class NcclCurve:
    """Time (ms) of one collective of `bytes` for a fixed (kind, workers, devices_per_node)."""

    def __init__(self, sizes: np.ndarray, times_ms: np.ndarray) -> None:
        x, y = _half_octave_medians(np.asarray(sizes, float), np.asarray(times_ms, float))
        hull = _upper_concave_hull(x, y)
        self.knots, self.values = hull[:, 0], hull[:, 1]
        if len(self.knots) > 1:
            slopes = np.diff(self.values) / np.diff(self.knots)
        else:
            slopes = np.array([0.0])
        self.first_slope, self.tail_ms_per_byte = float(slopes[0]), float(max(slopes[-1], 0.0))
        self.zero_ms = max(0.0, float(self.values[0] - self.first_slope * self.knots[0]))

    def __call__(self, nbytes):
        """Concave piecewise-linear in bytes: the first regime's line down to 0 bytes, the last one's beyond."""
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
        """(latency ms, bandwidth GB/s) of each regime, smallest messages first."""
        out = []
        for k in range(max(1, len(self.knots) - 1)):
            if len(self.knots) == 1:
                return [(float(self.values[0]), float("inf"))]
            slope = (self.values[k + 1] - self.values[k]) / (self.knots[k + 1] - self.knots[k])
            out.append((float(self.values[k] - slope * self.knots[k]), float("inf") if slope <= 0 else 1e-6 / slope))
        return out


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
    return NcclCurve(rows["bytes"].to_numpy(), rows["time_ms"].to_numpy())


@cache
def _nccl_table(gpu: str, kind: str) -> pd.DataFrame:
    return pd.read_csv(model_data_path(gpu, f"nccl_{kind}.csv"))
