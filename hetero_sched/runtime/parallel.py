"""Executing a plan with torch.distributed: process groups, tensor/context/pipeline-parallel TinyLlama,
one step.

Tensor parallelism (Megatron-LM): q/k/v, gate and up projections are column-parallel (each TP rank holds
heads/tp query heads, kv_heads/tp key/value heads, ffn/tp MLP columns), o and down projections
row-parallel; `copy_to_tp` (identity forward, all-reduce backward) enters each parallel region and
`reduce_from_tp` (all-reduce forward, identity backward) leaves it. Norms, embedding and LM head are
replicated inside a TP group: every TP rank computes the same loss, and only TP rank 0 contributes it.

Context parallelism: each document of a micro-batch is cut in 2·cp zigzag chunks (view.py); a CP rank
runs its chunks' queries and all-gathers keys and values from its CP group (padded to the longest
rank; backward: all-reduce of the key/value gradients, each rank keeping its own rows). Masks use each
token's document and absolute position, so packed documents never see each other and causality holds.
A CP rank's gradients are partial sums (over the losses of its own tokens' paths); the CP ranks' sum is
the group's gradient.

Pipeline parallelism (pp > 1): stage s holds blocks s·L/pp … (s+1)·L/pp − 1 of the executed model's L
(the embedding on stage 0, the final norm, LM head and loss on the last) and a TP and a CP group of its
own. Micro-batches run 1F1B (view.pipeline_schedule); a forward sends this rank's activations [its
tokens, hidden] to the rank with its TP and CP ranks in the next stage, a backward sends their gradient
back. After each forward or backward one batch_isend_irecv posts its send with the receive the next one
needs (Megatron-LM's send_forward_recv_backward pairing), so no stage waits on a peer that waits on it.
A micro-batch recomputing k of the plan's layers checkpoints the first k/pp of each stage's blocks
(scaled to the executed model's, checkpointed_blocks). pp = 1 is the same code with no sends.

Cross-group gradient synchronisation (groups of different TP hold differently sharded gradients, and a
stage holds only its own parameters):
  1. inside each TP group, all-gather the sharded gradients of the stage's parameters to full tensors
     (layout TP1);
  2. TP rank 0 of every CP rank of the stage that holds a parameter contributes its full gradient (the CP
     ranks' partial sums add up to the group's), every other rank (other stages, other TP ranks, idle
     ranks) zeros; the loss likewise, from TP rank 0 of every CP rank of the last stage;
  3. one all-reduce (sum) over the world of the flattened gradients and the loss.
Per rank that moves (tp−1)/tp · |shards| in step 1 and 2·(N−1)/N · 4P bytes (fp32 here; 2P in bf16)
in step 3's ring all-reduce. The step model's sync_ms charges a ZeRO-1 layout of the smallest TP degree
t_L (reduce-scatter + all-gather of 2P/t_L bytes): the same volume when t_L = 1, t_L times less
otherwise — this reference runtime syncs in the TP1 layout and pays more than the model when every
group has TP ≥ 2 (and it all-reduces every parameter on every rank, where a stage needs only its own).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint
from torch import nn

from ..plan import Plan
from .model import TinyConfig, TinyLlama, attention, rms_norm, rope
from .view import RankView, pipeline_schedule, rank_plan, zigzag_chunks

# parameter-name suffix → dimension it is split along under TP (others are replicated)
SHARDED = {"q_proj.weight": 0, "k_proj.weight": 0, "v_proj.weight": 0, "gate_proj.weight": 0,
           "up_proj.weight": 0, "o_proj.weight": 1, "down_proj.weight": 1}


@dataclass(kw_only=True, slots=True)
class RankGroups:
    """The process groups a rank computes in (None for an idle rank)."""

    view: RankView
    tp_group: object | None
    cp_group: object | None


class StepGrads(dict):
    """parameter name → full gradient (identical on every rank); `.loss` the global loss, `.seconds` the
    rank's compute time and `.sync_seconds` its gradient synchronisation time."""

    loss: float = float("nan")
    seconds: float = 0.0
    sync_seconds: float = 0.0


# ---- process groups -----------------------------------------------------------------------------------------
def check_world(plan: Plan) -> None:
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("torch.distributed is not initialised: call init_process_group first")
    if dist.get_world_size() != plan.cluster.gpus:
        raise ValueError(f"the plan is for {plan.cluster.gpus} ranks but the world has {dist.get_world_size()}")


def init_groups(plan: Plan) -> RankGroups:
    """Collective: every rank creates every TP and CP group of every stage, in plan order (torch requires
    all ranks to call new_group for every group, in the same order), and gets back its own. Stages talk
    point to point over the default group: they need no group of their own."""
    check_world(plan)
    rank = dist.get_rank()
    mine_tp = mine_cp = None
    for g in plan.groups:
        per_stage = g.tp * g.cp
        for s in range(g.pp):
            stage = g.ranks[s * per_stage:(s + 1) * per_stage]
            for k in range(g.cp):
                ranks = stage[k * g.tp:(k + 1) * g.tp]
                group = dist.new_group(ranks)
                mine_tp = group if rank in ranks else mine_tp
            for j in range(g.tp):
                ranks = stage[j::g.tp]
                group = dist.new_group(ranks)
                mine_cp = group if rank in ranks else mine_cp
    return RankGroups(view=rank_plan(plan, rank), tp_group=mine_tp, cp_group=mine_cp)


# ---- autograd-aware collectives -------------------------------------------------------------------------------
class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _GatherCP(torch.autograd.Function):
    """x [n_r, ...] on each CP rank → concatenation over ranks; sizes[r] = n_r (known to every rank)."""

    @staticmethod
    def forward(ctx, x, group, sizes, rank):
        ctx.group, ctx.sizes, ctx.rank = group, sizes, rank
        most = max(sizes)
        padded = x.new_zeros((most, *x.shape[1:]))
        padded[:len(x)] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous(), group=group)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)  # Σ over ranks of d(loss_r)/d(gathered)
        start = sum(ctx.sizes[:ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None, None, None


def _tp_in(x, view, groups):
    return _CopyToTP.apply(x, groups.tp_group) if view.tp > 1 else x


def _tp_out(x, view, groups):
    return _ReduceFromTP.apply(x, groups.tp_group) if view.tp > 1 else x


# ---- one micro-batch on one rank -------------------------------------------------------------------------------
@dataclass(kw_only=True, slots=True)
class _Layout:
    """Tokens of a packed micro-batch this CP rank holds, and the keys' metadata over the CP group."""

    index: torch.Tensor    # [n] global token ids (into the concatenated micro-batch)
    pos: torch.Tensor
    doc: torch.Tensor
    sizes: list            # tokens held by each CP rank
    all_pos: torch.Tensor  # positions and documents of the gathered keys, rank after rank
    all_doc: torch.Tensor


def _layout(lengths: list[int], cp: int, cp_rank: int, device=None) -> _Layout:
    per_rank = []
    for r in range(cp):
        pos, doc = [], []
        for d, n in enumerate(lengths):
            for a, b in zigzag_chunks(n, cp, r):
                pos.append(torch.arange(a, b))
                doc.append(torch.full((b - a,), d))
        per_rank.append((torch.cat(pos), torch.cat(doc)))
    pos, doc = per_rank[cp_rank]
    offsets = torch.tensor([0] + lengths[:-1]).cumsum(0)
    return _Layout(index=(offsets[doc] + pos).to(device), pos=pos.to(device), doc=doc.to(device),
                   sizes=[len(p) for p, _ in per_rank], all_pos=torch.cat([p for p, _ in per_rank]).to(device),
                   all_doc=torch.cat([d for _, d in per_rank]).to(device))


BLOCK_CALLS = [0]


def checkpointed_blocks(recompute_layers: int, model_layers: int, plan_layers: int, pp: int = 1) -> int:
    """How many of a stage's first blocks a micro-batch recomputes: each of the pp stages recomputes k/pp of
    its plan_layers/pp layers; the executed model's stage (model_layers/pp blocks) the same number when it
    has the plan's layers, else the same share rounded up (a tiny model standing in for a large one)."""
    k, model_stage, plan_stage = recompute_layers // pp, model_layers // pp, plan_layers // pp
    if model_stage == plan_stage:
        return k
    return min(model_stage, -(-k * model_stage // plan_stage))


def stage_blocks(model_layers: int, pp: int, stage: int) -> range:
    """The executed model's blocks on `stage` (an even split; pp divides model_layers)."""
    per = model_layers // pp
    return range(stage * per, (stage + 1) * per)


def stage_of(name: str, model_layers: int, pp: int) -> int:
    """The stage holding parameter `name`: the embedding on the first, a block's on its own, the final norm
    and the LM head on the last."""
    if name.startswith("embed."):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) // (model_layers // pp)
    return pp - 1


def _stage_forward(params: dict, cfg: TinyConfig, docs: list[torch.Tensor], lay: _Layout, x: torch.Tensor | None,
                   view: RankView, groups: RankGroups, recompute: int = 0) -> torch.Tensor:
    """This stage's part of a micro-batch's forward on this rank's tokens: the embedding on the first stage
    (elsewhere x, the previous stage's output), the stage's blocks — the first `recompute` keep only their
    input and run their forward again in backward (torch.utils.checkpoint, Megatron's block method) —
    then, on the last stage, Σ CE over the next-token targets (not normalised); elsewhere the activations."""
    stream = torch.cat(docs)
    if view.first_stage:
        x = nn.functional.embedding(stream[lay.index], params["embed.weight"])
    for n, b in enumerate(stage_blocks(cfg.layers, view.pp, view.pp_rank)):
        p = {k.split(".", 2)[2]: v for k, v in params.items() if k.startswith(f"blocks.{b}.")}
        if n < recompute:
            x = checkpoint(_block, x, p, cfg, lay, view, groups, use_reentrant=False)
        else:
            x = _block(x, p, cfg, lay, view, groups)
    return _loss_sum(params, cfg, docs, stream, lay, x) if view.last_stage else x


def _loss_sum(params: dict, cfg: TinyConfig, docs: list[torch.Tensor], stream: torch.Tensor, lay: _Layout,
              x: torch.Tensor) -> torch.Tensor:
    ends = torch.tensor([len(t) for t in docs], device=stream.device)[lay.doc]
    has_target = lay.pos < ends - 1
    logits = nn.functional.linear(rms_norm(x, params["norm"], cfg.norm_eps), params["lm_head.weight"])
    targets = stream[(lay.index + 1).clamp(max=len(stream) - 1)]
    return nn.functional.cross_entropy(logits[has_target], targets[has_target], reduction="sum")


def _block(x: torch.Tensor, p: dict, cfg: TinyConfig, lay: _Layout, view: RankView,
           groups: RankGroups) -> torch.Tensor:
    """One decoder block on this rank's tokens (TP-sharded weights p, CP key/value gather)."""
    BLOCK_CALLS[0] += 1  # forwards run, recomputations included (tests count them)
    hq, hkv, hd = cfg.heads // view.tp, cfg.kv_heads // view.tp, cfg.head_dim
    h = _tp_in(rms_norm(x, p["attn_norm"], cfg.norm_eps), view, groups)
    q = rope(nn.functional.linear(h, p["q_proj.weight"]).view(-1, hq, hd), lay.pos, cfg.rope_theta)
    k = rope(nn.functional.linear(h, p["k_proj.weight"]).view(-1, hkv, hd), lay.pos, cfg.rope_theta)
    v = nn.functional.linear(h, p["v_proj.weight"]).view(-1, hkv, hd)
    if view.cp > 1:
        k = _GatherCP.apply(k, groups.cp_group, lay.sizes, view.cp_rank)
        v = _GatherCP.apply(v, groups.cp_group, lay.sizes, view.cp_rank)
        a = attention(q, k, v, lay.pos, lay.all_pos, lay.doc, lay.all_doc)
    else:
        a = attention(q, k, v, lay.pos, lay.pos, lay.doc, lay.doc)
    x = x + _tp_out(nn.functional.linear(a.reshape(len(x), -1), p["o_proj.weight"]), view, groups)
    h = _tp_in(rms_norm(x, p["mlp_norm"], cfg.norm_eps), view, groups)
    mlp = nn.functional.silu(nn.functional.linear(h, p["gate_proj.weight"])) * \
        nn.functional.linear(h, p["up_proj.weight"])
    x = x + _tp_out(nn.functional.linear(mlp, p["down_proj.weight"]), view, groups)
    return x


# ---- sharding and synchronisation ------------------------------------------------------------------------------
def _shard_dim(name: str) -> int | None:
    return next((d for suffix, d in SHARDED.items() if name.endswith(suffix)), None)


def _local_params(model: TinyLlama, view: RankView) -> dict:
    """This rank's parameters: its stage's (none on an idle rank), TP-sharded."""
    if view.idle:
        return {}
    out = {}
    for name, p in model.named_parameters():
        if stage_of(name, model.config.layers, view.pp) != view.pp_rank:
            continue
        d = _shard_dim(name)
        w = p.detach()
        if d is not None and view.tp > 1:
            w = w.chunk(view.tp, dim=d)[view.tp_rank]
        out[name] = w.clone().requires_grad_(True)
    return out


def _contribution(name: str, p: torch.Tensor, local: dict, view: RankView, groups: RankGroups) -> torch.Tensor:
    """Steps 1 and 2 of the module docstring for one parameter: its full gradient on TP rank 0 of every CP
    rank of the stage holding it, zeros elsewhere (every TP rank of that stage joins the all-gather)."""
    if name not in local:
        return torch.zeros_like(p)
    g = local[name].grad if local[name].grad is not None else torch.zeros_like(local[name])
    d = _shard_dim(name)
    if d is not None and view.tp > 1:
        parts = [torch.empty_like(g) for _ in range(view.tp)]
        dist.all_gather(parts, g.contiguous(), group=groups.tp_group)
        g = torch.cat(parts, dim=d)
    return g if view.tp_rank == 0 else torch.zeros_like(p)


def _synchronise(model: TinyLlama, local: dict, view: RankView, groups: RankGroups, loss: float):
    """The three steps of the module docstring; returns (full gradients, global loss)."""
    flat = [_contribution(name, p, local, view, groups).reshape(-1) for name, p in model.named_parameters()]
    holds_loss = not view.idle and view.last_stage and view.tp_rank == 0
    flat.append(torch.tensor([loss if holds_loss else 0.0], dtype=flat[0].dtype, device=flat[0].device))
    buf = torch.cat(flat)
    dist.all_reduce(buf)
    grads, offset = StepGrads(), 0
    for name, p in model.named_parameters():
        grads[name] = buf[offset:offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    return grads, float(buf[-1])


# ---- the pipeline -----------------------------------------------------------------------------------------------
@dataclass(kw_only=True, slots=True)
class _Stage:
    """One rank's stage of its group over the step's micro-batches: runs forwards and backwards in any
    order and keeps, between micro-batch j's forward and its backward, the stage's input and output."""

    params: dict
    cfg: TinyConfig
    view: RankView
    groups: RankGroups
    docs: list           # per micro-batch, its documents' token tensors
    recompute: list      # per micro-batch, the blocks of this stage it checkpoints
    total: int           # Σ (L_i − 1) over the step: the loss's normaliser
    loss: float = 0.0
    saved: dict = field(default_factory=dict)
    layouts: dict = field(default_factory=dict)

    def layout(self, j: int) -> _Layout:
        if j not in self.layouts:
            self.layouts[j] = _layout([len(t) for t in self.docs[j]], self.view.cp, self.view.cp_rank,
                                      self.docs[j][0].device)
        return self.layouts[j]

    def activation(self, j: int) -> torch.Tensor:
        """An empty [tokens this rank holds in micro-batch j, hidden] tensor (what a stage sends)."""
        like = next(iter(self.params.values()))
        rows = len(self.layout(j).index)
        return torch.empty((rows, self.cfg.hidden), dtype=like.dtype, device=like.device)

    def forward(self, j: int, x: torch.Tensor | None) -> torch.Tensor | None:
        """Micro-batch j's forward; returns the activations to send (None on the last stage)."""
        x = x.requires_grad_(True) if x is not None else None
        out = _stage_forward(self.params, self.cfg, self.docs[j], self.layout(j), x, self.view, self.groups,
                             self.recompute[j])
        if self.view.last_stage:
            out = out / self.total
            self.loss += float(out.detach())
        self.saved[j] = (x, out)
        return None if self.view.last_stage else out.detach()

    def backward(self, j: int, grad: torch.Tensor | None) -> torch.Tensor | None:
        """Micro-batch j's backward (grad: its output's gradient, None on the last stage); returns its input's
        gradient to send (None on the first stage)."""
        x, out = self.saved.pop(j)
        out.backward(grad)
        return None if self.view.first_stage else x.grad


def _incoming(op: tuple[str, int] | None, stage: _Stage) -> tuple[list, torch.Tensor | None]:
    """The receive op `op` needs first (P2P ops, their buffer): a forward its input from the previous
    stage, a backward its output's gradient from the next."""
    view = stage.view
    if op is None or (op[0] == "F" and view.first_stage) or (op[0] == "B" and view.last_stage):
        return [], None
    buf = stage.activation(op[1])
    peer = view.prev_peer if op[0] == "F" else view.next_peer
    return [dist.P2POp(dist.irecv, buf, peer, tag=op[1])], buf


def _outgoing(op: tuple[str, int], result: torch.Tensor | None, view: RankView) -> list:
    if result is None:
        return []
    peer = view.next_peer if op[0] == "F" else view.prev_peer
    return [dist.P2POp(dist.isend, result.contiguous(), peer, tag=op[1])]


def _exchange(ops: list) -> None:
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()


def _run_schedule(stage: _Stage) -> None:
    """Stage `stage`'s 1F1B order; after each op, one batch sends its result and receives the next op's
    input (view.pipeline_schedule; deadlock-free even when a send waits for its receive, as under NCCL)."""
    view = stage.view
    ops = pipeline_schedule(view.pp, view.pp_rank, len(view.micro_batches))
    recvs, received = _incoming(ops[0], stage)
    _exchange(recvs)
    for i, op in enumerate(ops):
        run = stage.forward if op[0] == "F" else stage.backward
        result = run(op[1], received)
        recvs, received = _incoming(ops[i + 1] if i + 1 < len(ops) else None, stage)
        _exchange(_outgoing(op, result, view) + recvs)


# ---- the step ---------------------------------------------------------------------------------------------------
def check_step_inputs(plan: Plan, model: TinyLlama, tokens) -> None:
    """Every check that must fail identically on every rank before any collective (so nothing hangs)."""
    check_world(plan)
    if len(tokens) != len(plan.lengths):
        raise ValueError(f"the plan has {len(plan.lengths)} sequences but {len(tokens)} token tensors were given")
    for k, g in enumerate(plan.groups):
        try:
            model.config.check_tp(g.tp)
        except ValueError as exc:
            raise ValueError(f"group {k}: {exc}") from None
        if model.config.layers % g.pp:
            raise ValueError(f"group {k}: PP{g.pp} does not divide the tiny model's layers={model.config.layers} "
                             "into even stages")
        for i in g.sequence_ids:
            t = tokens[i]
            if not isinstance(t, torch.Tensor) or t.dim() != 1:
                raise ValueError(f"tokens[{i}] must be a 1-D tensor of token ids, got "
                                 f"{type(t).__name__} of shape {tuple(getattr(t, 'shape', ()))}")
            if len(t) < 2 * g.cp:
                raise ValueError(f"tokens[{i}] has {len(t)} tokens; group {k} ({g.name}) needs at least "
                                 f"2*cp = {2 * g.cp}")


def run_step(plan: Plan, model: TinyLlama, tokens, groups: RankGroups | None = None) -> StepGrads:
    """Collective: one training step of `plan` on `tokens` (tokens[i] is sequence i); returns every
    parameter's full gradient of loss = Σ_i Σ_{t<L_i−1} CE / Σ_i (L_i − 1), identical on every rank."""
    check_step_inputs(plan, model, tokens)
    groups = groups or init_groups(plan)
    view = groups.view
    bad = [i for i in view.sequence_ids if tokens[i].dtype != torch.long]
    if bad:  # only this rank's own sequences are read: placeholders elsewhere may be anything 1-D
        raise ValueError(f"tokens[{bad[0]}] must hold integer token ids (torch.long), got {tokens[bad[0]].dtype}")
    total = sum(len(t) - 1 for t in tokens)
    local = _local_params(model, view)
    start = time.perf_counter()
    loss = 0.0
    if not view.idle:
        stage = _Stage(params=local, cfg=model.config, view=view, groups=groups, total=total,
                       docs=[[tokens[i] for i in mb] for mb in view.micro_batches],
                       recompute=_checkpointed_per_micro_batch(view, model.config.layers, plan.model.layers))
        _run_schedule(stage)
        loss = stage.loss
    seconds = time.perf_counter() - start
    grads, global_loss = _synchronise(model, local, view, groups, loss)
    grads.loss, grads.seconds = global_loss, seconds
    grads.sync_seconds = time.perf_counter() - start - seconds
    return grads


def _checkpointed_per_micro_batch(view: RankView, model_layers: int, plan_layers: int) -> list[int]:
    """Blocks of this rank's stage each micro-batch checkpoints (every layer when the plan records none)."""
    ks = view.recompute_layers or (plan_layers,) * len(view.micro_batches)
    return [checkpointed_blocks(k, model_layers, plan_layers, view.pp) for k in ks]
