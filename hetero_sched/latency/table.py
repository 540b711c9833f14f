"""Table step model: linear layers from a profiled per-operator table, the rest analytic.

Inside the measured range (1–4096 tokens) each operator's time is interpolated in log-log space;
beyond the largest measured row it grows linearly in tokens at that row's per-token rate (a documented
rule: GEMMs are compute-bound there, so time ∝ tokens). Attention and communication are analytic.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..specs import Cluster, ModelSpec
from .base import LatencyModel, file_sha256

OPERATORS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj", "mlp_act", "attn_rope",
             "input_layernorm", "post_attention_layernorm", "add")
SHAPE_COLUMNS = {"n_embd": "hidden", "n_head": "heads", "n_kv_head": "kv_heads", "n_expanded_embd": "ffn"}


def read_table(path: str | Path) -> pd.DataFrame:
    """Read and check a profiled table (format: models/README.md)."""
    path = Path(path)
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read latency table {str(path)!r}: {exc}") from None
    needed = {"num_tokens", "tp", *SHAPE_COLUMNS, *(f"{op}_ms" for op in OPERATORS)}
    missing = sorted(needed - set(table.columns))
    if missing:
        raise ValueError(f"latency table {str(path)!r} lacks columns {missing}")
    if table.empty or (table[[f"{op}_ms" for op in OPERATORS]] <= 0).any().any():
        raise ValueError(f"latency table {str(path)!r} is empty or has non-positive times")
    return table


class TableLatency(LatencyModel):
    kind = "table"
    version = "1.0"

    def __init__(self, model: ModelSpec, cluster: Cluster, table_path: str | Path, kernels=None, **options) -> None:
        self.table_path = Path(table_path)
        table = read_table(self.table_path)
        self._check_shape(table, model)
        self._curves = {}
        for tp, rows in table.groupby("tp"):
            rows = rows.sort_values("num_tokens")
            times = rows[[f"{op}_ms" for op in OPERATORS]].sum(axis=1).to_numpy()
            self._curves[int(tp)] = (rows["num_tokens"].to_numpy(float), np.maximum.accumulate(times))
        self._sha = file_sha256(self.table_path)
        super().__init__(model, cluster, kernels, **options)  # sets the caches; _check_fits needs no table curve
        missing = [tp for tp in cluster.tp_degrees(model) if tp not in self._curves]
        if missing:
            raise ValueError(f"latency table {str(self.table_path)!r} has no rows for TP {missing}")

    @property
    def table_sha256(self) -> str:
        return self._sha

    def linear_fwd_ms(self, tokens, tp: int):
        x, y = self._curves[tp]
        t = np.asarray(tokens, dtype=float)
        inside = np.exp(np.interp(np.log(np.clip(t, x[0], x[-1])), np.log(x), np.log(y)))
        # below the first measured row: the smallest time (a floor); above the last: linear in tokens
        return np.where(t > x[-1], y[-1] * t / x[-1], inside)

    def _compute_linear_intercept(self, tp: int) -> float:
        """What a micro-batch pays whatever its size: the least-squares line through the measured rows of
        the upper half of the range (compute-bound), extrapolated to 0 tokens, kept in [0, one-token time]."""
        x, y = self._curves[tp]
        upper = x >= x[-1] / 2
        _, intercept = np.polyfit(x[upper], y[upper], 1)
        return float(np.clip(intercept, 0.0, y[0]))

    @staticmethod
    def _check_shape(table: pd.DataFrame, model: ModelSpec) -> None:
        for col, attr in SHAPE_COLUMNS.items():
            values = set(table[col].unique())
            if values != {getattr(model, attr)}:
                raise ValueError(f"latency table {col}={sorted(values)} does not match model "
                                 f"{model.name} {attr}={getattr(model, attr)}")
