"""Fit the analytic curves on one profiled model and measure the error on the others (holdout).

GEMMs:     t = floor + 2MNK / (peak · M/(M+m½))             — one curve for all four linear layers
Pointwise: t = floor_op + c_op · tokens · width_op            — one line per operator
Fitting minimises the log-error (relative error) over every row of the training table.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .._data import model_data_path
from .analytic import block_gemm_shapes, gemm_fit_ms, pointwise_fit_ms, pointwise_widths

TRAIN_MODEL = "Llama-2-7b-hf"
HOLDOUT_MODELS = ("Llama-2-70b-hf", "CodeLlama-34b-Instruct-hf", "internlm-20b", "Qwen-72B")
GEMM_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
POINTWISE_OPS = ("input_layernorm", "post_attention_layernorm", "attn_rope", "mlp_act", "add")


def load_profile(name: str, gpu: str = "h100") -> pd.DataFrame:
    return pd.read_csv(model_data_path(gpu, f"{name}.csv"))


def operator_rows(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (operator, tokens, tp): measured ms plus the shape the curves need."""
    rows = []
    for r in table.itertuples(index=False):
        gemms = block_gemm_shapes(r.n_embd, r.n_head, r.n_kv_head, r.n_expanded_embd, bool(r.use_gated_mlp), r.tp)
        widths = pointwise_widths(r.n_embd, r.n_head, r.n_kv_head, r.n_expanded_embd, r.tp)
        for op in GEMM_OPS:
            n, k = gemms[op]
            rows.append((r.model, op, r.num_tokens, r.tp, n, k, 0.0, getattr(r, f"{op}_ms")))
        for op in POINTWISE_OPS:
            rows.append((r.model, op, r.num_tokens, r.tp, 0.0, 0.0, widths[op], getattr(r, f"{op}_ms")))
    return pd.DataFrame(rows, columns=["model", "op", "tokens", "tp", "N", "K", "width", "measured_ms"])


def fit(rows: pd.DataFrame) -> dict:
    """Least-squares fit of the GEMM curve and each pointwise line (needs scipy)."""
    from scipy.optimize import least_squares

    g = rows[rows.op.isin(GEMM_OPS)]
    res = least_squares(lambda p: np.log(gemm_fit_ms(g.tokens, g.N, g.K, *p)) - np.log(g.measured_ms),
                        x0=[0.01, 700.0, 100.0], bounds=([0, 1, 0], [1, 2000, 1e5]))
    params = {"gemm": tuple(float(x) for x in res.x), "pointwise": {}}
    for op in POINTWISE_OPS:
        p = rows[rows.op == op]
        res = least_squares(lambda q, p=p: np.log(q[0] + q[1] * 1e-9 * p.tokens * p.width) - np.log(p.measured_ms),
                            x0=[0.003, 5.0], bounds=([1e-5, 0], [1, 1e4]))
        params["pointwise"][op] = (float(res.x[0]), float(res.x[1]) * 1e-9)
    return params


def predict(rows: pd.DataFrame, params: dict) -> np.ndarray:
    out = np.empty(len(rows))
    is_gemm = rows.op.isin(GEMM_OPS).to_numpy()
    gm = rows[is_gemm]
    out[is_gemm] = gemm_fit_ms(gm.tokens, gm.N, gm.K, *params["gemm"])
    for op in POINTWISE_OPS:
        mask = (rows.op == op).to_numpy()
        p = rows[mask]
        out[mask] = pointwise_fit_ms(op, p.tokens, p.width, params["pointwise"])
    return out


def shipped_params() -> dict:
    from . import constants as K
    return {"gemm": (K.GEMM_FLOOR_MS, K.GEMM_PEAK_TFLOPS, K.GEMM_M_HALF), "pointwise": dict(K.POINTWISE)}


def holdout_errors(params: dict | None = None, min_tokens: int = 512) -> pd.DataFrame:
    """Relative error of the curves on every holdout row with tokens ≥ min_tokens."""
    params = params or shipped_params()
    rows = pd.concat([operator_rows(load_profile(m)) for m in HOLDOUT_MODELS], ignore_index=True)
    rows = rows[rows.tokens >= min_tokens].reset_index(drop=True)
    rows["predicted_ms"] = predict(rows, params)
    rows["rel_error"] = rows.predicted_ms / rows.measured_ms - 1
    return rows
