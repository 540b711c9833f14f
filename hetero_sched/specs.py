"""Model and cluster specifications: what is trained, on what."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Transformer shapes from the models' published Hugging Face config.json files.
_MODEL_PRESETS: dict[str, dict] = {
    "llama2-7b": {"layers": 32, "hidden": 4096, "heads": 32, "kv_heads": 32, "ffn": 11008, "vocab": 32000},
    "llama2-13b": {"layers": 40, "hidden": 5120, "heads": 40, "kv_heads": 40, "ffn": 13824, "vocab": 32000},
    "llama2-70b": {"layers": 80, "hidden": 8192, "heads": 64, "kv_heads": 8, "ffn": 28672, "vocab": 32000},
    "llama3-8b": {"layers": 32, "hidden": 4096, "heads": 32, "kv_heads": 8, "ffn": 14336, "vocab": 128256},
    "llama3-70b": {"layers": 80, "hidden": 8192, "heads": 64, "kv_heads": 8, "ffn": 28672, "vocab": 128256},
    # Llama 3.1 405B (Dubey et al. 2024, "The Llama 3 Herd of Models", table 3; its config.json)
    "llama3-405b": {"layers": 126, "hidden": 16384, "heads": 128, "kv_heads": 8, "ffn": 53248, "vocab": 128256},
}
DEFAULT_MODEL = "llama3-8b"
# Hugging Face config fields that mark a mixture-of-experts model (Mixtral, Qwen-MoE, DeepSeek, DBRX, ...)
MOE_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts", "num_experts_per_tok",
              "moe_intermediate_size", "ffn_config")


@dataclass(kw_only=True, frozen=True, slots=True)
class ModelSpec:
    """A decoder-only transformer's shape."""

    name: str = "custom"
    """Label carried into plans and reports."""
    layers: int
    """Number of transformer blocks."""
    hidden: int
    """Model width (d_model)."""
    heads: int
    """Query heads; TP degrees must divide it."""
    kv_heads: int
    """Key/value heads (grouped-query attention when < heads)."""
    ffn: int
    """MLP inner width."""
    vocab: int
    """Vocabulary size (embedding and untied LM head)."""
    gated_mlp: bool = True
    """SwiGLU-style MLP with gate and up projections."""
    dtype_bytes: int = 2
    """Bytes per parameter/activation element (bf16)."""

    def __post_init__(self) -> None:
        for name in ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab", "dtype_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelSpec.{name} must be a positive integer, got {value!r}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} is not divisible by heads={self.heads}")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads={self.heads} is not divisible by kv_heads={self.kv_heads}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def params_per_layer(self) -> int:
        qkv = self.hidden * (self.hidden + 2 * self.kv_heads * self.head_dim)
        mlp = (3 if self.gated_mlp else 2) * self.hidden * self.ffn
        return qkv + self.hidden * self.hidden + mlp + 2 * self.hidden

    @property
    def params(self) -> int:
        """Total parameters: blocks, input embedding, untied LM head, final norm."""
        return self.layers * self.params_per_layer + 2 * self.vocab * self.hidden + self.hidden

    @classmethod
    def preset(cls, name: str) -> ModelSpec:
        if name not in _MODEL_PRESETS:
            known = ", ".join(sorted(_MODEL_PRESETS))
            raise ValueError(f"unknown model preset {name!r}; known: {known}")
        return cls(name=name, **_MODEL_PRESETS[name])

    @staticmethod
    def presets() -> list[str]:
        return sorted(_MODEL_PRESETS)

    @classmethod
    def from_hf_config(cls, path: str | Path) -> ModelSpec:
        """Read a Hugging Face ``config.json`` (Llama/Mistral/Qwen2 field names)."""
        path = Path(path)
        try:
            cfg = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read Hugging Face config {str(path)!r}: {exc}") from None
        if not isinstance(cfg, dict):
            raise ValueError(f"{str(path)!r} is not a JSON object")
        moe = [k for k in MOE_FIELDS if cfg.get(k)]
        if moe:
            raise ValueError(f"{str(path)!r} describes a mixture-of-experts model ({', '.join(moe)}): the step "
                             "model prices dense MLPs only, so its plans would be wrong")
        required = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")
        missing = [k for k in required if k not in cfg]
        if missing:
            raise ValueError(f"{str(path)!r} lacks {', '.join(missing)}")
        act = str(cfg.get("hidden_act", "silu"))
        return cls(
            name=str(cfg.get("_name_or_path") or cfg.get("model_type") or path.stem),
            layers=cfg["num_hidden_layers"],
            hidden=cfg["hidden_size"],
            heads=cfg["num_attention_heads"],
            kv_heads=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
            ffn=cfg["intermediate_size"],
            vocab=cfg["vocab_size"],
            gated_mlp=act in ("silu", "swiglu", "gelu_pytorch_tanh") or "gate" in act,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        return cls(**data)


@dataclass(kw_only=True, frozen=True, slots=True)
class GpuSpec:
    """One accelerator's datasheet figures (cited where defined)."""

    name: str
    memory_gb: float
    """Device memory, GB (1e9 bytes)."""
    peak_tflops: float
    """Dense bf16 peak, TFLOP/s (datasheet)."""
    hbm_tbps: float
    """Memory bandwidth, TB/s (datasheet)."""
    nvlink_gbps: float
    """Intra-node all-reduce bus bandwidth for large messages, GB/s (measured on H100; scaled by the
    datasheet NVLink bandwidth for the others)."""
    ib_gbps: float
    """Inter-node point-to-point bandwidth per GPU, GB/s (measured on H100; scaled by the NIC rate)."""
    calibrated: bool
    """True when the step model's kernel and NCCL curves were measured on this GPU; otherwise the H100
    curves are scaled by datasheet ratios (compute: peak TFLOP/s; pointwise: HBM bandwidth; NCCL: link
    bandwidth) — say so wherever its numbers are shown."""
    source: str
    """Where the figures come from."""


# H100 measured bandwidths: large-message medians of the shipped vidur NCCL tables (latency/constants.py:
# NVLINK_BUS_GBPS = 364.7 of the 900 GB/s NVLink 4 datasheet figure; IB_GBPS = 35.9 of a 400 Gb/s NIC).
# Other GPUs' bandwidths scale those by the datasheet link rates.
_H100_NVLINK_DATASHEET, _H100_NIC_GBITS = 900.0, 400.0


def _scaled_preset(name, memory_gb, peak, hbm, nvlink, nic_gbits, source) -> GpuSpec:
    return GpuSpec(name=name, memory_gb=memory_gb, peak_tflops=peak, hbm_tbps=hbm,
                   nvlink_gbps=round(364.7 * nvlink / _H100_NVLINK_DATASHEET, 1),
                   ib_gbps=round(35.9 * nic_gbits / _H100_NIC_GBITS, 1), calibrated=False, source=source)


_GPU_PRESETS = {
    # H100 SXM5: 80 GB HBM3 at 3.35 TB/s, 989 TFLOP/s dense bf16, NVLink 4 900 GB/s (NVIDIA H100 datasheet);
    # every curve of the step model is fitted on H100 measurements (vidur tables, FlashAttention-3 paper).
    "h100": GpuSpec(name="h100", memory_gb=80.0, peak_tflops=989.0, hbm_tbps=3.35, nvlink_gbps=364.7, ib_gbps=35.9,
                    calibrated=True, source="NVIDIA H100 datasheet; curves measured (vidur H100 tables)"),
    # A100 SXM4 80GB: 80 GB HBM2e at 2.039 TB/s, 312 TFLOP/s dense bf16, NVLink 3 600 GB/s (NVIDIA A100
    # datasheet); HDR InfiniBand 200 Gb/s per GPU (DGX A100: 8 x ConnectX-6 200 Gb/s).
    "a100-80g": _scaled_preset("a100-80g", 80.0, 312.0, 2.039, 600.0, 200.0,
                               "NVIDIA A100 datasheet, DGX A100 (ConnectX-6 HDR 200 Gb/s); H100 curves scaled"),
    # H200 SXM: 141 GB HBM3e at 4.8 TB/s, 989 TFLOP/s dense bf16, NVLink 4 900 GB/s (NVIDIA H200 datasheet);
    # 400 Gb/s NDR per GPU (DGX H200: 8 x ConnectX-7).
    "h200": _scaled_preset("h200", 141.0, 989.0, 4.8, 900.0, 400.0,
                           "NVIDIA H200 datasheet, DGX H200 (ConnectX-7 400 Gb/s); H100 curves scaled"),
    # B200 (HGX/DGX B200): 180 GB HBM3e at 8 TB/s, 2.25 PFLOP/s dense bf16 (4.5 sparse), NVLink 5 1.8 TB/s
    # (NVIDIA DGX B200 datasheet: 1,440 GB over 8 GPUs, 72 PFLOPS FP8 training); 400 Gb/s ConnectX-7 per GPU.
    "b200": _scaled_preset("b200", 180.0, 2250.0, 8.0, 1800.0, 400.0,
                           "NVIDIA DGX B200 datasheet (ConnectX-7 400 Gb/s); H100 curves scaled"),
}
REFERENCE_GPU = "h100"


def gpu_preset(name: str) -> GpuSpec:
    key = name.lower() if isinstance(name, str) else name
    if key not in _GPU_PRESETS:
        raise ValueError(f"unknown GPU {name!r}; known: {', '.join(sorted(_GPU_PRESETS))}")
    return _GPU_PRESETS[key]


def gpu_presets() -> list[str]:
    return sorted(_GPU_PRESETS)


@dataclass(kw_only=True, frozen=True, slots=True)
class Cluster:
    """GPUs available to one training step."""

    gpus: int
    """Total GPUs; need not be a multiple of gpus_per_node (a partial last node is allowed)."""
    gpus_per_node: int = 8
    """GPUs joined by NVLink in one node."""
    gpu: str = "h100"
    """GPU preset name."""
    spec: GpuSpec = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("gpus", "gpus_per_node"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Cluster.{name} must be a positive integer, got {value!r}")
        spec = gpu_preset(self.gpu)
        object.__setattr__(self, "gpu", spec.name)
        object.__setattr__(self, "spec", spec)

    def tp_degrees(self, model: ModelSpec) -> list[int]:
        """TP ∈ {1,2,4,8}: inside one node (divides gpus_per_node) and dividing the heads."""
        return [t for t in (1, 2, 4, 8)
                if self.gpus_per_node % t == 0 and model.heads % t == 0 and t <= self.gpus]

    def configs(self, model: ModelSpec) -> list[tuple[int, int]]:
        """Every (tp, cp) with tp·cp ≤ gpus, CP any integer ≥ 1."""
        return [(t, c) for t in self.tp_degrees(model) for c in range(1, self.gpus // t + 1)]

    def to_dict(self) -> dict:
        return {"gpus": self.gpus, "gpus_per_node": self.gpus_per_node, "gpu": self.gpu}

    @classmethod
    def from_dict(cls, data: dict) -> Cluster:
        return cls(gpus=data["gpus"], gpus_per_node=data.get("gpus_per_node", 8), gpu=data.get("gpu", "h100"))
