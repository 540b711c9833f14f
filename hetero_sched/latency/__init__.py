"""Step models: analytic (default) and table (profiled linear layers)."""
from __future__ import annotations

from pathlib import Path

from ..specs import Cluster, ModelSpec
from .analytic import AnalyticLatency
from .base import LatencyModel
from .table import TableLatency

__all__ = ["AnalyticLatency", "LatencyModel", "TableLatency", "latency_model"]


def latency_model(model: ModelSpec, cluster: Cluster, table: str | Path | None = None) -> LatencyModel:
    """The analytic model, or the table model when a profiled table path is given."""
    if table is None:
        return AnalyticLatency(model, cluster)
    return TableLatency(model, cluster, table)
