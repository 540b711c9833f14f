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
                  calibration: str | Path | None = None, *, recompute: str = "auto",
                  overlap_param_gather: bool = True) -> LatencyModel:
    """The analytic model; the table model when a profiled table path is given (linear layers from the
    table). calibration: a file written by `hetero-sched profile`, read by every part of the model
    (GEMMs, pointwise kernels, attention, NCCL, memory). recompute: 'auto' (each micro-batch recomputes
    the least number of layers with which it fits) or 'full' (every layer). overlap_param_gather: the
    ZeRO-1 parameter all-gather runs under the next step's first forward (True) or after the optimizer
    step, exposed (False)."""
    kernels = Kernels.from_file(calibration) if calibration is not None else None
    options = {"recompute": recompute, "overlap_param_gather": overlap_param_gather}
    if table is None:
        return AnalyticLatency(model, cluster, kernels, **options)
    return TableLatency(model, cluster, table, kernels, **options)
