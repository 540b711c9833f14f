"""Measured NCCL timings (vidur H100 tables), interpolated in log-size."""
from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd

from .._data import model_data_path


class NcclCurve:
    """Time (ms) of one collective of `bytes` for a fixed (kind, workers, devices_per_node)."""

    def __init__(self, sizes: np.ndarray, times_ms: np.ndarray) -> None:
        order = np.argsort(sizes)
        self.sizes = sizes[order].astype(float)
        self.times = np.maximum.accumulate(times_ms[order].astype(float))  # monotone in size
        self.tail_ms_per_byte = self.times[-1] / self.sizes[-1]

    def __call__(self, nbytes):
        """log-log interpolation inside the measured range; linear at the largest message's rate beyond;
        the smallest measured time below it (latency floor)."""
        b = np.asarray(nbytes, dtype=float)
        clipped = np.clip(b, self.sizes[0], self.sizes[-1])
        inside = np.exp(np.interp(np.log(clipped), np.log(self.sizes), np.log(self.times)))
        beyond = self.times[-1] + (b - self.sizes[-1]) * self.tail_ms_per_byte
        return np.where(b > self.sizes[-1], beyond, inside)

    @property
    def floor_ms(self) -> float:
        return float(self.times[0])


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
