"""The step model shared by every latency implementation.

A group of `tp`·`cp` GPUs runs each sequence through all layers: forward, a recomputed forward of k of
the layers (k = the least number with which the micro-batch fits, Megatron's block method; k = layers
under recompute="full") and backward. A sequence of L tokens is split over the cp ranks (L/cp tokens
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

GB = 1e9
RECOMPUTE_MODES = ("auto", "full")


def window_share(k_frac):
    """Share of a micro-batch's time spent in its backward sweep (recompute of k layers + backward) when a
    fraction k_frac of the layers is recomputed: (k_frac + 2)/(1 + k_frac + 2) — see constants.BACKWARD_SHARE."""
    k_frac = np.asarray(k_frac, dtype=float)
    return (K.RECOMPUTE_FORWARDS * k_frac + K.LINEAR_BWD_RATIO) / (1 + K.RECOMPUTE_FORWARDS * k_frac
                                                                    + K.LINEAR_BWD_RATIO)


class LatencyModel(ABC):
    """Step-model interface: per-sequence cost, per-group overhead, token capacity, memory, sync."""

    kind: str = "abstract"
    version: str = "1.0"

    def __init__(self, model: ModelSpec, cluster: Cluster, kernels: Kernels | None = None, *,
                 recompute: str = "auto", overlap_param_gather: bool = True) -> None:
        if recompute not in RECOMPUTE_MODES:
            raise ValueError(f"recompute={recompute!r}: choose one of {', '.join(RECOMPUTE_MODES)}")
        if not isinstance(overlap_param_gather, bool):
            raise ValueError(f"overlap_param_gather must be True or False, got {overlap_param_gather!r}")
        self.model = model
        self.cluster = cluster
        self.k = kernels or Kernels.for_gpu(cluster.spec)
        self.recompute = recompute
        """'auto': each micro-batch recomputes the least number of layers with which it fits; 'full': all."""
        self.overlap_param_gather = overlap_param_gather
        """The ZeRO-1 parameter all-gather runs under the next step's first forward (Megatron-LM's
        --overlap-param-gather) instead of after the optimizer step."""
        self._overheads: dict = {}
        self._intercepts: dict = {}
        self._rank_caps: dict = {}
        self._buckets: dict = {}
        self._check_fits()

    # ---- what subclasses provide ----------------------------------------------------------------
    @abstractmethod
    def linear_fwd_ms(self, tokens, tp: int):
        """One block's forward time of GEMMs + pointwise kernels for `tokens` tokens (array-friendly)."""

    @property
    def table_sha256(self) -> str | None:
        return None

    # ---- public contract ------------------------------------------------------------------------
    def seq_latency_ms(self, length: int, tp: int, cp: int, cross_node: bool | None = None,
                       recompute_layers: int | None = None) -> float:
        """Forward + recompute + backward of one sequence through all layers, ms, overhead excluded; the
        sequence recomputes `recompute_layers` layers (default: the least with which it fits alone)."""
        return float(self.seq_latency_array(np.array([length]), tp, cp, cross_node, recompute_layers)[0])

    def overhead_ms(self, tp: int, cp: int, cross_node: bool | None = None) -> float:
        """What one micro-batch costs whatever its size: the intercept of every token-linear kernel
        (launch floors, GEMM ramp-up), the attention launch floor and the ring's per-step latency."""
        key = (tp, cp, cross_node)
        if key not in self._overheads:
            self._overheads[key] = self._overhead(tp, cp, cross_node)
        return self._overheads[key]

    def _overhead(self, tp: int, cp: int, cross_node: bool | None) -> float:
        """The floors of forward + full recompute + backward: charged once per group, with every layer's
        recompute floor whatever the micro-batches' k (an upper bound by ≤ one forward's launch floors)."""
        return sum(self.overhead_parts(tp, cp, cross_node))

    def overhead_parts(self, tp: int, cp: int, cross_node: bool | None = None) -> tuple[float, float, float]:
        """(forward, recompute of every layer, backward) of the overhead, ms."""
        m = self.model
        linear0 = float(self._linear_intercept(tp))
        tpc0 = self._tp_allreduce(tp).floor_ms * K.TP_ALLREDUCES_PER_LAYER_FWD if tp > 1 else 0.0
        ring0 = (cp - 1) * self._ring_curve(tp, cp, cross_node).floor_ms if cp > 1 else 0.0
        attn0 = self.k.attn_floor_ms * self.k.compute_scale
        fwd_layer = linear0 + tpc0 + attn0 + ring0
        bwd_layer = K.LINEAR_BWD_RATIO * linear0 + tpc0 + attn0 + 2 * ring0
        head0 = self._gemm_intercept(m.hidden, m.vocab // tp)
        return (m.layers * fwd_layer + head0, K.RECOMPUTE_FORWARDS * m.layers * fwd_layer,
                m.layers * bwd_layer + K.LINEAR_BWD_RATIO * head0)

    def group_latency_ms(self, lengths: Sequence[int], tp: int, cp: int, cross_node: bool | None = None) -> float:
        """overhead_ms + Σ seq_latency_ms: the group runs its sequences one micro-batch after another."""
        lengths = self._check_lengths(lengths)
        if lengths.size and lengths.max() > self.max_tokens(tp, cp):
            raise ValueError(f"a sequence of {int(lengths.max())} tokens exceeds max_tokens={self.max_tokens(tp, cp)} "
                             f"of TP{tp}xCP{cp}")
        seqs = self.seq_latency_array(lengths, tp, cp, cross_node).sum() if lengths.size else 0.0
        return self.overhead_ms(tp, cp, cross_node) + float(seqs)

    def seq_latency_array(self, lengths: np.ndarray, tp: int, cp: int, cross_node: bool | None = None,
                          recompute_layers=None) -> np.ndarray:
        """Vectorised seq_latency_ms over many lengths for one configuration; recompute_layers: one int
        (every sequence), one per sequence, or None (each at the least k with which it fits alone)."""
        fwd, rec, bwd = self.seq_parts_array(lengths, tp, cp, cross_node, recompute_layers)
        return fwd + rec + bwd

    def seq_parts_array(self, lengths, tp: int, cp: int, cross_node: bool | None = None,
                        recompute_layers=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(forward, recompute of its k layers, backward) of each sequence, ms, overhead excluded."""
        self._check_config(tp, cp)
        L = np.asarray(lengths, dtype=float)
        cross = self._default_cross(tp, np.array([cp])) if cross_node is None else np.array([cross_node])
        k = self._layers_recomputed(L, tp, cp, recompute_layers)
        fwd, rec_all, bwd = self._seq_parts(L, tp, np.array([cp]), cross)
        return fwd, rec_all * (k / self.model.layers), bwd

    def _layers_recomputed(self, L: np.ndarray, tp: int, cp: int, given) -> np.ndarray:
        if given is None:
            return self.recompute_layers_array(L, tp, cp)
        return np.broadcast_to(np.asarray(given, dtype=float), L.shape)

    def cost_table(self, lengths: np.ndarray, tp: int, cps: np.ndarray, cross_node: bool | None = None) -> np.ndarray:
        """seq_latency_ms of every length (rows) on TP tp and each CP degree of cps (columns): across
        nodes when cross_node is True, inside one when False, and when None as compactly as possible
        (crossing only when tp·cp > gpus_per_node)."""
        cps = np.asarray(cps)
        for cp in cps:
            self._check_config(tp, int(cp))
        L = np.asarray(lengths, dtype=float)[:, None]
        cross = self._default_cross(tp, cps) if cross_node is None else np.full(cps.shape, bool(cross_node))
        fwd, rec_all, bwd = self._seq_parts(L, tp, cps[None, :], cross[None, :])
        if self.recompute == "full":
            return fwd + rec_all + bwd
        k = self.recompute_layers_array(L, tp, cps[None, :].astype(np.int64))  # (n, k) at once, per CP degree
        return fwd + rec_all * (k / self.model.layers) + bwd

    def _default_cross(self, tp: int, cps: np.ndarray) -> np.ndarray:
        return tp * cps > self.cluster.gpus_per_node

    def _seq_parts(self, L: np.ndarray, tp: int, cp: np.ndarray, cross: np.ndarray):
        """(forward, recompute of every layer, backward) of lengths L on (tp, cp) with broadcasting: L (n,)
        with cp (1,), or L (n,1) with cp (1,k). A recomputed layer re-runs its forward (Korthikanti et al.
        2022, table 2); the LM head is never recomputed."""
        m = self.model
        T = L / cp  # tokens per CP rank
        linear = self.linear_fwd_ms(T, tp) - self._linear_intercept(tp)
        tpc = self._tp_comm_var(T, tp)  # backward moves as much as a forward
        attn_fwd = self._attention_fwd_ms(L, tp, cp)
        attn_bwd = attn_fwd * K.FA_BWD_FLOP_RATIO / self.k.fa_bwd_rate
        ring_fwd = self._ring_var(T, tp, cp, cross)
        ring_bwd = 2 * ring_fwd  # backward circulates K,V and their gradients
        # ring transfers overlap the attention they feed: each pass costs max(compute, transfer)
        fwd_layer = linear + tpc + np.maximum(attn_fwd, ring_fwd)
        bwd_layer = K.LINEAR_BWD_RATIO * linear + tpc + np.maximum(attn_bwd, ring_bwd)
        head = self._gemm_ms(T, m.hidden, m.vocab / tp) - self._gemm_intercept(m.hidden, m.vocab // tp)
        return (m.layers * fwd_layer + head, K.RECOMPUTE_FORWARDS * m.layers * fwd_layer,
                m.layers * bwd_layer + K.LINEAR_BWD_RATIO * head)

    def max_tokens(self, tp: int, cp: int) -> int:
        """Largest micro-batch (tokens over all cp ranks) that fits in memory, every layer recomputed;
        0 if nothing fits."""
        return self.tokens_cap(tp, cp, self.model.layers)

    def tokens_cap(self, tp: int, cp: int, recompute_layers: int) -> int:
        """Largest micro-batch that fits when it recomputes `recompute_layers` layers (its class's cap)."""
        self._check_config(tp, cp)
        return int(self._caps(tp)[self._check_k(recompute_layers)]) * cp

    def _caps(self, tp: int) -> np.ndarray:
        """Tokens per CP rank that fit with k = 0 … layers recomputed layers (nondecreasing in k)."""
        if tp not in self._rank_caps:
            free = self.usable_bytes - self._static_bytes(tp)
            ks = np.arange(self.model.layers + 1)
            self._rank_caps[tp] = np.maximum(0, np.floor(free / self._bytes_per_token(tp, ks))).astype(np.int64)
        return self._rank_caps[tp]

    def recompute_layers(self, microbatch_tokens: int, tp: int, cp: int) -> int:
        """k of a micro-batch: the least number of recomputed layers with which it fits ('auto'), or every
        layer ('full'); ValueError when it does not fit even then."""
        tokens = int(microbatch_tokens)
        if tokens > self.max_tokens(tp, cp):
            raise ValueError(f"a micro-batch of {tokens} tokens exceeds max_tokens={self.max_tokens(tp, cp)} "
                             f"of TP{tp}xCP{cp}")
        return int(self.recompute_layers_array(np.array([tokens]), tp, cp)[0])

    def recompute_layers_array(self, tokens, tp: int, cp: int) -> np.ndarray:
        """Vectorised recompute_layers (no fit check: tokens beyond max_tokens get k = layers)."""
        tokens = np.asarray(tokens)
        if self.recompute == "full":
            return np.full(tokens.shape, self.model.layers, dtype=np.int64)
        per_rank = -(-tokens.astype(np.int64) // cp)  # ⌈tokens/cp⌉
        k = np.searchsorted(self._caps(tp), per_rank, side="left")  # least k with per_rank ≤ cap_k
        return np.minimum(k, self.model.layers).astype(np.int64)

    def memory_gb(self, microbatch_tokens: int, tp: int, cp: int, recompute_layers: int | None = None) -> float:
        """Peak memory per GPU (GB) for a micro-batch of `microbatch_tokens` tokens over the group that
        recomputes `recompute_layers` layers (default: recompute_layers() of it, or every layer if none fits)."""
        if recompute_layers is None:
            recompute_layers = int(self.recompute_layers_array(np.array([microbatch_tokens]), tp, cp)[0])
        return float(self.memory_gb_array([microbatch_tokens], tp, cp, [self._check_k(recompute_layers)])[0])

    def memory_gb_array(self, microbatch_tokens, tp: int, cp: int, recompute_layers) -> np.ndarray:
        """Vectorised memory_gb over micro-batches with their k (no range check on k)."""
        per_rank = -(-np.asarray(microbatch_tokens, dtype=np.int64) // cp)
        return (self._static_bytes(tp) + per_rank * self._bytes_per_token(tp, np.asarray(recompute_layers))) / GB

    def _check_k(self, k) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= self.model.layers:
            raise ValueError(f"recompute_layers={k!r}: need an integer in 0..{self.model.layers}")
        return int(k)

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

    def _bucket_arrays(self, kind: str, groups: int) -> tuple[np.ndarray, np.ndarray]:
        """(shares, positions) of gradient_buckets or param_buckets, computed once per group count."""
        key = (kind, groups)
        if key not in self._buckets:
            rows = self.gradient_buckets(groups) if kind == "gradient" else self.param_buckets(groups)
            self._buckets[key] = tuple(np.array(col, dtype=float) for col in zip(*rows))
        return self._buckets[key]

    def param_buckets(self, groups: int) -> list[tuple[float, float]]:
        """The gradient buckets in forward order, as the parameter all-gather runs them: (share of the
        parameter bytes, share of a forward done when the first of its layers is reached)."""
        m = self.model
        cap = max(K.BUCKET_PARAMS_MIN, K.BUCKET_PARAMS_PER_DP * max(1, groups))
        buckets, size, need = [], 0, 1.0
        for params, pos in reversed(self._forward_pieces()):  # bucketed in backward order, as the gradients
            size += params
            need = min(need, pos)
            if size >= cap:
                buckets.append((size / m.params, need))
                size, need = 0, 1.0
        if size:
            buckets.append((size / m.params, need))
        return buckets[::-1]

    def gather_delays(self, allgather_ms: float, first_forwards, groups: int) -> np.ndarray:
        """How long each group's first forward waits for the overlapped parameter all-gather: bucket b
        completes at c_b = allgather·Σ_{b'≤b} share (buckets back to back from the step's start, forward
        order) and is needed at F·pos_b by a group whose first micro-batch's forward takes F ms, so
        delay = max_b (c_b − F·pos_b)⁺ (a layer waits, and every later one shifts with it)."""
        return _waits(*self._bucket_arrays("param", groups), allgather_ms, first_forwards)

    def sync_exposed_ms(self, tps: Sequence[int], timings: Sequence[tuple]) -> float:
        """Sync time the step pays once overlap is counted.

        timings: (end_ms, first forward ms, last backward window ms) of each group — or (end_ms, last
        micro-batch ms), its window BACKWARD_SHARE of that and no forward to hide behind. Parameter
        all-gather (overlap_param_gather): bucket by bucket under each group's first forward, which waits
        for what has not arrived (gather_delays), shifting that group's end; otherwise it follows the
        optimizer step, never hidden. Gradient reduce-scatter: a group's last micro-batch produces the
        layers' gradients evenly in reverse order over its window; a bucket may be reduced once every
        group has produced it (earlier micro-batches only accumulate), buckets go one after another on the
        network after the all-gather, and the fast groups wait. Exposed = the last event − makespan."""
        if not timings:
            return 0.0
        ends, firsts, windows = self._timing_columns(timings)
        gather, reduce, allgather = self.sync_parts(tps)
        makespan = float(ends.max())
        if self.overlap_param_gather:
            ends = ends + self.gather_delays(allgather, firsts, len(ends))
        shares, done = self._bucket_arrays("gradient", len(ends))
        ready = (ends[:, None] - windows[:, None] * (1.0 - done[None, :])).max(axis=0)  # every group produced it
        clock = allgather if self.overlap_param_gather else -math.inf
        for r, share in zip(ready.tolist(), shares.tolist()):
            clock = max(clock, r) + (gather + reduce) * share
        exposed = max(clock, float(ends.max())) - makespan
        return exposed if self.overlap_param_gather else exposed + allgather

    @staticmethod
    def _timing_columns(timings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = [t if len(t) == 3 else (t[0], 0.0, K.BACKWARD_SHARE * t[1]) for t in timings]
        ends, firsts, windows = (np.array(col, dtype=float) for col in zip(*rows))
        return ends, firsts, windows

    def sync_exposed_lower_ms(self, t_layout: int, makespan_lower_ms: float, mixed: bool = False,
                              first_forward_max_ms: float = math.inf, waits_included: bool = False) -> float:
        """A lower bound on step − makespan_lower over plans whose smallest TP is t_layout and whose
        makespan is ≥ makespan_lower_ms. It follows the slowest group g alone (makespan M): its first
        forward is ≤ FORWARD_SHARE_MAX·M, so it waits d(M) ≥ max_b (c_b − FORWARD_SHARE_MAX·M·pos_b)⁺ for
        the overlapped all-gather (buckets only merge pieces, which delays); it ends at x = M + d(M), its
        window is ≤ BACKWARD_SHARE·M ≤ BACKWARD_SHARE·x; one bucket per layer (any real bucketing merges
        them, which only delays). A plan whose groups all have TP t_layout gathers nothing; mixed=True bounds
        the plans that also hold a larger TP, which gather at least the least layout gather of any larger TP
        degree (inf when there is none). M + d(M) rises with M (FORWARD_SHARE_MAX·pos ≤ 1) and x + exposed
        rises with x (each ready time rises by 1 − BACKWARD_SHARE·(1 − done) ≥ 0 per ms), so the bound
        holds for every makespan above makespan_lower_ms. first_forward_max_ms: a cap on any first
        micro-batch's forward known from the batch (layouts.net_forward_caps); the delay then falls no lower
        than with that forward however long the makespan. waits_included: makespan_lower_ms already bounds
        the slowest group's end after its all-gather wait (layouts.delay_area_bound): no wait is added."""
        _, reduce, allgather = self.sync_parts([t_layout])
        gather = 0.0
        if mixed:
            larger = [tp for tp in self.cluster.tp_degrees(self.model) if tp > t_layout]
            if not larger:
                return math.inf
            gather = min(self.sync_parts([t_layout, tp])[0] for tp in larger)
        T = makespan_lower_ms
        x, clock = T, -math.inf
        if self.overlap_param_gather:
            if not waits_included:
                first = min(K.FORWARD_SHARE_MAX * T, first_forward_max_ms)
                x = T + float(self.least_gather_delays(allgather, [first])[0])
            clock = allgather
        for params, done in self._gradient_pieces():
            clock = max(clock, x - K.BACKWARD_SHARE * x * (1.0 - done)) + (gather + reduce) * params / self.model.params
        exposed = max(clock, x) - T
        return exposed if self.overlap_param_gather else exposed + allgather

    def least_gather_delays(self, allgather_ms: float, first_forwards) -> np.ndarray:
        """gather_delays with one piece per layer: a lower bound under any bucketing (a bucket completes
        with its last piece and is needed with its first)."""
        params, positions = (np.array(col, dtype=float) for col in zip(*self._forward_pieces()))
        return _waits(params / self.model.params, positions, allgather_ms, first_forwards)

    def _forward_pieces(self) -> list[tuple[int, float]]:
        """(parameters, share of a forward done when they are first needed): embedding, blocks 0 … L−1, head."""
        m = self.model
        params = [p for p, _ in self._gradient_pieces()[::-1]]
        return list(zip(params, [0.0] + [j / m.layers for j in range(m.layers)] + [1.0]))

    def describe(self) -> dict:
        d = {"kind": self.kind, "version": self.version, "table_sha256": self.table_sha256,
             "recompute": self.recompute, "overlap_param_gather": self.overlap_param_gather}
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

    def _bytes_per_token(self, tp: int, recompute_layers=None):
        """Activation bytes per token per GPU with k recomputed layers (default: every layer): the k
        recomputed blocks keep their input only (hidden·dtype bytes), the layers − k others every
        activation (the Korthikanti et al. 2022 per-layer bytes below), plus one block's working set (the
        block being recomputed, or the backward's temporaries) and the logits; all sharded over TP
        (sequence parallelism). Array-friendly in k."""
        m = self.model
        k = m.layers if recompute_layers is None else np.asarray(recompute_layers)
        checkpoints = k * m.hidden * m.dtype_bytes
        kept = (m.layers - k) * self._layer_activation_bytes()
        working = self._layer_activation_bytes()
        logits = K.LOGIT_BYTES * m.vocab
        return (checkpoints + kept + working + logits) / tp

    def _layer_activation_bytes(self) -> float:
        """Bytes per token one block holds for its backward: 34·h for a 4h MLP (Korthikanti et al. 2022,
        eq. 2 / table 2, FlashAttention: no s² term), the MLP part scaled by the real MLP width."""
        m = self.model
        mlp_scale = m.ffn * (1.5 if m.gated_mlp else 1.0) / (4 * m.hidden)
        return (K.ACT_ATTN_COEF + K.ACT_MLP_COEF * mlp_scale) * m.hidden

    def _check_fits(self) -> None:
        best_tp = max(self.cluster.tp_degrees(self.model), default=1)
        static = self._static_bytes(best_tp) / GB
        if static + self._bytes_per_token(best_tp) / GB > self.usable_bytes / GB:
            raise ValueError(
                f"{self.model.name} cannot fit on {self.cluster.gpus} x {self.cluster.gpu}: weights, gradients "
                f"and ZeRO-1 optimizer states alone need {static:.1f} GB per GPU at TP{best_tp} "
                f"(usable {self.usable_bytes / GB:.1f} GB); {self._what_would_fit(best_tp)}")

    def _what_would_fit(self, tp: int) -> str:
        """Advice for a model that does not fit: the least cluster that holds it at some TP degree (weights
        and gradients shard over TP, the optimizer states over every GPU), or that it needs pipeline
        stages (none in this version) when even the largest TP cannot hold weights and gradients."""
        p, gpn = self.model.params, self.cluster.gpus_per_node
        least = []
        for t in (1, 2, 4, 8):
            if gpn % t or self.model.heads % t:
                continue
            room = self.usable_bytes - K.WEIGHT_GRAD_BYTES * p / t - self._bytes_per_token(t)
            if room > 0:
                least.append(max(t, math.ceil(K.OPTIMIZER_BYTES * p / room)))
        if not least:
            largest = max(t for t in (1, 2, 4, 8) if gpn % t == 0 and self.model.heads % t == 0)
            return (f"weights and gradients alone need {K.WEIGHT_GRAD_BYTES * p / largest / GB:.1f} GB per GPU at "
                    f"TP{largest} whatever the cluster size: it needs pipeline stages, which this version cannot "
                    "plan")
        return f"use at least {min(least)} GPUs (TP up to the node's {gpn}; optimizer states shard over all)"

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


def _waits(shares: np.ndarray, positions: np.ndarray, allgather_ms: float, first_forwards) -> np.ndarray:
    """max over pieces (c_p − F·pos_p)⁺ for each first forward F: c_p the all-gather's completion of piece p
    (pieces back to back from the step's start, forward order), pos_p where the forward first needs it."""
    complete = allgather_ms * np.cumsum(shares)
    first = np.asarray(first_forwards, dtype=float)
    return np.maximum(0.0, (complete[None, :] - first[:, None] * positions[None, :]).max(axis=1))


def file_sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()
