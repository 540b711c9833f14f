"""`hetero-sched check-model`: hold the calibrated step model against real decoder layers on this device.

The layers are the runtime's Llama blocks (runtime/model.py: RMSNorm, RoPE, grouped-query attention,
SwiGLU) at the model's true shapes, with the attention kernel `profile` times (flash-attn when installed on
CUDA, else torch SDPA), bf16 on CUDA and float32 on CPU, on one device (TP1 CP1). One step = the forward,
the recomputed forward of every checkpointed block (torch.utils.checkpoint) and the backward, as the step
model charges them. Per-layer time is isolated by differencing two layer counts that share embedding, LM
head and loss, timed in alternation (paired differences, median): what they share cancels. The prediction
is differenced the same way — (group latency with n2 layers − with n1 layers) / (n2 − n1), the micro-batch
overhead included — so both sides count exactly one decoder layer.

Memory (CUDA): the peak allocated during the n2-layer step, with the ZeRO-1 optimizer shard the model
charges held as a placeholder tensor, against the model's memory_gb for that micro-batch and layer count;
and a micro-batch of max_tokens(1, 1) tokens through every layer, to show that the model's capacity fits.

Recompute: the step model charges k recomputed layers per micro-batch where it has that choice
(recompute='auto': the least k with which the micro-batch fits in the full model; 'full': every layer);
a layer is then timed both checkpointed and not and the two per-layer times are mixed k/layers : 1 − k/layers,
the step model's own linear charge. Without the choice (older step models) every layer is checkpointed.

`quick`: every width divided by 8 (head_dim and the GQA ratio kept), a 1,024-entry vocabulary (the head
cancels), 128-1,024 tokens, and a calibration profiled on that shape: the closed loop in under a minute on
two CPU cores. torch is imported only here (and in the runtime it times).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import inspect
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .latency import constants as K
from .latency import latency_model
from .latency.base import file_sha256
from .profile import device_clock
from .specs import Cluster, ModelSpec

FORMAT = "hetero-sched-check"
VERSION = 1
FULL = {"lengths": tuple(2 ** k for k in range(10, 18)), "layers": (1, 3), "warmup": 1, "repeats": 3}
QUICK = {"lengths": (128, 256, 512, 1024), "layers": (1, 2), "warmup": 1, "repeats": 5}
MAX_LENGTH = 1 << 21  # 2M tokens: beyond any context this project plans for, and far beyond one device
QUICK_DIVISOR = 8
QUICK_VOCAB = 1024
RECOMPUTE_CHOICES = ("full", "auto")


@dataclass(kw_only=True, slots=True)
class CheckRow:
    """One length: the step model's and the device's time for one decoder layer (forward + recompute +
    backward), and on CUDA the peak memory of the n2-layer step."""

    length: int
    """Tokens of the micro-batch (one document)."""
    predicted_ms: float
    """Step model, per layer: (group latency at n2 layers − at n1) / (n2 − n1)."""
    measured_ms: float | None
    """Median of the paired differences of the timed steps, per layer; None when the step ran out of memory."""
    recomputed_fraction: float = 1.0
    """k/layers of the full model for this micro-batch (1.0: every layer checkpointed)."""
    predicted_gb: float | None = None
    """Step model's memory_gb for the n2-layer step (CUDA only)."""
    measured_gb: float | None = None
    """Peak allocated memory of the n2-layer step, optimizer-shard placeholder included (CUDA only)."""

    @property
    def error(self) -> float | None:
        """(predicted − measured) / measured: positive when the model is pessimistic."""
        return None if self.measured_ms is None else self.predicted_ms / self.measured_ms - 1.0

    def to_dict(self) -> dict:
        d = {"length": self.length, "predicted_ms": self.predicted_ms, "measured_ms": self.measured_ms,
             "error": self.error, "recomputed_fraction": self.recomputed_fraction}
        if self.predicted_gb is not None:
            d |= {"predicted_gb": self.predicted_gb, "measured_gb": self.measured_gb}
        return d


@dataclass(kw_only=True, slots=True)
class CheckResult:
    model: ModelSpec
    """The model asked for."""
    shape: ModelSpec
    """The shape timed: the model itself, or its reduced shape under --quick."""
    device: dict
    software: dict
    calibration: dict
    """path, sha256, made_here, device of the calibration the predictions read."""
    recompute: str
    layers: tuple[int, int]
    """The two layer counts differenced."""
    rows: list[CheckRow]
    capacity: dict | None = None
    """CUDA: a max_tokens(1, 1) micro-batch through every layer (tokens, fits, predicted/measured GB and ms)."""
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def median_abs_error(self) -> float | None:
        errors = [abs(r.error) for r in self.rows if r.error is not None]
        return statistics.median(errors) if errors else None

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "hetero_sched": __version__,
                "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "model": self.model.to_dict(), "shape": self.shape.to_dict(), "device": self.device,
                "software": self.software, "calibration": self.calibration, "recompute": self.recompute,
                "layers_differenced": list(self.layers), "tp": 1, "cp": 1,
                "unit": "ms per decoder layer: forward + recompute + backward",
                "rows": [r.to_dict() for r in self.rows], "median_abs_error": self.median_abs_error,
                "capacity": self.capacity, "notes": self.notes, "wall_s": round(self.wall_s, 2)}


def quick_shape(model: ModelSpec) -> ModelSpec:
    """The reduced shape of --quick: widths / 8 with the head dimension and the GQA ratio kept."""
    heads = max(1, model.heads // QUICK_DIVISOR)
    kv_heads = max(1, model.kv_heads // QUICK_DIVISOR)
    if heads % kv_heads:
        kv_heads = 1
    ffn = max(8, model.ffn // QUICK_DIVISOR)
    return dataclasses.replace(model, name=f"{model.name}/{QUICK_DIVISOR}", hidden=heads * model.head_dim,
                               heads=heads, kv_heads=kv_heads, ffn=ffn, vocab=min(model.vocab, QUICK_VOCAB))


def _has_recompute_choice() -> bool:
    return "recompute" in inspect.signature(latency_model).parameters


def recompute_modes() -> tuple[str, ...]:
    """The --recompute values this step model understands ('full' always)."""
    return RECOMPUTE_CHOICES if _has_recompute_choice() else ("full",)


def check_model(model: ModelSpec, *, calibration: str | Path | None = None, device: str = "cuda",
                quick: bool = False, recompute: str = "full", lengths: list[int] | None = None, gpus: int = 8,
                threads: int | None = None, calibration_out: str | Path | None = None,
                capacity: bool = True, progress: Callable[[str], None] | None = None) -> CheckResult:
    """Calibrate (when no calibration is given: profile on this device, written to calibration_out), then
    time decoder layers over a length sweep and return predicted vs measured rows.

    gpus: the cluster size whose ZeRO-1 optimizer shard the memory figures include. threads: CPU intra-op
    threads (default 1: on a shared machine a single thread is steadier, and calibration and check run
    with the same). ValueError on bad input: no CUDA for device='cuda', a model the runtime's Llama
    cannot express, an unreadable calibration, an unknown recompute mode."""
    import torch

    say = progress or (lambda _msg: None)
    start = time.monotonic()
    _check_device(torch, device)
    if recompute not in recompute_modes():
        raise ValueError(f"recompute={recompute!r}: this step model supports {', '.join(recompute_modes())}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    if not model.gated_mlp:
        raise ValueError(f"{model.name} has a non-gated MLP; the runtime's Llama times SwiGLU blocks only")
    shape = quick_shape(model) if quick else model
    sweep = QUICK if quick else FULL
    lengths = sorted(set(lengths or sweep["lengths"]))
    if lengths[-1] > MAX_LENGTH:
        raise ValueError(f"--lengths: {lengths[-1]:,} tokens; at most {MAX_LENGTH:,} are timed (one device)")
    cluster = Cluster(gpus=gpus, gpus_per_node=min(gpus, 8))
    old_threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(threads or 1)
    try:
        calib, notes = _calibration(torch, shape, calibration, device, quick, calibration_out, say)
        options = {"recompute": recompute} if _has_recompute_choice() else {}
        full_lat = latency_model(shape, cluster, calibration=calib["path"], **options)
        n1, n2 = sweep["layers"]
        lats = {n: latency_model(dataclasses.replace(shape, layers=n), cluster, calibration=calib["path"],
                                 **options) for n in (n1, n2)}
        bench = _Bench(torch, shape, device, n2, sweep["warmup"], sweep["repeats"])
        notes += _impl_notes(calib, bench.impl)
        cap_tokens = full_lat.max_tokens(1, 1)
        if max(lengths) > cap_tokens:
            notes.append(f"lengths above max_tokens(1, 1) = {cap_tokens:,} do not fit the whole model on one "
                         f"device; their layers are timed all the same")
        rows = []
        for L in lengths:
            say(f"timing {n1} and {n2} layers at {L:,} tokens")
            try:
                rows.append(_row(bench, full_lat, lats, L, n1, n2, gpus))
            except (RuntimeError, MemoryError) as exc:  # torch's allocator failing: the length, not the tool
                if not _out_of_memory(exc):
                    raise
                raise ValueError(f"{L:,} tokens do not fit this device's memory ({device}); time shorter "
                                 "lengths") from None
        cap = None
        if device == "cuda" and capacity and not quick:
            bench.release()
            say(f"a max_tokens(1, 1) = {full_lat.max_tokens(1, 1):,}-token micro-batch through all "
                f"{shape.layers} layers")
            cap = _capacity(torch, shape, full_lat, gpus)
        return CheckResult(model=model, shape=shape, device=_device_info(torch, device, threads or 1),
                           software=_software(torch, bench.impl), calibration=calib, recompute=recompute,
                           layers=(n1, n2), rows=rows, capacity=cap, notes=notes, wall_s=time.monotonic() - start)
    finally:
        torch.set_num_threads(old_threads)


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def _check_device(torch, device: str) -> None:
    if device not in ("cuda", "cpu"):
        raise ValueError(f"--device must be cuda or cpu, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("no CUDA device is visible: check-model --device cuda needs a GPU "
                         "(--device cpu --quick runs the closed loop on CPU)")


# ---- calibration --------------------------------------------------------------------------------------------
def _calibration(torch, shape, path, device, quick, out, say) -> tuple[dict, list[str]]:
    """The calibration the predictions read: the given file (checked now), or one profiled here."""
    from .latency.kernels import Kernels

    notes = []
    if path is None:
        from .io import write_atomic
        from .profile import profile
        if out is None:
            raise ValueError("no --calibration given and nowhere to write the one profiled here")
        say(f"profiling {shape.name} on {device} (no --calibration given)")
        # one device is timed (TP1 CP1): on CPU only TP1 GEMMs and no gloo stand-in for NCCL, to stay quick
        doc = profile(shape, device=device, quick=quick, tps=(1,) if device == "cpu" else (1, 2, 4, 8),
                      collectives=device == "cuda")
        write_atomic(out, json.dumps(doc, indent=1, allow_nan=False))
        path, made_here = out, True
    else:
        made_here = False
        doc = _read_json(path)
    Kernels.from_file(path)  # ValueError with the reason when it is not a readable calibration
    dev = doc.get("device", {})
    if dev.get("kind") and dev["kind"] != device:
        notes.append(f"the calibration was made on {dev['kind']}, the layers run on {device}")
    profiled = doc.get("model")
    if isinstance(profiled, dict) and profiled != shape.to_dict():
        notes.append(f"the calibration was profiled on {profiled.get('name', '?')}'s shapes, the layers are "
                     f"{shape.name}'s (the fitted curves are shape-generic)")
    calib_threads = doc.get("software", {}).get("threads")
    if device == "cpu" and calib_threads and calib_threads != torch.get_num_threads():
        notes.append(f"the calibration was timed with {calib_threads} CPU threads, the layers with "
                     f"{torch.get_num_threads()}")
    return {"path": str(path), "sha256": file_sha256(path), "made_here": made_here, "device": dev,
            "software": doc.get("software", {}), "quick": doc.get("quick")}, notes


def _read_json(path) -> dict:
    try:
        doc = json.loads(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read calibration {str(path)!r}: {exc}") from None
    return doc if isinstance(doc, dict) else {}


def _impl_notes(calib: dict, impl: str) -> list[str]:
    recorded = calib["software"].get("attention")
    if recorded and recorded != impl:
        return [f"the calibration timed attention with {recorded}, the layers run {impl}"]
    return []


# ---- one row ------------------------------------------------------------------------------------------------
def _row(bench, full_lat, lats, L, n1, n2, gpus) -> CheckRow:
    k_frac = _recomputed_fraction(full_lat, L)
    measured, predicted, gb = [], [], None
    for checkpointed, weight in ((True, k_frac), (False, 1.0 - k_frac)):
        if weight == 0.0:
            continue
        predicted.append(weight * _predicted_per_layer(lats, L, n1, n2, checkpointed))
        t, mem = bench.per_layer_ms(L, n1, checkpointed, gpus if gb is None else None)
        measured.append(None if t is None else weight * t)
        if gb is None and mem is not None:
            k2 = n2 if checkpointed else 0
            gb = (_memory_gb(lats[n2], L, k2), mem)
    row = CheckRow(length=L, predicted_ms=sum(predicted),
                   measured_ms=None if None in measured else sum(measured), recomputed_fraction=k_frac)
    if gb is not None:
        row.predicted_gb, row.measured_gb = gb
    return row


def _recomputed_fraction(full_lat, L: int) -> float:
    """k/layers the full model charges a micro-batch of L tokens (1.0 without a recompute choice)."""
    if getattr(full_lat, "recompute", "full") == "full" or not hasattr(full_lat, "recompute_layers"):
        return 1.0
    try:
        return full_lat.recompute_layers(L, 1, 1) / full_lat.model.layers
    except ValueError:  # beyond max_tokens(1, 1): nothing fits, the model's charge is every layer's
        return 1.0


def _takes_k(method) -> bool:
    return "recompute_layers" in inspect.signature(method).parameters


def _predicted_per_layer(lats, L, n1, n2, checkpointed: bool) -> float:
    """(overhead + seq latency at n2 layers − the same at n1) / (n2 − n1): one layer, every part the step
    model charges a micro-batch of L tokens included, the LM head cancelled."""
    def step(n):
        lat = lats[n]
        kw = {"recompute_layers": n if checkpointed else 0} if _takes_k(lat.seq_latency_ms) else {}
        if not checkpointed and not kw:
            raise ValueError("this step model charges full recomputation only")
        return lat.overhead_ms(1, 1) + lat.seq_latency_ms(L, 1, 1, **kw)
    return (step(n2) - step(n1)) / (n2 - n1)


def _memory_gb(lat, L: int, k: int) -> float:
    if _takes_k(lat.memory_gb):
        return lat.memory_gb(L, 1, 1, recompute_layers=k)
    return lat.memory_gb(L, 1, 1)


# ---- the layers -------------------------------------------------------------------------------------------------
def attention_kernel(torch, device: str):
    """(fn(q, k, v) on [tokens, heads, head_dim] → [tokens, heads, head_dim], causal; name): flash-attn when
    installed on CUDA, else torch SDPA — the choice `profile` makes."""
    if device == "cuda":
        try:
            from flash_attn import flash_attn_func

            def fa(q, k, v):
                return flash_attn_func(q[None], k[None], v[None], causal=True)[0]
            return fa, "flash-attn"
        except ImportError:
            pass
    sdpa = torch.nn.functional.scaled_dot_product_attention
    # GQA: on CUDA the key/value heads are repeated, so SDPA's flash backend (what profile times, without
    # GQA) stays eligible whatever the torch version; on CPU enable_gqa (torch >= 2.5) avoids the copy
    native_gqa = device == "cpu"

    def attend(q, k, v):
        q, k, v = (t.transpose(0, 1)[None] for t in (q, k, v))
        if k.shape[1] != q.shape[1]:
            if native_gqa:
                try:
                    return sdpa(q, k, v, is_causal=True, enable_gqa=True)[0].transpose(0, 1)
                except TypeError:  # torch < 2.5: no enable_gqa
                    pass
            group = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return sdpa(q, k, v, is_causal=True)[0].transpose(0, 1)
    return attend, "torch-sdpa"


def chunked_cross_entropy(torch, chunk: int = 2048):
    """Mean next-token cross-entropy of bf16/float logits [T, V], as the step model's memory assumes it is
    computed (constants.LOGIT_BYTES): the logits and their gradient held in the model's dtype, the float32
    softmax only one chunk of rows at a time (a plain cross_entropy would also hold its log-softmax)."""

    class ChunkedCE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, logits, targets):
            total = logits.new_zeros((), dtype=torch.float32)
            for start in range(0, len(targets), chunk):
                rows = logits[start:start + chunk].float()
                picked = rows.gather(1, targets[start:start + chunk, None])[:, 0]
                total += (torch.logsumexp(rows, dim=1) - picked).sum()
            ctx.save_for_backward(logits, targets)
            return total / len(targets)

        @staticmethod
        def backward(ctx, grad_out):
            logits, targets = ctx.saved_tensors
            grad = torch.empty_like(logits)
            scale = grad_out / len(targets)
            for start in range(0, len(targets), chunk):
                rows = logits[start:start + chunk].float().softmax(dim=1)
                rows[torch.arange(len(rows), device=rows.device), targets[start:start + chunk]] -= 1.0
                grad[start:start + chunk] = rows * scale
            return grad, None

    return ChunkedCE.apply


def build_stack(torch, shape: ModelSpec, layers: int, device: str, dtype, kernel):
    """The runtime's TinyLlama at `shape` with `layers` blocks whose attention is `kernel`, allocated on the
    device in `dtype` directly (built on the meta device, so no float32 copy is made first)."""
    from torch import nn

    from .runtime.model import Block, TinyConfig, TinyLlama, rms_norm

    cross_entropy = chunked_cross_entropy(torch)

    class FusedBlock(Block):
        """A runtime block; attention by a fused causal kernel (one document: is_causal is its mask)."""

        def attend(self, q, k, v, pos, doc):
            return kernel(q, k, v)

    class Stack(TinyLlama):
        def __init__(self, config):
            super().__init__(config)
            self.blocks = nn.ModuleList(FusedBlock(config) for _ in range(config.layers))

        def loss(self, tokens, layers: int, checkpointed: bool):
            """Next-token cross-entropy through the first `layers` blocks, each checkpointed or not."""
            from torch.utils.checkpoint import checkpoint

            pos = torch.arange(len(tokens), device=tokens.device)
            doc = torch.zeros(len(tokens), dtype=torch.long, device=tokens.device)
            x = self.embed(tokens)
            for block in self.blocks[:layers]:
                x = checkpoint(block, x, pos, doc, use_reentrant=False) if checkpointed else block(x, pos, doc)
            logits = self.lm_head(rms_norm(x, self.norm, self.config.norm_eps))
            return cross_entropy(logits[:-1], tokens[1:])

    config = TinyConfig(vocab=shape.vocab, hidden=shape.hidden, layers=layers, heads=shape.heads,
                        kv_heads=shape.kv_heads, ffn=shape.ffn)
    with torch.device("meta"):
        stack = Stack(config).to(dtype)
    stack = stack.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in stack.named_parameters():
            if name.endswith("norm"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return stack


class _Bench:
    """Times steps of one stack through its first n1 or all n2 blocks, alternating (shared weights)."""

    def __init__(self, torch, shape, device, n2, warmup, repeats) -> None:
        self.torch, self.shape, self.device, self.warmup, self.repeats = torch, shape, device, warmup, repeats
        self.dtype = torch.bfloat16 if device == "cuda" else torch.float32
        self.kernel, self.impl = attention_kernel(torch, device)
        self.n2 = n2
        self.stack = build_stack(torch, shape, n2, device, self.dtype, self.kernel)
        self._shard = None

    def per_layer_ms(self, L: int, n1: int, checkpointed: bool, gpus: int | None):
        """(median of paired (t_n2 − t_n1)/(n2 − n1), ms; peak GB of the n2 step on CUDA when gpus is given)
        — (None, None) when the step runs out of device memory."""
        torch = self.torch
        tokens = torch.randint(self.shape.vocab, (L,), device=self.device)
        diffs, peak, oom = [], None, False
        try:
            if gpus is not None and self.device == "cuda":
                self._hold_optimizer_shard(gpus)
            for i in range(self.warmup + self.repeats):
                t1 = self._time(tokens, n1, checkpointed)
                if i == self.warmup and gpus is not None and self.device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                t2 = self._time(tokens, self.n2, checkpointed)
                if i == self.warmup and gpus is not None and self.device == "cuda":
                    peak = torch.cuda.max_memory_allocated() / 1e9
                if i >= self.warmup:
                    diffs.append((t2 - t1) / (self.n2 - n1))
        except torch.cuda.OutOfMemoryError:
            oom = True
        if oom:  # outside the except block, so the traceback's frames no longer hold the step's tensors
            self.stack.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            return None, None
        return statistics.median(diffs), peak

    def _hold_optimizer_shard(self, gpus: int) -> None:
        """Hold the bytes the step model charges for ZeRO-1 optimizer states (12 B/param over `gpus`)."""
        if self._shard is None:
            params = dataclasses.replace(self.shape, layers=self.n2).params
            self._shard = self.torch.empty(math.ceil(K.OPTIMIZER_BYTES * params / gpus), dtype=self.torch.uint8,
                                           device=self.device)

    def _time(self, tokens, layers: int, checkpointed: bool) -> float:
        """One step, ms. Gradients are released first, so the backward writes them rather than adding into
        them: the step model charges no accumulation pass (Megatron-LM fuses it into the weight-gradient
        GEMM, --gradient-accumulation-fusion); on CPU the add would be ~5 % of a short layer's time."""
        clock = device_clock(self.device)
        self.stack.zero_grad(set_to_none=True)
        self._sync()
        start = clock()
        self.stack.loss(tokens, layers, checkpointed).backward()
        self._sync()
        return (clock() - start) * 1e3

    def _sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def release(self) -> None:
        self.stack, self._shard = None, None
        if self.device == "cuda":
            self.torch.cuda.empty_cache()


def _capacity(torch, shape, full_lat, gpus) -> dict:
    """A micro-batch of max_tokens(1, 1) tokens through every layer, all checkpointed (the model's capacity
    assumes full recomputation), the optimizer shard held: does it fit, and at what peak and time?"""
    tokens = full_lat.max_tokens(1, 1)
    kernel, _ = attention_kernel(torch, "cuda")
    out = {"tokens": tokens, "layers": shape.layers, "gpus": gpus,
           "predicted_gb": _memory_gb(full_lat, tokens, shape.layers), "usable_gb": full_lat.usable_bytes / 1e9,
           "device_gb": torch.cuda.get_device_properties(0).total_memory / 1e9,
           "predicted_ms": full_lat.overhead_ms(1, 1) + _seq_ms(full_lat, tokens, shape.layers)}
    stack = shard = None
    try:
        shard = torch.empty(math.ceil(K.OPTIMIZER_BYTES * shape.params / gpus), dtype=torch.uint8, device="cuda")
        stack = build_stack(torch, shape, shape.layers, "cuda", torch.bfloat16, kernel)
        ids = torch.randint(shape.vocab, (tokens,), device="cuda")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        stack.loss(ids, shape.layers, True).backward()
        torch.cuda.synchronize()
        out |= {"fits": True, "measured_ms": (time.perf_counter() - start) * 1e3,
                "measured_gb": torch.cuda.max_memory_allocated() / 1e9}
    except torch.cuda.OutOfMemoryError as exc:
        out |= {"fits": False, "measured_ms": None, "measured_gb": None, "oom": str(exc).splitlines()[0]}
    finally:
        del stack, shard
        torch.cuda.empty_cache()
    return out


def _seq_ms(lat, L: int, k: int) -> float:
    if _takes_k(lat.seq_latency_ms):
        return lat.seq_latency_ms(L, 1, 1, recompute_layers=k)
    return lat.seq_latency_ms(L, 1, 1)


def _device_info(torch, device: str, threads: int) -> dict:
    if device == "cuda":
        from .profile import _driver

        props = torch.cuda.get_device_properties(0)
        return {"kind": "cuda", "name": props.name, "memory_gb": round(props.total_memory / 1e9, 2),
                "capability": [props.major, props.minor], "driver": _driver()}
    return {"kind": "cpu", "name": platform.processor() or platform.machine(), "threads": threads}


def _software(torch, impl: str) -> dict:
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "attention": impl, "hetero_sched": __version__}


def write_check(result: CheckResult, path) -> None:
    """check.json, atomically (temp file + rename, umask honoured)."""
    from .io import write_atomic

    write_atomic(path, json.dumps(result.to_dict(), indent=1, allow_nan=False))
