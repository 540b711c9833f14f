"""The step model shared by every latency implementation.

A group of `tp`·`cp` GPUs runs each sequence through all layers: forward, a recomputed forward of k of
the layers (k = the least number with which the micro-batch fits, Megatron's block method; k = layers
under recompute="full") and backward. A sequence of L tokens is split over the cp ranks (L/cp tokens
each). With pp pipeline stages (a group of tp·cp·pp GPUs) each stage holds layers/pp blocks (even
stages; the LM head on the last) and the micro-batches run 1F1B (see pipeline_ms). Subclasses provide only the per-layer forward time of the token-proportional kernels
(linear layers + pointwise ops); attention, communication, memory and sync are shared.

Additive contract (DESIGN.md): group_latency_ms = overhead_ms(tp, cp) + Σ seq_latency_ms(L, tp, cp).
Costs that a micro-batch pays once whatever its size (kernel-launch floors, GEMM ramp-up, ring latency)
are the group's overhead; the rest is charged per sequence. With pp > 1 the group's time is an event
simulation of 1F1B over its micro-batches (its fill, drain and stalls are not additive); overhead_ms +
Σ seq_latency_ms (the last stage's work alone) is then a lower bound on it, which is what the solver's
bounds rest on.
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
ADVICE_TOKENS = 4096  # a model is said to fit a cluster size when a group holds this many tokens per GPU


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
        self._sync_lower: dict = {}
        self._bucketings = None  # (caps, forward arrays, backward arrays): see bucketings()
        self.pp_degrees = [d for d in pipeline_divisors(model.layers) if d <= cluster.gpus]
        """Pipeline degrees a group may take: the divisors of the layer count (even stages) up to the
        cluster's GPUs (hs.solve's pp_degrees narrows them)."""
        self._check_fits()
        self._load_curves()

    def _load_curves(self) -> None:
        """Read the NCCL curves pricing will use now, not inside a solve's time limit (the first solve of a
        process spent ~45 ms of a 0.1 s limit reading them at 256 GPUs)."""
        for tp in self.cluster.tp_degrees(self.model):
            if tp > 1:
                self._tp_allreduce(tp)
        for cross in (True, False):
            self._link(cross)

    # ---- what subclasses provide ----------------------------------------------------------------
    @abstractmethod
    def linear_fwd_ms(self, tokens, tp: int):
        """One block's forward time of GEMMs + pointwise kernels for `tokens` tokens (array-friendly)."""

    @property
    def table_sha256(self) -> str | None:
        return None

    # ---- public contract ------------------------------------------------------------------------
    def seq_latency_ms(self, length: int, tp: int, cp: int, cross_node: bool | None = None,
                       recompute_layers: int | None = None, pp: int = 1) -> float:
        """Forward + recompute + backward of one sequence through all layers, ms, overhead excluded; the
        sequence recomputes `recompute_layers` layers (default: the least with which it fits alone). With
        pp > 1: the last stage's share (its layers and the LM head), what the sequence adds to a pipeline
        at the least."""
        return float(self.seq_latency_array(np.array([length]), tp, cp, cross_node, recompute_layers, pp)[0])

    def overhead_ms(self, tp: int, cp: int, cross_node: bool | None = None, pp: int = 1) -> float:
        """What one micro-batch costs whatever its size: the intercept of every token-linear kernel
        (launch floors, GEMM ramp-up), the attention launch floor and the ring's per-step latency (and
        with stages, each boundary's point-to-point latency, both ways)."""
        key = (tp, cp, cross_node, pp)
        if key not in self._overheads:
            self._overheads[key] = self._overhead(tp, cp, cross_node, pp)
        return self._overheads[key]

    def _overhead(self, tp: int, cp: int, cross_node: bool | None, pp: int = 1) -> float:
        """The floors of forward + full recompute + backward: charged once per group, with every layer's
        recompute floor whatever the micro-batches' k (an upper bound by ≤ one forward's launch floors)."""
        return sum(self.overhead_parts(tp, cp, cross_node, pp))

    def overhead_parts(self, tp: int, cp: int, cross_node: bool | None = None,
                       pp: int = 1) -> tuple[float, float, float]:
        """(forward, recompute of every layer, backward) of the overhead, ms; with stages, the pp − 1
        boundaries' send floors in each direction are added to the forward and the backward. Where
        cross_node is None the ring crosses nodes when tp·cp exceeds a node, the stage links when tp·cp·pp
        does."""
        key = ("parts", tp, cp, cross_node, pp)  # remembered: a plan of 5,000 groups asks for each group's
        if key not in self._overheads:
            gpn = self.cluster.gpus_per_node
            ring_cross = tp * cp > gpn if cross_node is None else bool(cross_node)
            hop_cross = tp * cp * pp > gpn if cross_node is None else bool(cross_node)
            self._overheads[key] = tuple(float(x[0]) for x in self._overhead_columns(tp, np.array([cp]), ring_cross,
                                                                                     hop_cross, pp))
        return self._overheads[key]

    def overhead_array(self, tp: int, cps, cross_node: bool, pp: int = 1) -> np.ndarray:
        """overhead_ms of (tp, cp, cross_node, pp) for every cp of cps at once, the same floats (pricing
        called overhead_ms once per CP degree: ~10 ms of a 0.1 s limit at 256 GPUs)."""
        fwd, rec, bwd = self._overhead_columns(tp, np.asarray(cps, dtype=np.int64), bool(cross_node),
                                               bool(cross_node), pp)
        return 0.0 + fwd + rec + bwd

    def _overhead_columns(self, tp: int, cps: np.ndarray, ring_cross: bool, hop_cross: bool,
                          pp: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """overhead_parts for every CP degree of cps (an integer array)."""
        m = self.model
        hop0 = (pp - 1) * self._link(hop_cross).floor_ms if pp > 1 else 0.0
        linear0 = float(self._linear_intercept(tp))
        tpc0 = self._tp_allreduce(tp).floor_ms * K.TP_ALLREDUCES_PER_LAYER_FWD if tp > 1 else 0.0
        ring0 = np.where(cps > 1, (cps - 1) * self._link(ring_cross).floor_ms, 0.0)
        attn0 = self.k.attn_floor_ms * self.k.compute_scale
        fwd_layer = linear0 + tpc0 + attn0 + ring0
        bwd_layer = K.LINEAR_BWD_RATIO * linear0 + tpc0 + attn0 + 2 * ring0
        head0 = self._gemm_intercept(m.hidden, m.vocab // tp)
        return (m.layers * fwd_layer + head0 + hop0, K.RECOMPUTE_FORWARDS * m.layers * fwd_layer,
                m.layers * bwd_layer + K.LINEAR_BWD_RATIO * head0 + hop0)

    def group_latency_ms(self, lengths: Sequence[int], tp: int, cp: int, cross_node: bool | None = None,
                         pp: int = 1) -> float:
        """overhead_ms + Σ seq_latency_ms: the group runs its sequences one micro-batch after another. With
        pp > 1: the sequences packed as a plan packs them (pack_by_class), run 1F1B in increasing stage
        time (the simulation of pipeline_latency_ms)."""
        lengths = self._check_lengths(lengths)
        if lengths.size and lengths.max() > self.max_tokens(tp, cp, pp):
            raise ValueError(f"a sequence of {int(lengths.max())} tokens exceeds max_tokens="
                             f"{self.max_tokens(tp, cp, pp)} of {config_name(tp, cp, pp)}")
        if pp > 1:
            as_list = lengths.tolist()
            packed = pack_by_class(as_list, list(range(lengths.size)), self, tp, cp, pp, cross_node=cross_node)
            return self.overhead_ms(tp, cp, cross_node, pp) + _pipelined_ms(self, as_list, packed, tp, cp, pp,
                                                                            cross_node)
        seqs = self.seq_latency_array(lengths, tp, cp, cross_node).sum() if lengths.size else 0.0
        return self.overhead_ms(tp, cp, cross_node) + float(seqs)

    def seq_latency_array(self, lengths: np.ndarray, tp: int, cp: int, cross_node: bool | None = None,
                          recompute_layers=None, pp: int = 1) -> np.ndarray:
        """Vectorised seq_latency_ms over many lengths for one configuration; recompute_layers: one int
        (every sequence), one per sequence, or None (each at the least k with which it fits alone)."""
        fwd, rec, bwd = self.seq_parts_array(lengths, tp, cp, cross_node, recompute_layers, pp)
        return fwd + rec + bwd

    def seq_parts_array(self, lengths, tp: int, cp: int, cross_node: bool | None = None,
                        recompute_layers=None, pp: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(forward, recompute of its k layers, backward) of each sequence, ms, overhead excluded; with
        pp > 1, on the last stage (its layers/pp blocks, k/pp of them recomputed, and the LM head)."""
        self._check_config(tp, cp, pp)
        L = np.asarray(lengths, dtype=float)
        cross = self._default_cross(tp, np.array([cp]), pp) if cross_node is None else np.array([cross_node])
        k = self._layers_recomputed(L, tp, cp, recompute_layers, pp)
        fwd, rec_all, bwd = self._seq_parts(L, tp, np.array([cp]), cross, pp)
        return fwd, rec_all * (k / self.model.layers), bwd

    def _layers_recomputed(self, L: np.ndarray, tp: int, cp: int, given, pp: int = 1) -> np.ndarray:
        if given is None:
            return self.recompute_layers_array(L, tp, cp, pp)
        return np.broadcast_to(np.asarray(given, dtype=float), L.shape)

    def cost_table(self, lengths: np.ndarray, tp: int, cps: np.ndarray, cross_node: bool | None = None,
                   pp: int = 1) -> np.ndarray:
        """seq_latency_ms of every length (rows) on TP tp and each CP degree of cps (columns): across
        nodes when cross_node is True, inside one when False, and when None as compactly as possible
        (crossing only when tp·cp·pp > gpus_per_node)."""
        return self.cost_of_parts(*self.cost_parts_table(lengths, tp, cps, cross_node, pp))

    def cost_of_parts(self, fwd, rec_all, bwd, k):
        """A sequence's cost from cost_parts_table's parts: forward + its k of every layer's recompute + backward."""
        if self.recompute == "full":
            return fwd + rec_all + bwd
        return fwd + rec_all * (k / self.model.layers) + bwd

    def cost_parts_table(self, lengths: np.ndarray, tp: int, cps: np.ndarray, cross_node: bool | None = None,
                         pp: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """cost_table in parts: (forward, recompute of every layer, backward, k) of every length (rows) on
        each CP degree of cps (columns); the cost is forward + rec_all·k/layers + backward."""
        cps = np.asarray(cps)
        if cps.size:  # every check passes for each degree when it passes for the least and the largest
            for cp in {int(cps.min()), int(cps.max())}:
                self._check_config(tp, cp, pp)
        L = np.asarray(lengths, dtype=float)[:, None]
        cross = self._default_cross(tp, cps, pp) if cross_node is None else np.full(cps.shape, bool(cross_node))
        fwd, rec_all, bwd = self._seq_parts(L, tp, cps[None, :], cross[None, :], pp)
        k = self.recompute_layers_array(L, tp, cps[None, :].astype(np.int64), pp)  # (n, k) at once, per CP degree
        return fwd, rec_all, bwd, k

    def _default_cross(self, tp: int, cps: np.ndarray, pp: int = 1) -> np.ndarray:
        return tp * cps * pp > self.cluster.gpus_per_node

    def _seq_parts(self, L: np.ndarray, tp: int, cp: np.ndarray, cross: np.ndarray, pp: int = 1):
        """(forward, recompute of every layer, backward) of lengths L on (tp, cp) with broadcasting: L (n,)
        with cp (1,), or L (n,1) with cp (1,k). A recomputed layer re-runs its forward (Korthikanti et al.
        2022, table 2); the LM head is never recomputed. pp > 1: the last stage's share (layers/pp blocks
        and the head; `rec_all · k/layers` is then its k/pp recomputed blocks)."""
        layer_fwd, layer_bwd, head = self._layer_parts(L, tp, cp, cross)
        blocks = self.model.layers // pp
        return (blocks * layer_fwd + head, K.RECOMPUTE_FORWARDS * blocks * layer_fwd,
                blocks * layer_bwd + K.LINEAR_BWD_RATIO * head)

    def stage_parts_array(self, lengths, tp: int, cp: int, pp: int, cross_node: bool | None,
                          recompute_layers) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per sequence: (forward of an inner stage, forward of the last, backward of an inner stage,
        backward of the last), ms, floors excluded. An inner stage runs layers/pp blocks and sends its
        output (tokens/cp · hidden · dtype / tp bytes per GPU: activations are sequence-parallel between
        blocks, Korthikanti et al. 2022) to the next stage, and the gradient of its input back in the
        backward, on NVLink inside a node, InfiniBand across; the last stage runs its blocks and the LM
        head. The backward includes the stage's k/pp recomputed blocks."""
        self._check_config(tp, cp, pp)
        L = np.asarray(lengths, dtype=float)
        cross = bool(self._default_cross(tp, np.array([cp]), pp)[0]) if cross_node is None else bool(cross_node)
        layer_fwd, layer_bwd, head = self._layer_parts(L, tp, np.array([cp]), np.array([cross]))
        blocks = self.model.layers // pp
        k_stage = np.broadcast_to(np.asarray(recompute_layers, dtype=float), L.shape) / pp
        hop = self._stage_hop_ms(L / cp, tp, cross)
        inner_b = blocks * layer_bwd + K.RECOMPUTE_FORWARDS * k_stage * layer_fwd
        return (blocks * layer_fwd + hop, blocks * layer_fwd + head, inner_b + hop,
                inner_b + K.LINEAR_BWD_RATIO * head)

    def _link(self, cross: bool):
        """The point-to-point curve between two GPUs: InfiniBand across nodes, NVLink inside one (CP rings
        and stage boundaries)."""
        return self.k.curve(self.cluster.gpu, "send_recv", 2, 1 if cross else 2)

    def _stage_hop_ms(self, T: np.ndarray, tp: int, cross: bool) -> np.ndarray:
        """One stage boundary's transfer of T tokens' activations per GPU (floor excluded)."""
        curve = self._link(cross)
        nbytes = T * self.model.hidden * self.model.dtype_bytes / tp
        return curve(nbytes) - curve.floor_ms

    def pipeline_latency_ms(self, micro_batches, tp: int, cp: int, pp: int, cross_node: bool | None,
                            recompute_layers) -> float:
        """A pp-stage group's time over its micro-batches (lengths of each, in run order, each with its k):
        overhead_ms + the 1F1B event simulation of their stage times (pipeline_ms)."""
        fwd, bwd = self.stage_times(micro_batches, tp, cp, pp, cross_node, recompute_layers)
        return self.overhead_ms(tp, cp, cross_node, pp) + pipeline_ms(fwd, bwd)

    def stage_times(self, micro_batches, tp: int, cp: int, pp: int, cross_node: bool | None,
                    recompute_layers) -> tuple[np.ndarray, np.ndarray]:
        """(forward, backward) of each micro-batch (rows) on each stage (columns), floors excluded."""
        sizes = [len(b) for b in micro_batches]
        flat = np.concatenate([np.asarray(b, dtype=np.int64) for b in micro_batches]) if sizes else np.zeros(0)
        ks = np.repeat(np.asarray(recompute_layers, dtype=float), sizes)
        f_in, f_last, b_in, b_last = self.stage_parts_array(flat, tp, cp, pp, cross_node, ks)
        of = np.repeat(np.arange(len(sizes)), sizes)
        per = [np.bincount(of, weights=x, minlength=len(sizes)) for x in (f_in, f_last, b_in, b_last)]
        fwd = np.column_stack([per[0]] * (pp - 1) + [per[1]])
        bwd = np.column_stack([per[2]] * (pp - 1) + [per[3]])
        return fwd, bwd

    def _layer_parts(self, L: np.ndarray, tp: int, cp: np.ndarray, cross: np.ndarray):
        """(one block's forward, one block's backward, the LM head's forward) of lengths L, floors excluded."""
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
        return fwd_layer, bwd_layer, head

    def max_tokens(self, tp: int, cp: int, pp: int = 1) -> int:
        """Largest micro-batch (tokens over all cp ranks) that fits in memory, every layer recomputed;
        0 if nothing fits."""
        return self.tokens_cap(tp, cp, self.model.layers, pp)

    def tokens_cap(self, tp: int, cp: int, recompute_layers: int, pp: int = 1) -> int:
        """Largest micro-batch that fits when it recomputes `recompute_layers` layers (its class's cap)."""
        self._check_config(tp, cp, pp)
        return int(self._caps(tp, pp)[self._check_k(recompute_layers, pp) // pp]) * cp

    def _caps(self, tp: int, pp: int = 1) -> np.ndarray:
        """Tokens per CP rank that fit with k = 0, pp, 2·pp … layers recomputed layers (k/pp per stage),
        indexed by k/pp (nondecreasing)."""
        key = (tp, pp)
        if key not in self._rank_caps:
            free = self.usable_bytes - self._static_bytes(tp, pp)
            ks = np.arange(self.model.layers // pp + 1) * pp
            self._rank_caps[key] = np.maximum(0, np.floor(free / self._bytes_per_token(tp, ks, pp))).astype(np.int64)
        return self._rank_caps[key]

    def recompute_layers(self, microbatch_tokens: int, tp: int, cp: int, pp: int = 1) -> int:
        """k of a micro-batch: the least number of recomputed layers with which it fits ('auto'), or every
        layer ('full'); ValueError when it does not fit even then. With pp stages k is a multiple of pp
        (k/pp blocks of each stage)."""
        tokens = int(microbatch_tokens)
        if tokens > self.max_tokens(tp, cp, pp):
            raise ValueError(f"a micro-batch of {tokens} tokens exceeds max_tokens={self.max_tokens(tp, cp, pp)} "
                             f"of {config_name(tp, cp, pp)}")
        return int(self.recompute_layers_array(np.array([tokens]), tp, cp, pp)[0])

    def recompute_layers_array(self, tokens, tp: int, cp: int, pp: int = 1) -> np.ndarray:
        """Vectorised recompute_layers (no fit check: tokens beyond max_tokens get k = layers)."""
        tokens = np.asarray(tokens)
        if self.recompute == "full":
            return np.full(tokens.shape, self.model.layers, dtype=np.int64)
        per_rank = -(-tokens.astype(np.int64) // cp)  # ⌈tokens/cp⌉
        k = np.searchsorted(self._caps(tp, pp), per_rank, side="left")  # least k/pp with per_rank ≤ cap
        return (np.minimum(k, self.model.layers // pp) * pp).astype(np.int64)

    def memory_gb(self, microbatch_tokens: int, tp: int, cp: int, recompute_layers: int | None = None,
                  pp: int = 1) -> float:
        """Peak memory per GPU (GB) for a micro-batch of `microbatch_tokens` tokens over the group that
        recomputes `recompute_layers` layers (default: recompute_layers() of it, or every layer if none fits);
        with stages, on the stage that needs most (the first holds pp micro-batches in flight, the last
        the logits)."""
        if recompute_layers is None:
            recompute_layers = int(self.recompute_layers_array(np.array([microbatch_tokens]), tp, cp, pp)[0])
        k = self._check_k(recompute_layers, pp)
        return float(self.memory_gb_array([microbatch_tokens], tp, cp, [k], pp)[0])

    def memory_gb_array(self, microbatch_tokens, tp: int, cp: int, recompute_layers, pp: int = 1) -> np.ndarray:
        """Vectorised memory_gb over micro-batches with their k (no range check on k)."""
        per_rank = -(-np.asarray(microbatch_tokens, dtype=np.int64) // cp)
        return (self._static_bytes(tp, pp) + per_rank * self._bytes_per_token(tp, np.asarray(recompute_layers), pp)) / GB

    def _check_k(self, k, pp: int = 1) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= self.model.layers \
                or k % pp:
            step = f" and a multiple of pp={pp} (k/pp blocks of each stage)" if pp > 1 else ""
            raise ValueError(f"recompute_layers={k!r}: need an integer in 0..{self.model.layers}{step}")
        return int(k)

    def sync_ms(self, tps: Sequence[int]) -> float:
        """Non-overlapped gradient synchronisation for groups of these TP degrees: an upper bound on
        what the step pays (`sync_upper_ms`); `sync_exposed_ms` is what is left after overlap."""
        return sum(self.sync_parts(tps))

    sync_upper_ms = sync_ms

    def sync_parts(self, tps: Sequence) -> tuple[float, float, float]:
        """(layout gather, gradient reduce-scatter, parameter all-gather), ms, not overlapped. tps: each
        group's layout, a TP degree or (tp, pp).

        A GPU of a (tp, pp) group holds 1/(tp·pp) of the gradients (its stage's layers, TP-sharded). Layout
        = the groups' layout with the fewest GPUs per copy, u_L = t_L·p_L (ties: fewer stages). A group
        of another layout first brings its gradients to it: when its shards tile the layout's (t_L | tp,
        p_L | pp) each GPU receives the rest of its layout shard, (2P/u_L)·(1 − u_L/(tp·pp)) bytes, on NVLink
        when only TP differs and across nodes (InfiniBand) when stages differ; otherwise the whole shard,
        2P/u_L, across nodes. Then the cluster reduce-scatters the 2P/u_L-byte shards (ZeRO-1) and
        all-gathers the updated weights: each (2P/u_L)·(1 − u_L/N) / bw, bw = InfiniBand when the cluster
        spans nodes."""
        try:  # each distinct layout once (a plan of 5,000 groups has a handful)
            layouts = [as_layout(t) for t in set(tps)]
        except TypeError:  # unhashable entries (lists)
            layouts = [as_layout(t) for t in tps]
        if not layouts:
            return 0.0, 0.0, 0.0
        n = self.cluster.gpus
        grad_bytes = 2.0 * self.model.params
        t_l, p_l = min(set(layouts), key=lambda lay: (lay[0] * lay[1], lay[1], lay[0]))
        u_l = t_l * p_l
        gather = max(self._layout_gather_ms((t_l, p_l), lay) for lay in set(layouts))
        if n <= 1:
            return gather, 0.0, 0.0
        one_way = grad_bytes / u_l * (1 - u_l / n) / (self._cluster_gbps() * GB) * 1e3
        return gather, one_way, one_way

    def _cluster_gbps(self) -> float:
        gpu = self.cluster.spec
        return gpu.ib_gbps if self.cluster.gpus > self.cluster.gpus_per_node else gpu.nvlink_gbps

    def _layout_gather_ms(self, target: tuple[int, int], layout: tuple[int, int]) -> float:
        """Bringing a (tp, pp) group's gradients to the target layout (see sync_parts)."""
        if layout == target:
            return 0.0
        (t_l, p_l), (tp, pp) = target, layout
        shard = 2.0 * self.model.params / (t_l * p_l)
        gpu = self.cluster.spec
        if tp % t_l == 0 and pp % p_l == 0:
            bw = gpu.nvlink_gbps if pp == p_l else self._cluster_gbps()
            return shard * (1 - t_l * p_l / (tp * pp)) / (bw * GB) * 1e3
        return shard / (self._cluster_gbps() * GB) * 1e3

    def gradient_buckets(self, groups: int) -> list[tuple[float, float]]:
        """Buckets in the order backward produces them: (share of the gradient bytes, share of the
        backward sweep done when the bucket is complete). Bucket size: Megatron-LM's DDP default,
        max(40M, 1M·dp) parameters (megatron/core/distributed/distributed_data_parallel_config.py,
        `bucket_size`); order: LM head, blocks L−1 … 0, embedding (reverse of the forward)."""
        return self.gradient_buckets_at(float(self.bucket_cap(groups)))

    def gradient_buckets_at(self, cap: float) -> list[tuple[float, float]]:
        """gradient_buckets with buckets of `cap` parameters."""
        m = self.model
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
        return self.param_buckets_at(float(self.bucket_cap(groups)))

    def param_buckets_at(self, cap: float) -> list[tuple[float, float]]:
        """param_buckets with buckets of `cap` parameters."""
        m = self.model
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
        """A lower bound on step − makespan_lower over plans whose smallest layout is t_layout (GPUs per
        parameter copy, tp·pp: the TP degree without stages) and whose
        makespan is ≥ makespan_lower_ms. It follows the slowest group g alone (makespan M): its first
        forward is ≤ FORWARD_SHARE_MAX·M, so it waits d(M) ≥ max_b (c_b − FORWARD_SHARE_MAX·M·pos_b)⁺ for
        the overlapped all-gather (buckets only merge pieces, which delays); it ends at x = M + d(M), its
        window is ≤ BACKWARD_SHARE·M ≤ BACKWARD_SHARE·x; one bucket per layer (any real bucketing merges
        them, which only delays). With stages the slowest group's first forward and last backward run
        through every stage, each a sum over stages whose shares obey the same caps. A plan whose groups
        all have layout t_layout gathers nothing at least; mixed=True bounds the plans that also hold a
        larger layout, which gather at least the least gather between a layout of t_layout GPUs and a
        larger one (inf when there is none). M + d(M) rises with M (FORWARD_SHARE_MAX·pos ≤ 1) and x + exposed
        rises with x (each ready time rises by 1 − BACKWARD_SHARE·(1 − done) ≥ 0 per ms), so the bound
        holds for every makespan above makespan_lower_ms. first_forward_max_ms: a cap on any first
        micro-batch's forward known from the batch (layouts.net_forward_caps); the delay then falls no lower
        than with that forward however long the makespan. waits_included: makespan_lower_ms already bounds
        the slowest group's end after its all-gather wait (layouts.delay_area_bound): no wait is added."""
        key = (t_layout, makespan_lower_ms, mixed, first_forward_max_ms, waits_included)
        if key not in self._sync_lower:  # remembered: a solve asks again for the same bounds (sorting slices)
            if len(self._sync_lower) > 100_000:
                self._sync_lower.clear()
            self._sync_lower[key] = self._sync_exposed_lower(*key)
        return self._sync_lower[key]

    def _sync_exposed_lower(self, t_layout: int, makespan_lower_ms: float, mixed: bool,
                            first_forward_max_ms: float, waits_included: bool) -> float:
        _, reduce, allgather = self.sync_parts([t_layout])
        gather = 0.0
        if mixed:
            gather = self._least_mixed_gather(t_layout)
            if gather is None:
                return math.inf
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

    def bucket_cap(self, groups) -> np.ndarray:
        """Megatron-LM's bucket size for a plan of `groups` groups (parameters): max(40M, 1M·groups)."""
        return np.maximum(K.BUCKET_PARAMS_MIN, K.BUCKET_PARAMS_PER_DP * np.maximum(1, np.asarray(groups)))

    def bucketings(self):
        """Every bucketing a plan on this cluster can have, as arrays for sync_exposed_lower_grouped:
        (caps (K,), cumulative parameter shares and forward positions of the parameter buckets (K, B),
        gradient shares and backward shares done of the gradient buckets (K, B)). Buckets are filled
        greedily in backward order until they reach the cap (gradient_buckets, param_buckets), so the
        bucketing changes only where the cap passes the size of a run of consecutive pieces: the caps
        equal to those sizes (plus 40M and the cap at one group per GPU) give every bucketing of every
        group count, each standing for the caps from the previous one (excluded) up to itself."""
        if self._bucketings is None:
            sizes = np.array([p for p, _ in self._gradient_pieces()], dtype=float)
            runs = np.cumsum(np.r_[0.0, sizes])
            sums = (runs[None, :] - runs[:, None])[np.triu_indices(runs.size, 1)]
            low, high = float(self.bucket_cap(1)), float(self.bucket_cap(self.cluster.gpus))
            caps = np.unique(np.r_[low, high, sums[(sums > low) & (sums < high)]])
            rows = [(self.param_buckets_at(c), self.gradient_buckets_at(c)) for c in caps]
            width = max(max(len(f), len(b)) for f, b in rows)
            forward = np.zeros((2, caps.size, width))   # cumulative share (pads: 0), position (pads: 0)
            backward = np.zeros((2, caps.size, width))  # share (pads: 0), done (pads: 0)
            for k, (f, b) in enumerate(rows):
                shares, positions = np.array(f).T
                forward[0, k, :len(f)], forward[1, k, :len(f)] = np.cumsum(shares), positions
                backward[:, k, :len(b)] = np.array(b).T
            self._bucketings = (caps, forward, backward)
        return self._bucketings

    def sync_exposed_lower_grouped(self, t_layout: int, makespans, least_groups, mixed: bool = False,
                                   first_forward_max_ms: float = math.inf) -> np.ndarray:
        """sync_exposed_lower_ms of plans of makespan ≥ makespans[j] and at least least_groups[j] groups, with
        their real buckets instead of one piece per layer: the same argument (the slowest group alone),
        the least over every bucketing a group count ≥ least_groups[j] can have (bucketings). A plan of
        many groups has few, large buckets (1M parameters a group: 4,295 groups put llama3-8b in two), so
        the slowest group waits for a whole first bucket before its forward starts and the last bucket's
        reduce-scatter starts only when the backward ends. Without stages only (with stages see
        sync_exposed_lower_ms). Returns (J,)."""
        caps, (cum, pos), (shares, done) = self.bucketings()
        M = np.asarray(makespans, dtype=float)[:, None, None]
        _, reduce, allgather = self.sync_parts([t_layout])
        gather = self._least_mixed_gather(t_layout) if mixed else 0.0
        if gather is None:
            return np.full(M.shape[0], math.inf)
        x = M
        if self.overlap_param_gather:
            first = np.minimum(K.FORWARD_SHARE_MAX * M, first_forward_max_ms)
            x = M + np.maximum(0.0, (allgather * cum[None] - first * pos[None]).max(axis=2, keepdims=True))
        q = (gather + reduce) * shares[None]                                  # (1, K, B)
        tail = np.cumsum(q[..., ::-1], axis=2)[..., ::-1]                    # sent from bucket b on
        ready = x - K.BACKWARD_SHARE * x * (1.0 - done[None])                 # (J, K, B)
        start = allgather if self.overlap_param_gather else -math.inf
        clock = np.maximum(start + q.sum(axis=2), (ready + tail).max(axis=2))  # (J, K): the chain, closed form
        exposed = np.maximum(clock, x[..., 0]) - M[..., 0]
        if not self.overlap_param_gather:
            exposed = exposed + allgather
        # bucketing k stands for caps in (caps[k-1], caps[k]]: it is possible when caps[k] ≥ the least cap
        possible = caps[None, :] >= self.bucket_cap(np.asarray(least_groups, dtype=float))[:, None]
        return np.where(possible, exposed, np.inf).min(axis=1)

    def _least_mixed_gather(self, unit: int) -> float | None:
        """Least layout gather of a plan whose smallest layout has `unit` GPUs per copy and that holds a
        larger one (None when no layout is larger)."""
        layouts = self.layouts()
        smallest = [lay for lay in layouts if lay[0] * lay[1] == unit] or [(unit, 1)]
        larger = [lay for lay in layouts if lay[0] * lay[1] > unit]
        if not larger:
            return None
        return min(self._layout_gather_ms(a, b) for a in smallest for b in larger)

    def least_gather_delays(self, allgather_ms: float, first_forwards) -> np.ndarray:
        """gather_delays with one piece per layer: a lower bound under any bucketing (a bucket completes
        with its last piece and is needed with its first)."""
        return _waits(*self.layer_pieces(), allgather_ms, first_forwards)

    def layer_pieces(self) -> tuple[np.ndarray, np.ndarray]:
        """(share of the parameters, share of a forward done when first needed) of each piece in forward
        order, one piece per layer (_forward_pieces)."""
        params, positions = (np.array(col, dtype=float) for col in zip(*self._forward_pieces()))
        return params / self.model.params, positions

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

    def _static_bytes(self, tp: int, pp: int = 1) -> float:
        """Weights and gradients of the GPU's share (its stage's blocks, and one vocabulary matrix and the
        final norm on an end stage: the heaviest stage) over TP, and its ZeRO-1 share of the optimizer
        states (every GPU of the cluster holds an equal share)."""
        return self._weight_grad_bytes(tp, pp) + K.OPTIMIZER_BYTES * self.model.params / self.cluster.gpus

    def _weight_grad_bytes(self, tp: int, pp: int = 1) -> float:
        """Weights and gradients one GPU holds (see _static_bytes): what no cluster size shards further."""
        m = self.model
        held = m.params if pp == 1 else m.layers // pp * m.params_per_layer + m.vocab * m.hidden + m.hidden
        return K.WEIGHT_GRAD_BYTES * held / tp

    def _bytes_per_token(self, tp: int, recompute_layers=None, pp: int = 1):
        """Activation bytes per token per GPU with k recomputed layers (default: every layer): the k
        recomputed blocks keep their input only (hidden·dtype bytes), the layers − k others every
        activation (the Korthikanti et al. 2022 per-layer bytes below), plus one block's working set (the
        block being recomputed, or the backward's temporaries) and the logits; all sharded over TP
        (sequence parallelism). Array-friendly in k. With pp stages (k/pp recomputed blocks each), the
        most of: the first stage, which holds pp micro-batches in flight under 1F1B (pp·layers/pp blocks:
        as much as without stages) but no logits, and the last, one micro-batch and the logits."""
        m = self.model
        k = m.layers if recompute_layers is None else np.asarray(recompute_layers)
        working = self._layer_activation_bytes()
        logits = K.LOGIT_BYTES * m.vocab
        if pp == 1:
            return (self._blocks_bytes(m.layers, k) + working + logits) / tp
        first = self._blocks_bytes(m.layers, k) + working
        last = self._blocks_bytes(m.layers // pp, k / pp) + working + logits
        return np.maximum(first, last) / tp

    def _blocks_bytes(self, blocks, recomputed):
        """Per token: `recomputed` blocks keep their input, the other blocks every activation."""
        return recomputed * self.model.hidden * self.model.dtype_bytes \
            + (blocks - recomputed) * self._layer_activation_bytes()

    def _layer_activation_bytes(self) -> float:
        """Bytes per token one block holds for its backward: 34·h for a 4h MLP (Korthikanti et al. 2022,
        eq. 2 / table 2, FlashAttention: no s² term), the MLP part scaled by the real MLP width."""
        m = self.model
        mlp_scale = m.ffn * (1.5 if m.gated_mlp else 1.0) / (4 * m.hidden)
        return (K.ACT_ATTN_COEF + K.ACT_MLP_COEF * mlp_scale) * m.hidden

    def layouts(self) -> list[tuple[int, int]]:
        """Every (tp, pp) a group may take: TP degrees of the cluster and PP degrees of pp_degrees, with
        tp·pp ≤ the cluster's GPUs."""
        return [(t, p) for p in self.pp_degrees for t in self.cluster.tp_degrees(self.model)
                if t * p <= self.cluster.gpus]

    def fitting_layouts(self) -> list[tuple[int, int]]:
        """The (tp, pp) on which the model fits at all (a one-token micro-batch, every layer recomputed)."""
        return [(t, p) for t, p in self.layouts()
                if self._static_bytes(t, p) + self._bytes_per_token(t, None, p) <= self.usable_bytes]

    def _check_fits(self) -> None:
        if self.fitting_layouts():
            return
        best_tp, most_pp = min(self.layouts() or [(1, 1)], key=lambda lay: self._static_bytes(*lay))
        static = self._static_bytes(best_tp, most_pp) / GB
        staged = f" with {most_pp} pipeline stages (groups of {best_tp * most_pp} GPUs)" if most_pp > 1 else ""
        raise ValueError(
            f"{self.model.name} cannot fit on {self.cluster.gpus} x {self.cluster.gpu}: weights, gradients "
            f"and ZeRO-1 optimizer states alone need {static:.1f} GB per GPU at TP{best_tp}{staged} "
            f"(usable {self.usable_bytes / GB:.1f} GB); {self._what_would_fit()}")

    def _what_would_fit(self) -> str:
        """Advice for a model that does not fit: the least cluster that holds it at some (TP, PP) (weights
        and gradients shard over TP and stages, the optimizer states over every GPU), or the pipeline
        degrees it needs when the allowed ones cannot hold weights and gradients whatever the cluster. A
        cluster is advised only where a group holds ADVICE_TOKENS tokens per GPU, not just the weights."""
        p, gpn, layers = self.model.params, self.cluster.gpus_per_node, self.model.layers
        tps = [t for t in (1, 2, 4, 8) if gpn % t == 0 and self.model.heads % t == 0]
        least = []
        for t in tps:
            for s in self.pp_degrees:
                room = self.usable_bytes - self._weight_grad_bytes(t, s) - ADVICE_TOKENS * self._bytes_per_token(t, None, s)
                if room > 0:
                    least.append((max(t * s, math.ceil(K.OPTIMIZER_BYTES * p / room)), t, s))
        if least:
            gpus, t, s = min(least)
            return f"use at least {gpus} GPUs (for instance TP{t}" + (f" with {s} pipeline stages)" if s > 1 else ")")
        need = [s for s in pipeline_divisors(layers) if any(
            self.usable_bytes > self._weight_grad_bytes(t, s) + self._bytes_per_token(t, None, s) for t in tps)]
        if need:
            return f"it needs at least {need[0]} pipeline stages (allowed here: {list(self.pp_degrees)})"
        return "no split of its layers into pipeline stages holds it on this GPU"

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

    def _ring_var(self, T: np.ndarray, tp: int, cp: np.ndarray, cross: np.ndarray) -> np.ndarray:
        """Forward ring: each rank passes its K,V block (T·2·kv_heads/tp·head_dim·2 bytes) cp−1 times,
        over InfiniBand where the group crosses nodes, NVLink otherwise."""
        m = self.model
        kv_heads = max(1.0, m.kv_heads / tp)  # GQA heads are replicated when tp > kv_heads
        nbytes = T * 2 * kv_heads * m.head_dim * m.dtype_bytes
        ib, nvl = self._link(True), self._link(False)
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
    def check_pp(self, pp) -> int:
        """pp as a pipeline degree of this model (ValueError naming it otherwise)."""
        return check_pp(pp, self.model.layers)

    def _check_config(self, tp: int, cp: int, pp: int = 1) -> None:
        if tp not in self.cluster.tp_degrees(self.model):
            raise ValueError(f"tp={tp!r} is not a valid TP degree for {self.model.name} on this cluster "
                             f"(valid: {self.cluster.tp_degrees(self.model)})")
        check_pp(pp, self.model.layers)
        if not isinstance(cp, (int, np.integer)) or cp < 1:
            raise ValueError(f"cp={cp!r} invalid: need an integer >= 1")
        if tp * cp * pp > self.cluster.gpus:
            raise ValueError(f"cp={cp} too large: {config_name(tp, cp, pp)} needs {tp * cp * pp} GPUs; the cluster has "
                             f"{self.cluster.gpus}")

    @staticmethod
    def _check_lengths(lengths) -> np.ndarray:
        arr = np.asarray(list(lengths))
        if arr.size and (arr.dtype.kind not in "iu" or arr.min() <= 0):
            bad = next(x for x in lengths if not isinstance(x, (int, np.integer)) or x <= 0)
            raise ValueError(f"sequence lengths must be positive integers, got {bad!r}")
        return arr.astype(np.int64)


def as_layout(t) -> tuple[int, int]:
    """A group's parameter layout (tp, pp) from a TP degree or a (tp, pp) pair."""
    return (int(t), 1) if isinstance(t, (int, np.integer)) else (int(t[0]), int(t[1]))


def check_pp(pp, layers: int) -> int:
    """A pipeline degree: an integer that divides the layers into even stages (ValueError otherwise)."""
    if isinstance(pp, bool) or not isinstance(pp, (int, np.integer)) or pp < 1:
        raise ValueError(f"pp={pp!r}: need a positive integer number of pipeline stages")
    if pp > layers:
        raise ValueError(f"pp={pp}: more pipeline stages than the model's {layers} layers")
    if layers % pp:
        raise ValueError(f"pp={pp} does not divide the model's {layers} layers into even stages "
                         f"(divisors: {pipeline_divisors(layers)})")
    return int(pp)


def pipeline_divisors(layers: int) -> list[int]:
    return [d for d in range(1, layers + 1) if layers % d == 0]


def config_name(tp: int, cp: int, pp: int = 1) -> str:
    return f"TP{tp}xCP{cp}" + (f"xPP{pp}" if pp > 1 else "")


def pipeline_ms(fwd: np.ndarray, bwd: np.ndarray) -> float:
    """Makespan of a 1F1B pipeline (PipeDream-Flush, Narayanan et al. 2021; Megatron-LM's schedule) by event
    simulation: fwd[i, s], bwd[i, s] = micro-batch i's forward and backward on stage s (each including its
    send). Stage s runs min(pp − s − 1, m) forwards, then alternates one forward and one backward, then
    drains its backwards; F(i, s) waits for F(i, s − 1), B(i, s) for B(i, s + 1) (the last stage's for its
    own F(i)); every op starts as soon as its stage and its input are free."""
    m, pp = fwd.shape
    if m == 0:
        return 0.0
    end_f = np.full((m, pp), -1.0)
    end_b = np.full((m, pp), -1.0)
    orders = [_one_f_one_b(m, pp, s) for s in range(pp)]
    pos, clock, left = [0] * pp, [0.0] * pp, 2 * m * pp
    while left:
        for s in range(pp):
            order = orders[s]
            while pos[s] < len(order):
                backward, i = order[pos[s]]
                if backward:
                    ready = end_f[i, s] if s == pp - 1 else end_b[i, s + 1]
                else:
                    ready = 0.0 if s == 0 else end_f[i, s - 1]
                if ready < 0:
                    break  # its input is not there yet: the next stage in turn
                t = max(clock[s], ready) + (bwd[i, s] if backward else fwd[i, s])
                (end_b if backward else end_f)[i, s] = t
                clock[s], pos[s], left = t, pos[s] + 1, left - 1
    return float(max(clock))


def _one_f_one_b(m: int, pp: int, s: int) -> list[tuple[bool, int]]:
    """Stage s's op order: (is backward, micro-batch)."""
    warm = min(pp - s - 1, m)
    order = [(False, i) for i in range(warm)]
    for j in range(m - warm):
        order += [(False, warm + j), (True, j)]
    return order + [(True, i) for i in range(m - warm, m)]


def pack_by_class(lengths, ids, lat: LatencyModel, tp: int, cp: int, pp: int = 1,
                  recompute_layers: int | None = None,
                  cross_node: bool | None = None) -> tuple[list[list[int]], list[int]]:
    """Micro-batches of a group and the k each recomputes. recompute_layers=None: sequences of one class
    (the least k with which each fits alone) share micro-batches up to that class's cap, so a micro-batch's
    least k is its class's; an int: that k for all, packed up to what fits with it. First-fit decreasing.
    With stages the micro-batch size is a choice: fewer, larger micro-batches leave longer fill, drain
    and stalls, more and smaller ones pipeline better; three packings are weighed — up to the cap, up to
    the group's longest sequence (WLB-LLM's), one sequence each — each with its micro-batches' costs
    evened out (_balanced), and the one with the least estimated 1F1B time kept (_pipeline_estimate: a
    simulation per option took seconds per plan at 4,096 micro-batches x 14 stages)."""
    if pp == 1:
        return _pack_up_to(lengths, ids, lat, tp, cp, 1, recompute_layers, None)
    longest = max((lengths[i] for i in ids), default=0)
    options = [_pack_up_to(lengths, ids, lat, tp, cp, pp, recompute_layers, budget)
               for budget in (None, longest, 0)]
    return min(options, key=lambda packed: _pipeline_estimate(lat, lengths, packed, tp, cp, pp, cross_node))


def _pipeline_estimate(lat: LatencyModel, lengths, packed, tp: int, cp: int, pp: int, cross_node) -> float:
    """A packing's 1F1B time without simulating it: the busiest stage's work, plus the fill and the drain of
    micro-batches run in increasing stage time, (pp − 1)·(the first's forward + the last's backward), each
    op at its slowest stage."""
    batches, ks = packed
    fwd, bwd = lat.stage_times([[lengths[i] for i in mb] for mb in batches], tp, cp, pp, cross_node, ks)
    f, b = fwd.max(axis=1), bwd.max(axis=1)
    order = np.argsort(f + b, kind="stable")
    return float((fwd + bwd).sum(axis=0).max() + (pp - 1) * (f[order[0]] + b[order[-1]]))


def _pack_up_to(lengths, ids, lat: LatencyModel, tp: int, cp: int, pp: int, recompute_layers,
                budget: int | None) -> tuple[list[list[int]], list[int]]:
    """pack_by_class with micro-batches of at most `budget` tokens (None: the class's cap; 0: one sequence
    each), balanced in cost when pp > 1."""
    from ..packing import pack_micro_batches
    ids = list(ids)
    if recompute_layers is not None:
        ks = np.full(len(ids), int(recompute_layers), dtype=np.int64)
    else:
        ks = lat.recompute_layers_array(np.array([lengths[i] for i in ids], dtype=np.int64), tp, cp, pp)
    batches, out_ks = [], []
    for k in sorted(set(ks.tolist())):
        members = [i for i, ki in zip(ids, ks) if ki == k]
        cap = lat.tokens_cap(tp, cp, k, pp)
        if budget == 0:
            packed = [[i] for i in sorted(members, key=lambda i: (-lengths[i], i))]
        else:
            size = cap if budget is None else min(cap, budget)
            packed = pack_micro_batches(lengths, members, size)
            if pp > 1:
                costs = lat.seq_latency_array(np.array([lengths[i] for i in members]), tp, cp, None, k, pp)
                packed = _balanced(lengths, packed, size, dict(zip(members, costs.tolist())))
        batches += packed
        out_ks += [k] * len(packed)
    return batches, out_ks


def _pipelined_ms(lat: LatencyModel, lengths, packed, tp: int, cp: int, pp: int, cross_node) -> float:
    """A packing's 1F1B time, micro-batches in increasing stage time (as plans run them)."""
    batches, ks = packed
    sizes = [[lengths[i] for i in mb] for mb in batches]
    fwd, bwd = lat.stage_times(sizes, tp, cp, pp, cross_node, ks)
    order = pipeline_order(fwd, bwd)
    return pipeline_ms(fwd[order], bwd[order])


def pipeline_order(fwd: np.ndarray, bwd: np.ndarray) -> np.ndarray:
    """Micro-batches (rows of stage_times) in increasing stage time, the order pipelined groups run them:
    sorted, 1F1B stalls least, and its fill and drain are the shortest first and the longest last."""
    return np.argsort((fwd + bwd).max(axis=1), kind="stable")


class GroupStepEnds:
    """Each group's step end s_g for arrays of (end, first forward, last window), the plan's sync parts and
    bucket count fixed: when the group ends after its all-gather wait, or when the reduce-scatter it alone
    holds back would finish,
        x_g = end_g + wait(F_g),   s_g = max(x_g, A + Q, max_b [x_g − W_g·(1 − done_b) + Q·tail_b])
    (see sync_exposed_ms, of which max_g s_g is a lower bound and, groups being alike, about the value;
    without the overlap A is paid after the step instead). least: what a group that hides everything
    still pays past its end."""

    def __init__(self, lat, tps, groups: int):
        gather, reduce, self.allgather = lat.sync_parts(tps)
        self.q = gather + reduce
        self.lat, self.groups = lat, groups
        shares, done = lat._bucket_arrays("gradient", groups)
        self.slope = 1.0 - done                        # W's weight in each bucket's ready time
        self.tail = self.q * np.cumsum(shares[::-1])[::-1]  # what is still to send from bucket b on
        self.overlap = lat.overlap_param_gather
        huge = 1e12
        self.least = float(self(huge, [huge], [huge])[0]) - huge

    def __call__(self, ends, firsts, windows) -> np.ndarray:
        firsts, windows = np.asarray(firsts, dtype=float), np.asarray(windows, dtype=float)
        ends = np.broadcast_to(np.asarray(ends, dtype=float), firsts.shape)  # (one end for all, or one each)
        if self.overlap:
            x = ends + self.lat.gather_delays(self.allgather, firsts, self.groups)
            start = self.allgather
        else:
            x, start = ends, -np.inf
        ready = x[:, None] - windows[:, None] * self.slope[None, :] + self.tail[None, :]
        s = np.maximum(x, np.maximum(start + self.q, ready.max(axis=1)))
        return s if self.overlap else s + self.allgather


def _balanced(lengths, packed: list[list[int]], cap: int, cost_of) -> list[list[int]]:
    """As many micro-batches as first-fit packed, their costs evened out (WLB-LLM's variable-length packing,
    which shrinks pipeline stalls): sequences by decreasing cost (cost_of[i]), each to the cheapest
    micro-batch with room; where none has room, first-fit's micro-batches stand. Plain Python: the step
    polish calls it for every group it prices."""
    m = len(packed)
    if m <= 1:
        return packed
    load, room = [0.0] * m, [cap] * m
    out: list[list[int]] = [[] for _ in range(m)]
    for i in sorted((i for mb in packed for i in mb), key=lambda i: (-cost_of[i], i)):
        fits = [b for b in range(m) if room[b] >= lengths[i]]
        if not fits:
            return packed
        b = min(fits, key=load.__getitem__)
        out[b].append(i)
        load[b] += cost_of[i]
        room[b] -= lengths[i]
    return out


def _waits(shares: np.ndarray, positions: np.ndarray, allgather_ms: float, first_forwards) -> np.ndarray:
    """max over pieces (c_p − F·pos_p)⁺ for each first forward F: c_p the all-gather's completion of piece p
    (pieces back to back from the step's start, forward order), pos_p where the forward first needs it."""
    complete = allgather_ms * np.cumsum(shares)
    first = np.asarray(first_forwards, dtype=float)
    return np.maximum(0.0, (complete[None, :] - first[:, None] * positions[None, :]).max(axis=1))


def file_sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()
