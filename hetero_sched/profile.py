"""`hetero-sched profile`: time on the local device the pieces the step model is made of, fit its curves,
write a calibration file that `hs.latency_model(..., calibration=path)` reads for every part.

Measured (warm-up, then the median of repeats, synchronised timers):
- the model's block GEMMs (fused QKV, output, gate+up, down) at every TP shard width over a token sweep;
  fitted as t = floor + 2NK(M + m½)/peak (least relative squares; m½ by a log grid);
- the pointwise kernels (RMSNorm, rotary embedding, SiLU·mul, residual add), each t = floor + c·M·width;
- causal attention forward and backward (flash-attn when installed, else torch SDPA — recorded), one
  TP1 rank's heads; the forward as TFLOP/s per sequence length, the backward as the rate relative to it;
- NCCL all-reduce (2, 4, 8 ranks) and send/recv (two ranks) when ≥ 2 GPUs are visible, within the node
  (inter-node curves, and everything when one GPU is visible, stay the preset's; the file says so).
`--device cpu --quick` runs the same code on a reduced sweep, so the path is tested without a GPU.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import platform
import statistics
import time

import numpy as np

from .latency import constants as K
from .latency.analytic import block_gemm_shapes, pointwise_widths
from .latency.kernels import CALIBRATION_FORMAT, CALIBRATION_VERSION
from .specs import ModelSpec

FULL = {"tokens": (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384), "seqlen": tuple(2 ** k for k in range(7, 18)),
        "warmup": 3, "repeats": 10}
QUICK = {"tokens": (32, 128, 512), "seqlen": (128, 256, 512, 1024), "warmup": 1, "repeats": 3}


def profile(model: ModelSpec, device: str = "cuda", quick: bool = False, tps=(1, 2, 4, 8),
            collectives: bool = True) -> dict:
    """Measure, fit and return the calibration document (a dict ready for JSON). collectives=False skips
    the NCCL (gloo on CPU) timings: the preset's curves stay, and the file says so."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("no CUDA device is visible: profile on a GPU machine, or use --device cpu --quick "
                         "to exercise the code path")
    if device not in ("cuda", "cpu"):
        raise ValueError(f"--device must be cuda or cpu, got {device!r}")
    sweep = QUICK if quick else FULL
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    timer = _Timer(torch, device, sweep["warmup"], sweep["repeats"])
    tps = [t for t in tps if model.heads % t == 0 and model.kv_heads % t == 0 or t == 1]
    gemm_rows = _gemms(torch, timer, model, tps, sweep["tokens"], device, dtype)
    point_rows = _pointwise(torch, timer, model, tps, sweep["tokens"], device, dtype)
    attn_rows, impl = _attention(torch, timer, model, sweep["seqlen"], device, dtype, quick)
    nccl, nccl_note = _nccl(torch, device, quick) if collectives else ({}, "collectives were not timed (the "
                                                                        "preset's curves are used)")
    return {
        "format": CALIBRATION_FORMAT, "version": CALIBRATION_VERSION, "model": model.to_dict(),
        "device": _device(torch, device), "software": _software(torch, impl), "quick": quick,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "gemm": {**fit_gemm(gemm_rows), "measurements": gemm_rows},
        "pointwise": {**fit_pointwise(point_rows), "measurements": point_rows},
        "attention": {**fit_attention(attn_rows, model), "impl": impl, "measurements": attn_rows},
        "nccl": nccl, "nccl_note": nccl_note,
    }


# ---- timing ---------------------------------------------------------------------------------------------------
def device_clock(device: str):
    """Wall clock on CUDA (synchronised around the kernels); this process's CPU time on CPU, so that other
    processes sharing the cores do not stretch a kernel's time (a CPU calibration and `check-model` then
    count the same thing: CPU-seconds at the thread count they ran with, which they record)."""
    return time.process_time if device == "cpu" else time.perf_counter


class _Timer:
    def __init__(self, torch, device, warmup, repeats, clock=None) -> None:
        self.torch, self.device, self.warmup, self.repeats = torch, device, warmup, repeats
        self.clock = clock or device_clock(device)

    def __call__(self, fn) -> float:
        """Median milliseconds of fn() over repeats, after warm-up (device synchronised)."""
        clock = self.clock
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.repeats):
            self._sync()
            start = clock()
            fn()
            self._sync()
            times.append((clock() - start) * 1e3)
        return statistics.median(times)

    def _sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()


def _gemms(torch, timer, model, tps, tokens, device, dtype) -> list:
    """x·Wᵀ with W stored [N, K], as nn.Linear and Megatron-LM's parallel linear layers hold and apply their
    weights (torch.nn.functional.linear): the layout the layers run, which BLAS libraries may time
    differently from x·W."""
    linear = torch.nn.functional.linear
    rows = []
    for tp in tps:
        for name, (n, k) in block_gemm_shapes(model.hidden, model.heads, model.kv_heads, model.ffn,
                                              model.gated_mlp, tp).items():
            w = torch.randn(int(n), int(k), device=device, dtype=dtype)
            for m in tokens:
                x = torch.randn(m, int(k), device=device, dtype=dtype)
                rows.append([name, tp, m, int(n), int(k), timer(lambda x=x, w=w: linear(x, w))])
    return rows


def _pointwise(torch, timer, model, tps, tokens, device, dtype) -> list:
    rows = []
    for tp in tps:
        widths = pointwise_widths(model.hidden, model.heads, model.kv_heads, model.ffn, tp)
        for op, width in widths.items():
            width = int(width)
            for m in tokens:
                x = torch.randn(m, width, device=device, dtype=dtype)
                y = torch.randn(m, width, device=device, dtype=dtype)
                rows.append([op, tp, m, width, timer(_pointwise_fn(torch, op, x, y))])
    return rows


def _pointwise_fn(torch, op, x, y):
    if op.endswith("layernorm"):
        return lambda: x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype)
    if op == "attn_rope":
        half = x.shape[-1] // 2
        return lambda: torch.cat([x[:, :half] * y[:, :half] - x[:, half:] * y[:, half:],
                                  x[:, :half] * y[:, half:] + x[:, half:] * y[:, :half]], dim=-1)
    if op == "mlp_act":
        return lambda: torch.nn.functional.silu(x) * y
    return lambda: x + y


def _attention(torch, timer, model, seqlens, device, dtype, quick) -> tuple[list, str]:
    fwd, impl = _attention_impl(torch, device)
    heads = max(1, model.heads // (8 if quick else 1))
    rows = []
    for L in seqlens:
        shape = (1, heads, L, model.head_dim)
        q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        t_fwd = timer(lambda q=q, k=k, v=v: fwd(q, k, v))
        out = fwd(q, k, v)
        grad = torch.randn_like(out)

        def backward(out=out, grad=grad, q=q, k=k, v=v):
            torch.autograd.grad(out, (q, k, v), grad, retain_graph=True)
        rows.append([L, heads, model.head_dim, t_fwd, timer(backward)])
    return rows, impl


def _attention_impl(torch, device):
    if device == "cuda":
        try:
            from flash_attn import flash_attn_func

            def fa(q, k, v):
                return flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
            return fa, "flash-attn"
        except ImportError:
            pass

    def sdpa(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    return sdpa, "torch-sdpa"


def _nccl(torch, device, quick: bool = False) -> tuple[dict, str]:
    """All-reduce over 2, 4, 8 ranks and send/recv between two ranks of this machine, timed by processes
    joined with NCCL (gloo on the CPU path, which stands in to exercise the code). Inter-node curves
    cannot be measured on one machine: the preset's are kept for them."""
    ranks = min(8, torch.cuda.device_count()) if device == "cuda" else (2 if quick else 0)
    if ranks < 2:
        return {}, (f"{ranks} GPU visible: NCCL all-reduce and send/recv were not measured; the GPU preset's "
                    "curves (H100 measurements scaled by datasheet link rates) are used")
    import tempfile

    from .runtime.launch import free_port

    sizes = [2 ** k for k in (range(11, 17) if quick else range(11, 27))]
    with tempfile.TemporaryDirectory() as tmp:
        torch.multiprocessing.spawn(_collective_worker, args=(ranks, free_port(), device, sizes, quick, tmp),
                                    nprocs=ranks, join=True)
        with open(f"{tmp}/nccl.json") as fh:
            rows = json.load(fh)
    backend = "NCCL" if device == "cuda" else "gloo (CPU stand-in)"
    return rows, (f"{backend} timed on {ranks} local ranks: all-reduce over 2-{ranks} ranks and send/recv between "
                  "two ranks inside one node; inter-node curves are the preset's")


def _collective_worker(rank, world, port, device, sizes, quick, out_dir) -> None:
    import datetime
    import os

    import torch
    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=300))
    # wall clock even on CPU: a rank waiting for its peers is the time a collective takes
    timer = _Timer(torch, device, 1 if quick else 3, 3 if quick else 10, clock=time.perf_counter)
    rows = {"all_reduce": [], "send_recv": []}
    try:
        for w in (2, 4, 8):
            if w > world:
                break
            group = dist.new_group(list(range(w)))
            for size in sizes:
                x = torch.ones(size // 4, device=device)
                if rank < w:
                    ms = timer(lambda x=x, group=group: dist.all_reduce(x, group=group))
                    rows["all_reduce"].append([w, w, size, ms])
        for size in sizes:
            x = torch.ones(size // 4, device=device)
            if rank < 2:
                peer = 1 - rank

                def exchange(x=x, peer=peer):  # one round trip: send then receive (rank 0), mirrored on rank 1
                    if rank == 0:
                        dist.send(x, peer)
                        dist.recv(x, peer)
                    else:
                        dist.recv(x, peer)
                        dist.send(x, peer)
                rows["send_recv"].append([2, 2, size, timer(exchange) / 2])
        if rank == 0:
            with open(f"{out_dir}/nccl.json", "w") as fh:
                json.dump(rows, fh)
    finally:
        dist.destroy_process_group()


def _device(torch, device) -> dict:
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return {"kind": "cuda", "name": props.name, "memory_gb": round(props.total_memory / 1e9, 2),
                "count": torch.cuda.device_count(), "driver": _driver(), "capability": [props.major, props.minor]}
    return {"kind": "cpu", "name": platform.processor() or platform.machine(), "memory_gb": None, "count": 1}


def _driver() -> str | None:
    try:
        import subprocess
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def _software(torch, impl) -> dict:
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "attention": impl, "threads": torch.get_num_threads()}


# ---- fits (numpy only) ------------------------------------------------------------------------------------------
def fit_gemm(rows) -> dict:
    """floor, peak, m½ of t = floor + 2NK(M + m½)/(peak·1e9), minimising Σ((fit − t)/t)²: for each m½ on a
    log grid the problem is linear in (floor, 1/peak); the best grid point wins."""
    M, N, Kd, t = (np.array([r[i] for r in rows], dtype=float) for i in (2, 3, 4, 5))
    best = None
    for m_half in np.geomspace(1, 4096, 97):
        A = np.stack([np.ones_like(t), 2 * N * Kd * (M + m_half) / 1e9], axis=1) / t[:, None]
        coef, *_ = np.linalg.lstsq(A, np.ones_like(t), rcond=None)
        floor, inv_peak = max(coef[0], 0.0), max(coef[1], 1e-9)
        err = np.sum(((floor + 2 * N * Kd * (M + m_half) * inv_peak / 1e9) / t - 1) ** 2)
        if best is None or err < best[0]:
            best = (err, floor, 1 / inv_peak, m_half)
    _, floor, peak, m_half = best
    return {"floor_ms": float(floor), "peak_tflops": float(peak), "m_half": float(m_half)}


def fit_pointwise(rows) -> dict:
    """Per operator (floor, ms per token·element) of t = floor + c·M·width, least relative squares."""
    out = {}
    for op in K.POINTWISE:
        sel = [r for r in rows if r[0] == op]
        x = np.array([r[2] * r[3] for r in sel], dtype=float)
        t = np.array([r[4] for r in sel], dtype=float)
        A = np.stack([np.ones_like(t), x], axis=1) / t[:, None]
        coef, *_ = np.linalg.lstsq(A, np.ones_like(t), rcond=None)
        out[op] = [float(max(coef[0], 0.0)), float(max(coef[1], 0.0))]
    return out


def fit_attention(rows, model: ModelSpec) -> dict:
    """Forward TFLOP/s per sequence length, counted as the step model charges attention: ⌈L/128⌉ query
    tiles, n(n+1)/2 causal tile pairs of 4·128²·head_dim FLOPs per head (latency/base.py,
    `_attention_fwd_ms`), so that the model gives back the measured forward time at every length profiled.
    (Counting the exact causal 2·L²·head_dim·heads, as FlashAttention's benchmarks do, made the model charge
    (1 + 128/L)× the measured time: 2× at 128 tokens, 1.125× at 1K.) Backward rate = forward time ·
    FA_BWD_FLOP_RATIO / backward time (the model's convention); floor = the fastest forward (a launch)."""
    seqlen, rate, bwd = [], [], []
    for L, heads, hd, t_fwd, t_bwd in rows:
        n = math.ceil(L / K.ATTN_TILE)
        flops = n * (n + 1) / 2 * 4.0 * K.ATTN_TILE ** 2 * hd * heads
        seqlen.append(float(L))
        rate.append(flops / (t_fwd * 1e9))
        bwd.append(t_fwd * K.FA_BWD_FLOP_RATIO / t_bwd)
    return {"fwd_seqlen": seqlen, "fwd_tflops": rate, "bwd_rate": float(np.median(bwd)),
            "floor_ms": float(min(r[3] for r in rows))}


def write_calibration(doc: dict, path) -> None:
    from .io import write_atomic

    write_atomic(path, json.dumps(doc, indent=1, allow_nan=False))
