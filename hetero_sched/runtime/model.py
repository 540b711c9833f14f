"""TinyLlama: a small Llama-style decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU, untied LM head).

`TinyLlama(config)(tokens)` runs one document in one process: the reference that the distributed step
(tensor- and context-parallel, see parallel.py) must reproduce. The math both share is here, written
over plain tensors so that the parallel path can call it on sharded weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(kw_only=True, frozen=True, slots=True)
class TinyConfig:
    """Shape of the reference model; defaults allow every TP degree ≤ 8 (TP must divide heads,
    kv_heads and ffn)."""

    vocab: int = 128
    """Vocabulary size (input embedding and untied LM head)."""
    hidden: int = 64
    """Model width."""
    layers: int = 2
    """Decoder blocks."""
    heads: int = 16
    """Query heads."""
    kv_heads: int = 8
    """Key/value heads (grouped-query attention: heads / kv_heads queries share one)."""
    ffn: int = 128
    """SwiGLU inner width."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    norm_eps: float = 1e-6
    """RMSNorm epsilon."""

    def __post_init__(self) -> None:
        for name in ("vocab", "hidden", "layers", "heads", "kv_heads", "ffn"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"TinyConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden % self.heads or (self.hidden // self.heads) % 2:
            raise ValueError(f"hidden={self.hidden} must split into {self.heads} heads of an even size (RoPE)")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads={self.heads} is not divisible by kv_heads={self.kv_heads}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def check_tp(self, tp: int) -> None:
        """ValueError unless tp splits the heads, the key/value heads and the MLP evenly."""
        for name in ("heads", "kv_heads", "ffn"):
            if getattr(self, name) % tp:
                raise ValueError(f"TP{tp} does not divide the tiny model's {name}={getattr(self, name)}")


# ---- shared math ------------------------------------------------------------------------------------------
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding of x [tokens, heads, head_dim] at absolute positions [tokens] (half-split pairs)."""
    half = x.shape[-1] // 2
    freqs = theta ** (-torch.arange(half, dtype=x.dtype, device=x.device) / half)
    angle = positions.to(device=x.device, dtype=x.dtype)[:, None] * freqs[None, :]
    cos, sin = angle.cos()[:, None, :], angle.sin()[:, None, :]
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


def attention(q, k, v, q_pos, k_pos, q_doc, k_doc) -> torch.Tensor:
    """Causal attention inside documents: query i sees key j when doc_i = doc_j and pos_j ≤ pos_i.
    q [n, h, d], k and v [m, kvh, d] (GQA: each key/value head serves h/kvh query heads)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = torch.einsum("nhd,mhd->hnm", q, k) / q.shape[-1] ** 0.5
    allowed = (q_doc[:, None] == k_doc[None, :]) & (k_pos[None, :] <= q_pos[:, None])
    scores = scores.masked_fill(~allowed.to(scores.device)[None], float("-inf"))
    return torch.einsum("hnm,mhd->nhd", scores.softmax(dim=-1), v)


def swiglu(x, gate_w, up_w, down_w) -> torch.Tensor:
    return nn.functional.linear(nn.functional.silu(nn.functional.linear(x, gate_w)) * nn.functional.linear(x, up_w),
                                down_w)


# ---- the reference model ------------------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, c: TinyConfig) -> None:
        super().__init__()
        self.c = c
        self.attn_norm = nn.Parameter(torch.ones(c.hidden))
        self.q_proj = nn.Linear(c.hidden, c.heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden, c.kv_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden, c.kv_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.heads * c.head_dim, c.hidden, bias=False)
        self.mlp_norm = nn.Parameter(torch.ones(c.hidden))
        self.gate_proj = nn.Linear(c.hidden, c.ffn, bias=False)
        self.up_proj = nn.Linear(c.hidden, c.ffn, bias=False)
        self.down_proj = nn.Linear(c.ffn, c.hidden, bias=False)

    def attend(self, q, k, v, pos, doc) -> torch.Tensor:
        """Causal attention inside documents (`attention`); a subclass may swap in a fused kernel of the same
        math (check_model.py times the layer with SDPA or flash-attn this way)."""
        return attention(q, k, v, pos, pos, doc, doc)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, doc: torch.Tensor) -> torch.Tensor:
        c = self.c
        h = rms_norm(x, self.attn_norm, c.norm_eps)
        q = rope(self.q_proj(h).view(-1, c.heads, c.head_dim), pos, c.rope_theta)
        k = rope(self.k_proj(h).view(-1, c.kv_heads, c.head_dim), pos, c.rope_theta)
        v = self.v_proj(h).view(-1, c.kv_heads, c.head_dim)
        x = x + self.o_proj(self.attend(q, k, v, pos, doc).reshape(len(x), -1))
        h = rms_norm(x, self.mlp_norm, c.norm_eps)
        return x + swiglu(h, self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight)


class TinyLlama(nn.Module):
    """`model(tokens)`: a 1-D LongTensor of L tokens (one document) → logits [L, vocab]."""

    def __init__(self, config: TinyConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or TinyConfig()
        self.embed = nn.Embedding(c.vocab, c.hidden)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.norm = nn.Parameter(torch.ones(c.hidden))
        self.lm_head = nn.Linear(c.hidden, c.vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 1:
            raise ValueError(f"tokens must be a 1-D LongTensor of one document, got shape {tuple(tokens.shape)}")
        pos = torch.arange(len(tokens), device=tokens.device)
        doc = torch.zeros(len(tokens), dtype=torch.long, device=tokens.device)
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, pos, doc)
        return self.lm_head(rms_norm(x, self.norm, self.config.norm_eps))


def reference_loss(model: TinyLlama, tokens) -> torch.Tensor:
    """Σ_i Σ_{t<L_i−1} CE(logits_i[t], tokens_i[t+1]) / Σ_i (L_i − 1), one process, document by document."""
    total = sum(len(t) - 1 for t in tokens)
    loss = sum(nn.functional.cross_entropy(model(t)[:-1], t[1:], reduction="sum") for t in tokens)
    return loss / total
