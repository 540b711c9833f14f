"""Analytic step model: GEMMs and pointwise kernels from curves fitted on measured H100 times."""
from __future__ import annotations

import numpy as np

from . import constants as K
from .base import LatencyModel


def block_gemm_shapes(hidden: int, heads: int, kv_heads: int, ffn: int, gated: bool, tp: int) -> dict:
    """(N, K) of each linear layer of one block at TP degree tp (M = tokens)."""
    head_dim = hidden // heads
    return {
        "attn_pre_proj": ((hidden + 2 * kv_heads * head_dim) / tp, hidden),  # fused QKV (GQA)
        "attn_post_proj": (hidden, hidden / tp),                            # output projection
        "mlp_up_proj": ((2 if gated else 1) * ffn / tp, hidden),            # gate + up
        "mlp_down_proj": (hidden, ffn / tp),
    }


def pointwise_widths(hidden: int, heads: int, kv_heads: int, ffn: int, tp: int) -> dict:
    """Elements per token each pointwise kernel touches (see constants.POINTWISE)."""
    head_dim = hidden // heads
    return {
        "input_layernorm": hidden,
        "post_attention_layernorm": hidden,
        "attn_rope": (hidden + kv_heads * head_dim) / tp,
        "mlp_act": ffn / tp,
        "add": hidden,
    }


def gemm_fit_ms(M, N, Kdim, floor=K.GEMM_FLOOR_MS, peak=K.GEMM_PEAK_TFLOPS, m_half=K.GEMM_M_HALF):
    """Fitted GEMM time: floor + 2MNK / (peak·1e9 · M/(M+m½)) ms."""
    M = np.asarray(M, dtype=float)
    return floor + 2.0 * N * Kdim * (M + m_half) / (peak * 1e9)


def pointwise_fit_ms(op: str, M, width, coefs=K.POINTWISE):
    floor, per_elem = coefs[op]
    return floor + per_elem * np.asarray(M, dtype=float) * width


class AnalyticLatency(LatencyModel):
    """Default model: every kernel from a calibrated curve (no table needed)."""

    kind = "analytic"
    version = "1.0"

    def __init__(self, model, cluster, kernels=None, **options) -> None:
        self._affine: dict = {}
        super().__init__(model, cluster, kernels, **options)

    def linear_fwd_ms(self, tokens, tp: int):
        """Affine in tokens (every fitted curve is): intercept + slope·tokens, coefficients cached per tp."""
        if tp not in self._affine:
            self._affine[tp] = self._affine_coefficients(tp)
        intercept, slope = self._affine[tp]
        return intercept + slope * np.asarray(tokens, dtype=float)

    def _affine_coefficients(self, tp: int) -> tuple[float, float]:
        m = self.model
        gemms = block_gemm_shapes(m.hidden, m.heads, m.kv_heads, m.ffn, m.gated_mlp, tp)
        widths = pointwise_widths(m.hidden, m.heads, m.kv_heads, m.ffn, tp)

        k = self.k

        def at(tokens: float) -> float:
            gemm = sum(gemm_fit_ms(tokens, n, kd, k.gemm_floor_ms, k.gemm_peak_tflops, k.gemm_m_half)
                       for n, kd in gemms.values())
            pointwise = sum(pointwise_fit_ms(op, tokens, w, k.pointwise) for op, w in widths.items())
            return float(gemm * k.compute_scale + pointwise * k.memory_scale)
        return at(0.0), at(1.0) - at(0.0)
