"""Step models: analytic (default) and table (profiled linear layers)."""
from __future__ import annotations

from pathlib import Path

from ..specs import Cluster, ModelSpec
from .analytic import AnalyticLatency
from .base import LatencyModel
from .kernels import Kernels
from .table import TableLatency

__all__ = ["AnalyticLatency", "Kernels", "LatencyModel", "TableLatency", "latency_model"]


def latency_model(model: ModelSpec, cluster: Cluster, table: str | Path | None = None,
                  calibration: str | Path | None = None) -> LatencyModel:
    """The analytic model; the table model when a profiled table path is given (linear layers from the
    table). calibration: a file written by `hetero-sched profile`, read by every part of the model
    (GEMMs, pointwise kernels, attention, NCCL, memory)."""
    kernels = Kernels.from_file(calibration) if calibration is not None else None
    if table is None:
        return AnalyticLatency(model, cluster, kernels)
    return TableLatency(model, cluster, table, kernels)
