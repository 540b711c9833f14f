"""The step model shared by every latency implementation.

A group of `tp`·`cp` GPUs runs each sequence through all layers: forward, a recomputed forward (full
activation checkpointing) and backward. A sequence of L tokens is split over the cp ranks (L/cp tokens
each). Subclasses provide only the per-layer forward time of the token-proportional kernels
(linear layers + pointwise ops); attention, communication, memory and sync are shared.

Additive contract (DESIGN.md): group_latency_ms = overhead_ms(tp, cp) + Σ seq_latency_ms(L, tp, cp).
Costs that a micro-batch pays once whatever its size (kernel-launch floors, GEMM ramp-up, ring latency)
are the group's overhead; the rest is charged per sequence.
"""
from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from ..specs import Cluster, ModelSpec
from . import constants as K
from .kernels import Kernels

PASSES_FWD = 1 + K.RECOMPUTE_FORWARDS  # forward + recomputed forward
GB = 1e9


class LatencyModel(ABC):
    """Step-model interface: per-sequence cost, per-group overhead, token capacity, memory, sync."""

    kind: str = "abstract"
    version: str = "1.0"

    def __init__(self, model: ModelSpec, cluster: Cluster, kernels: Kernels | None = None) -> None:
        self.model = model
        self.cluster = cluster
        self.k = kernels or Kernels.for_gpu(cluster.spec)
        self._overheads: dict = {}
        self._intercepts: dict = {}
        self._check_fits()

    # ---- what subclasses provide ----------------------------------------------------------------
    @abstractmethod
    def linear_fwd_ms(self, tokens, tp: int):
        """One block's forward time of GEMMs + pointwise kernels for `tokens` tokens (array-friendly)."""

    @property
    def table_sha256(self) -> str | None:
        return None

    # ---- public contract ------------------------------------------------------------------------
    def seq_latency_ms(self, length: int, tp: int, cp: int, cross_node: bool | None = None) -> float:
        """Forward + recompute + backward of one sequence through all layers, ms, overhead excluded."""
        return float(self.seq_latency_array(np.array([length]), tp, cp, cross_node)[0])

    def overhead_ms(self, tp: int, cp: int, cross_node: bool | None = None) -> float:
        """What one micro-batch costs whatever its size: the intercept of every token-linear kernel
        (launch floors, GEMM ramp-up), the attention launch floor and the ring's per-step latency."""
        key = (tp, cp, cross_node)
        if key not in self._overheads:
            self._overheads[key] = self._overhead(tp, cp, cross_node)
        return self._overheads[key]

    def _overhead(self, tp: int, cp: int, cross_node: bool | None) -> float:
        m = self.model
        linear0 = float(self._linear_intercept(tp))
        tpc0 = self._tp_allreduce(tp).floor_ms * K.TP_ALLREDUCES_PER_LAYER_FWD if tp > 1 else 0.0
        ring0 = (cp - 1) * self._ring_curve(tp, cp, cross_node).floor_ms if cp > 1 else 0.0
        per_layer = ((PASSES_FWD + K.LINEAR_BWD_RATIO) * linear0 + (PASSES_FWD + 1) * tpc0
                     + (PASSES_FWD + 1) * self.k.attn_floor_ms * self.k.compute_scale + (PASSES_FWD + 2) * ring0)
        head0 = (1 + K.LINEAR_BWD_RATIO) * self._gemm_intercept(m.hidden, m.vocab // tp)
        return m.layers * per_layer + head0

    def group_latency_ms(self, lengths: Sequence[int], tp: int, cp: int, cross_node: bool | None = None) -> float:
        """overhead_ms + Σ seq_latency_ms: the group runs its sequences one micro-batch after another."""
        lengths = self._check_lengths(lengths)
        if lengths.size and lengths.max() > self.max_tokens(tp, cp):
            raise ValueError(f"a sequence of {int(lengths.max())} tokens exceeds max_tokens={self.max_tokens(tp, cp)} "
                             f"of TP{tp}xCP{cp}")
        seqs = self.seq_latency_array(lengths, tp, cp, cross_node).sum() if lengths.size else 0.0
        return self.overhead_ms(tp, cp, cross_node) + float(seqs)

    def seq_latency_array(self, lengths: np.ndarray, tp: int, cp: int, cross_node: bool | None = None) -> np.ndarray:
        """Vectorised seq_latency_ms over many lengths for one configuration."""
        self._check_config(tp, cp)
        cross = self._default_cross(tp, np.array([cp])) if cross_node is None else np.array([cross_node])
        return self._seq_costs(np.asarray(lengths, dtype=float), tp, np.array([cp]), cross)

    def cost_table(self, lengths: np.ndarray, tp: int, cps: np.ndarray, cross_node: bool | None = None) -> np.ndarray:
        """seq_latency_ms of every length (rows) on TP tp and each CP degree of cps (columns): across
        nodes when cross_node is True, inside one when False, and when None as compactly as possible
        (crossing only when tp·cp > gpus_per_node)."""
        cps = np.asarray(cps)
        for cp in cps:
            self._check_config(tp, int(cp))
        L = np.asarray(lengths, dtype=float)[:, None]
        cross = self._default_cross(tp, cps) if cross_node is None else np.full(cps.shape, bool(cross_node))
        return self._seq_costs(L, tp, cps[None, :], cross[None, :])

    def _default_cross(self, tp: int, cps: np.ndarray) -> np.ndarray:
        return tp * cps > self.cluster.gpus_per_node

    def _seq_costs(self, L: np.ndarray, tp: int, cp: np.ndarray, cross: np.ndarray) -> np.ndarray:
        """Cost of lengths L on (tp, cp) with broadcasting: L (n,) with cp (1,), or L (n,1) with cp (1,k)."""
        m = self.model
        T = L / cp  # tokens per CP rank
        linear = (self.linear_fwd_ms(T, tp) - self._linear_intercept(tp)) * (PASSES_FWD + K.LINEAR_BWD_RATIO)
        tpc = self._tp_comm_var(T, tp) * (PASSES_FWD + 1)  # backward moves as much as a forward
        attn_fwd = self._attention_fwd_ms(L, tp, cp)
        attn_bwd = attn_fwd * K.FA_BWD_FLOP_RATIO / self.k.fa_bwd_rate
        ring_fwd = self._ring_var(T, tp, cp, cross)
        ring_bwd = 2 * ring_fwd  # backward circulates K,V and their gradients
        # ring transfers overlap the attention they feed: each pass costs max(compute, transfer)
        attn = PASSES_FWD * np.maximum(attn_fwd, ring_fwd) + np.maximum(attn_bwd, ring_bwd)
        head = (self._gemm_ms(T, m.hidden, m.vocab / tp) - self._gemm_intercept(m.hidden, m.vocab // tp)) \
            * (1 + K.LINEAR_BWD_RATIO)  # LM head: forward + backward, not recomputed
        return m.layers * (linear + tpc + attn) + head

    def max_tokens(self, tp: int, cp: int) -> int:
        """Largest micro-batch (tokens over all cp ranks) that fits in memory; 0 if nothing fits."""
        self._check_config(tp, cp)
        free = self.usable_bytes - self._static_bytes(tp)
        return max(0, int(free // self._bytes_per_token(tp))) * cp

    def memory_gb(self, microbatch_tokens: int, tp: int, cp: int) -> float:
        """Peak memory per GPU (GB) for a micro-batch of `microbatch_tokens` tokens over the group."""
        per_rank = math.ceil(microbatch_tokens / cp)
        return (self._static_bytes(tp) + per_rank * self._bytes_per_token(tp)) / GB

    def sync_ms(self, tps: Sequence[int]) -> float:
        """Non-overlapped gradient synchronisation for groups of these TP degrees: an upper bound on
        what the step pays (`sync_upper_ms`); `sync_exposed_ms` is what is left after overlap."""
        return sum(self.sync_parts(tps))

    sync_upper_ms = sync_ms

    def sync_parts(self, tps: Sequence[int]) -> tuple[float, float, float]:
        """(layout gather, gradient reduce-scatter, parameter all-gather), ms, not overlapped.

        Layout = the smallest TP degree t_L among groups. A group with tp > t_L first all-gathers its
        gradient shards on NVLink (tp/t_L ranks, 2P/t_L bytes each ending); then the cluster
        reduce-scatters the 2P/t_L-byte shards (ZeRO-1) and, after the optimizer step, all-gathers the
        updated weights: each (2P/t_L)·(1 − t_L/N) / bw, bw = InfiniBand when the cluster spans nodes."""
        tps = list(tps)
        if not tps:
            return 0.0, 0.0, 0.0
        n, gpu = self.cluster.gpus, self.cluster.spec
        grad_bytes = 2.0 * self.model.params
        t_l = min(tps)
        gather = 0.0
        for tp in set(tps):
            if tp > t_l:
                k = tp // t_l
                gather = max(gather, (k - 1) / k * grad_bytes / t_l / (gpu.nvlink_gbps * GB) * 1e3)
        if n <= 1:
            return gather, 0.0, 0.0
        bw = gpu.ib_gbps if n > self.cluster.gpus_per_node else gpu.nvlink_gbps
        one_way = grad_bytes / t_l * (1 - t_l / n) / (bw * GB) * 1e3
        return gather, one_way, one_way

    def gradient_buckets(self, groups: int) -> list[tuple[float, float]]:
        """Buckets in the order backward produces them: (share of the gradient bytes, share of the
        backward sweep done when the bucket is complete). Bucket size: Megatron-LM's DDP default,
        max(40M, 1M·dp) parameters (megatron/core/distributed/distributed_data_parallel_config.py,
        `bucket_size`); order: LM head, blocks L−1 … 0, embedding (reverse of the forward)."""
        m = self.model
        cap = max(K.BUCKET_PARAMS_MIN, K.BUCKET_PARAMS_PER_DP * max(1, groups))
        buckets, size, done = [], 0, 0.0
        for params, done in self._gradient_pieces():
            size += params
            if size >= cap:
                buckets.append((size / m.params, done))
                size = 0
        if size:
            buckets.append((size / m.params, done))
        return buckets

    def _gradient_pieces(self) -> list[tuple[int, float]]:
        """(parameters, share of the backward sweep done when their gradient is complete), in order."""
        m = self.model
        pieces = [(m.vocab * m.hidden + m.hidden, 0.0)]
        pieces += [(m.params_per_layer, (j + 1) / m.layers) for j in range(m.layers)]
        return pieces + [(m.vocab * m.hidden, 1.0)]

    def sync_exposed_ms(self, tps: Sequence[int], finishes: Sequence[tuple[float, float]]) -> float:
        """Sync time the step pays once overlap with backward is counted.

        finishes: (end_ms, last micro-batch ms) of each group. A group's last micro-batch spends
        BACKWARD_SHARE of its time in the backward sweep (recompute + backward), producing the layers'
        gradients evenly in reverse order; a bucket may be reduced once every group has produced it
        (earlier micro-batches only accumulate), buckets go one after another on the network, and the
        fast groups wait. Exposed = (last bucket reduced − makespan)⁺ + the parameter all-gather, which
        follows the optimizer step and is never hidden here."""
        if not finishes:
            return 0.0
        gather, reduce, allgather = self.sync_parts(tps)
        makespan = max(end for end, _ in finishes)
        starts = [(end, K.BACKWARD_SHARE * last) for end, last in finishes]
        clock = -math.inf
        for share, done in self.gradient_buckets(len(finishes)):
            ready = max(end - window * (1.0 - done) for end, window in starts)
            clock = max(clock, ready) + (gather + reduce) * share
        return max(0.0, clock - makespan) + allgather

    def sync_exposed_lower_ms(self, t_layout: int, makespan_lower_ms: float, mixed: bool = False) -> float:
        """A lower bound on makespan + exposed sync − makespan_lower over plans whose smallest TP is
        t_layout and whose makespan is ≥ makespan_lower_ms: one bucket per layer (any real bucketing
        merges them, which only delays), and the slowest group's whole makespan taken as its backward
        window. A plan whose groups all have TP t_layout gathers nothing; mixed=True bounds the plans that
        also hold a larger TP, which gather at least the least layout gather of any larger TP degree
        (inf when there is none). makespan + exposed grows with the makespan (each ready time rises by
        1 − BACKWARD_SHARE·(1 − done) ≥ 0 per ms), so the bound holds for every makespan above."""
        _, reduce, allgather = self.sync_parts([t_layout])
        gather = 0.0
        if mixed:
            larger = [tp for tp in self.cluster.tp_degrees(self.model) if tp > t_layout]
            if not larger:
                return math.inf
            gather = min(self.sync_parts([t_layout, tp])[0] for tp in larger)
        T = makespan_lower_ms
        clock = -math.inf
        for params, done in self._gradient_pieces():
            clock = max(clock, T - K.BACKWARD_SHARE * T * (1.0 - done)) + (gather + reduce) * params / self.model.params
        return max(0.0, clock - T) + allgather

    def describe(self) -> dict:
        d = {"kind": self.kind, "version": self.version, "table_sha256": self.table_sha256}
        if self.k.calibrated_by_file:
            d["calibration_sha256"] = self.k.sha256
        return d

    @property
    def calibrated(self) -> bool:
        """Were the curves measured on this GPU (the H100 preset, or a calibration file)?"""
        return self.k.calibrated_by_file or self.cluster.spec.calibrated

    # ---- memory ---------------------------------------------------------------------------------
    @property
    def usable_bytes(self) -> float:
        memory_gb = self.k.memory_gb or self.cluster.spec.memory_gb
        return memory_gb * GB * (1 - K.MEMORY_RESERVE_FRACTION)

    def _static_bytes(self, tp: int) -> float:
        p = self.model.params
        return K.WEIGHT_GRAD_BYTES * p / tp + K.OPTIMIZER_BYTES * p / self.cluster.gpus

    def _bytes_per_token(self, tp: int) -> float:
        m = self.model
        mlp_scale = m.ffn * (1.5 if m.gated_mlp else 1.0) / (4 * m.hidden)
        checkpoints = m.layers * m.hidden * m.dtype_bytes  # one block input kept per layer
        working = (K.ACT_ATTN_COEF + K.ACT_MLP_COEF * mlp_scale) * m.hidden  # one block being recomputed
        logits = K.LOGIT_BYTES * m.vocab
        return (checkpoints + working + logits) / tp

    def _check_fits(self) -> None:
        best_tp = max(self.cluster.tp_degrees(self.model), default=1)
        static = self._static_bytes(best_tp) / GB
        if static + self._bytes_per_token(best_tp) / GB > self.usable_bytes / GB:
            raise ValueError(
                f"{self.model.name} cannot fit on {self.cluster.gpus} x {self.cluster.gpu}: weights, gradients "
                f"and ZeRO-1 optimizer states alone need {static:.1f} GB per GPU at TP{best_tp} "
                f"(usable {self.usable_bytes / GB:.1f} GB); use more GPUs")

    # ---- attention and communication -------------------------------------------------------------
    def _attention_fwd_ms(self, L: np.ndarray, tp: int, cp: int) -> np.ndarray:
        """Causal FlashAttention forward per block and CP rank, charged per 128-token tile.

        n = ⌈L/128⌉ query tiles; causal work n(n+1)/2 tile pairs spread over cp ranks, each rank at
        least its own diagonal tiles; 4·128²·head_dim FLOPs per tile pair and head; rate from the FA3
        curve at the rank's chunk length."""
        m = self.model
        n = np.ceil(L / K.ATTN_TILE)
        own = np.ceil(n / cp)
        pairs = np.maximum(np.ceil(n * (n + 1) / 2 / cp), own)
        flops = pairs * 4 * K.ATTN_TILE ** 2 * m.head_dim * (m.heads / tp)
        rate = np.interp(np.log2(np.maximum(L / cp, 1.0)), np.log2(self.k.fa_fwd_seqlen), self.k.fa_fwd_tflops)
        return flops / (rate * 1e9) * self.k.compute_scale

    def _ring_curve(self, tp: int, cp: int, cross_node: bool | None):
        if cross_node is None:
            cross_node = tp * cp > self.cluster.gpus_per_node
        return self.k.curve(self.cluster.gpu, "send_recv", 2, 1 if cross_node else 2)

    def _ring_var(self, T: np.ndarray, tp: int, cp: np.ndarray, cross: np.ndarray) -> np.ndarray:
        """Forward ring: each rank passes its K,V block (T·2·kv_heads/tp·head_dim·2 bytes) cp−1 times,
        over InfiniBand where the group crosses nodes, NVLink otherwise."""
        m = self.model
        kv_heads = max(1.0, m.kv_heads / tp)  # GQA heads are replicated when tp > kv_heads
        nbytes = T * 2 * kv_heads * m.head_dim * m.dtype_bytes
        ib, nvl = (self.k.curve(self.cluster.gpu, "send_recv", 2, d) for d in (1, 2))
        cross = np.broadcast_to(cross, nbytes.shape)
        per_step = np.empty_like(nbytes)
        for curve, where in ((ib, cross), (nvl, ~cross)):  # each element priced on its own link only
            per_step[where] = curve(nbytes[where]) - curve.floor_ms
        return (cp - 1) * per_step

    def _tp_allreduce(self, tp: int):
        return self.k.curve(self.cluster.gpu, "all_reduce", tp, tp)

    def _tp_comm_var(self, T: np.ndarray, tp: int) -> np.ndarray:
        if tp == 1:
            return np.zeros_like(T)
        curve = self._tp_allreduce(tp)
        nbytes = T * self.model.hidden * self.model.dtype_bytes
        return K.TP_ALLREDUCES_PER_LAYER_FWD * (curve(nbytes) - curve.floor_ms)

    # ---- GEMMs (analytic fit; also the LM head of the table model) --------------------------------
    def _gemm_ms(self, M, N: float, Kdim: float):
        """t = floor + 2MNK / (peak · M/(M+m½)) = floor + 2NK(M + m½)/peak  (affine in M)."""
        k = self.k
        return (k.gemm_floor_ms + 2.0 * N * Kdim * (np.asarray(M, dtype=float) + k.gemm_m_half)
                / (k.gemm_peak_tflops * 1e9)) * k.compute_scale

    def _gemm_intercept(self, N: float, Kdim: float) -> float:
        return float(self._gemm_ms(0.0, N, Kdim))

    def _linear_intercept(self, tp: int) -> float:
        if tp not in self._intercepts:
            self._intercepts[tp] = self._compute_linear_intercept(tp)
        return self._intercepts[tp]

    def _compute_linear_intercept(self, tp: int) -> float:
        return float(self.linear_fwd_ms(np.array([0.0]), tp)[0])

    # ---- validation -----------------------------------------------------------------------------
    def _check_config(self, tp: int, cp: int) -> None:
        if tp not in self.cluster.tp_degrees(self.model):
            raise ValueError(f"tp={tp!r} is not a valid TP degree for {self.model.name} on this cluster "
                             f"(valid: {self.cluster.tp_degrees(self.model)})")
        if not isinstance(cp, (int, np.integer)) or cp < 1 or tp * cp > self.cluster.gpus:
            raise ValueError(f"cp={cp!r} invalid: need an integer >= 1 with tp*cp <= {self.cluster.gpus}")

    @staticmethod
    def _check_lengths(lengths) -> np.ndarray:
        arr = np.asarray(list(lengths))
        if arr.size and (arr.dtype.kind not in "iu" or arr.min() <= 0):
            bad = next(x for x in lengths if not isinstance(x, (int, np.integer)) or x <= 0)
            raise ValueError(f"sequence lengths must be positive integers, got {bad!r}")
        return arr.astype(np.int64)


def file_sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()
