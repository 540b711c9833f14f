"""Every constant of the step model, with its source.

"vidur" = the H100 kernel tables shipped in hetero_sched/models/h100 (copied from the Vidur project,
microsoft/vidur commit 7d47513, MIT licence; see models/README.md). "ref" = the published H100 figures
collected in the reference README that ships with this project's calibration report
(benchmarks/results/calibration_202611.md quotes each one).
"""
from __future__ import annotations

# --- Linear layers (GEMMs) -------------------------------------------------------------------------
# t = GEMM_FLOOR_MS + 2·M·N·K / (GEMM_PEAK_TFLOPS·1e9 · M/(M + GEMM_M_HALF))  [ms]
# Fitted by hetero_sched.latency.calibrate on the Llama-2-7b vidur table only (median time, 4 GEMMs,
# TP 1-8, 1-4096 tokens, log-error least squares); holdout error on 4 other models is in the report.
GEMM_FLOOR_MS = 0.006173
GEMM_PEAK_TFLOPS = 761.60
GEMM_M_HALF = 198.07

# Pointwise kernels: t = floor + coefficient · tokens · width  [ms]; per operator, same fit and data.
# width: hidden for the norms and the residual add (not TP-sharded in the vidur runs),
# (hidden + kv_heads·head_dim)/tp for rotary embedding, ffn/tp for the activation.
POINTWISE = {  # op: (floor_ms, ms per token·width element)
    "input_layernorm": (0.002752, 2.732e-09),
    "post_attention_layernorm": (0.002577, 2.973e-09),
    "attn_rope": (0.001872, 2.216e-09),
    "mlp_act": (0.001803, 3.181e-09),
    "add": (0.001094, 1.546e-09),
}

# --- Attention (FlashAttention) -------------------------------------------------------------------
# ref: FlashAttention-3 causal forward, H100 SXM5 bf16, head dim 128, TFLOP/s by sequence length.
FA_FWD_SEQLEN = (512, 1024, 2048, 4096, 8192, 16384)
FA_FWD_TFLOPS = (292.0, 423.0, 521.0, 579.0, 602.0, 616.0)
# ref: "backward runs at roughly 0.55-0.9x the forward rate": we take the midpoint 0.725.
FA_BWD_RATE = 0.725
# Backward attention does 2.5x the forward matmul FLOPs (5 GEMMs: dV, dP, dS->dQ, dK, plus the
# recomputed QK^T, against 2 in the forward; FlashAttention-2 paper, Dao 2023, section 3.2).
FA_BWD_FLOP_RATIO = 2.5
ATTN_TILE = 128  # FlashAttention's query/key block size on H100 (FA3 paper, 128x128 tiles).
ATTN_FLOOR_MS = GEMM_FLOOR_MS  # a kernel launch + tail: the fitted GEMM floor stands in (vidur has no attention rows)

# --- Backward and recomputation --------------------------------------------------------------------
# A linear layer's backward computes dX and dW: 2x its forward FLOPs at the same efficiency
# (Narayanan et al. 2021, "Efficient Large-Scale Language Model Training", eq. 3).
LINEAR_BWD_RATIO = 2.0
# A recomputed block re-runs its forward once during backward (Korthikanti et al. 2022, "Reducing
# Activation Recomputation", table 2): one extra forward per recomputed layer. Which layers: Megatron-LM's
# block method (--recompute-granularity full --recompute-method block --recompute-num-layers k) recomputes
# the first k blocks and keeps every activation of the others; recompute="auto" takes the least k with
# which a micro-batch fits, recompute="full" k = layers.
RECOMPUTE_FORWARDS = 1

# --- Communication ----------------------------------------------------------------------------------
# NCCL times interpolated in log-size from the vidur tables (models/h100/nccl_*.csv, median statistic).
# Beyond the largest measured message (64 MiB) time grows at the largest message's bandwidth.
# Megatron TP with sequence parallelism: per block and forward pass, 2 all-gathers + 2 reduce-scatters
# of tokens·hidden·2 bytes = the traffic of 2 all-reduces (Korthikanti et al. 2022, section 4.2.2).
TP_ALLREDUCES_PER_LAYER_FWD = 2
# Inter-node bandwidth when no measured table covers a collective: vidur send_recv across nodes,
# 64 MiB in 1.871 ms = 35.9 GB/s (ref figure: 46-48 GB/s per 400 Gb/s NDR NIC; we keep the measured).
IB_GBPS = 35.9
# Intra-node all-reduce bus bandwidth: vidur all_reduce, 8 GPUs, 64 MiB in 0.322 ms = 364.7 GB/s.
NVLINK_BUS_GBPS = 364.7

# --- Gradient synchronisation -------------------------------------------------------------------------
# Gradient bucket size: Megatron-LM DDP default, max(40M, 1M·dp) parameters ("larger DP sizes need larger
# buckets to ensure collectives do not become latency-bound"; megatron/core/distributed/
# distributed_data_parallel_config.py, field bucket_size).
BUCKET_PARAMS_MIN = 40_000_000
BUCKET_PARAMS_PER_DP = 1_000_000
# Share of a micro-batch spent in its backward sweep under full recomputation: per block, recompute (one
# forward) + backward (LINEAR_BWD_RATIO forwards) out of forward + recompute + backward — (1+2)/(1+1+2).
# Attention's backward is heavier (FA_BWD_FLOP_RATIO / FA_BWD_RATE ≈ 3.4 forwards), so 0.75 understates
# the window: the exposed sync is, if anything, overstated.
# With k of the layers recomputed the share is (k/layers + 2)/(1 + k/layers + 2) ≤ BACKWARD_SHARE (the bound
# takes BACKWARD_SHARE, the largest).
BACKWARD_SHARE = (RECOMPUTE_FORWARDS + LINEAR_BWD_RATIO) / (1 + RECOMPUTE_FORWARDS + LINEAR_BWD_RATIO)
# Parameter all-gather overlapped with the next forward (Megatron-LM distributed optimizer,
# --overlap-param-gather: each bucket's all-gather is waited for when the forward reaches its first
# parameter; megatron/core/distributed/param_and_grad_buffer.py). The forward a group's first micro-batch
# can hide it behind is computed from the step model's forward parts; a bound needs the largest share of a
# micro-batch's time its forward can take: per component forward/(forward + backward) with nothing
# recomputed is 1/3 for linear layers (LINEAR_BWD_RATIO = 2) and the LM head, ≤ 1/3 for attention and the
# ring (their backward is ≥ 2x the forward), 1/2 for the TP collectives (backward moves as much as the
# forward); a sum of parts never exceeds its largest part's share.
FORWARD_SHARE_MAX = 0.5

# --- Memory ---------------------------------------------------------------------------------------
# Bytes per parameter: bf16 weights + bf16 gradients, sharded over TP, replicated across groups.
WEIGHT_GRAD_BYTES = 4
# fp32 master weights + Adam m and v: 12 bytes per parameter, ZeRO-1 over every GPU
# (Rajbhandari et al. 2020, ZeRO, section 3: K = 12 for mixed-precision Adam).
OPTIMIZER_BYTES = 12
# Activation bytes per token per block with sequence parallelism and FlashAttention (no s^2 term):
# 34·h/t for a 4h MLP (Korthikanti et al. 2022, eq. 2/table 2); split 11·h attention + 19·h MLP, the
# MLP part scaled by the real MLP width (gated: 3 matrices).
ACT_ATTN_COEF = 11
ACT_MLP_COEF = 19
# Logits: bf16 values + bf16 gradient per vocabulary entry, sharded over TP (vocab-parallel head),
# loss computed in chunks so no fp32 copy of the whole tensor is held.
LOGIT_BYTES = 4
# Memory left unused: CUDA context, NCCL buffers and allocator fragmentation (10 % of the device).
MEMORY_RESERVE_FRACTION = 0.10
