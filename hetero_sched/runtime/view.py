"""What one rank of a plan does (no torch needed): its group, TP/CP/stage coordinates, peers, token slices
and its stage's 1F1B order of micro-batch forwards and backwards.

Context parallelism splits every document into 2·cp chunks and gives CP rank k the chunks k and
2·cp−1−k ("zigzag", as Megatron-LM and torchtitan do): causal attention's work then balances across
ranks, since early chunks attend to little and late chunks to much.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..plan import Plan


@dataclass(kw_only=True, frozen=True, slots=True)
class RankView:
    """One rank's part of a plan. `group` is None for a rank outside every group (idle: it still joins the
    gradient synchronisation, contributing zero)."""

    rank: int
    group: int | None
    tp: int = 1
    cp: int = 1
    pp: int = 1
    tp_rank: int = 0
    cp_rank: int = 0
    pp_rank: int = 0
    """This rank's pipeline stage (0 holds the embedding, pp − 1 the final norm and LM head)."""
    tp_ranks: tuple[int, ...] = ()
    """Global ranks of this rank's TP group (TP rank order)."""
    cp_ranks: tuple[int, ...] = ()
    """Global ranks of this rank's CP group (CP rank order), inside its stage."""
    stage_ranks: tuple[int, ...] = ()
    """Global ranks of this rank's stage, TP-fastest then CP (the whole group when pp = 1)."""
    prev_peer: int | None = None
    """The rank with this rank's TP and CP ranks in the previous stage (None on the first stage)."""
    next_peer: int | None = None
    """The rank with this rank's TP and CP ranks in the next stage (None on the last stage)."""
    sequence_ids: tuple[int, ...] = ()
    micro_batches: tuple[tuple[int, ...], ...] = ()
    recompute_layers: tuple[int, ...] = ()
    """Layers each micro-batch recomputes, as the plan records them (the first k; with stages, the first
    k/pp of each stage)."""
    token_slices: dict = field(default_factory=dict)
    """sequence id → ((start, end), (start, end)): the two zigzag chunks of the plan's length this rank holds."""

    @property
    def idle(self) -> bool:
        return self.group is None

    @property
    def first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1


def zigzag_chunks(length: int, cp: int, cp_rank: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The [start, end) token ranges of chunks cp_rank and 2·cp−1−cp_rank of a document split in 2·cp
    chunks as evenly as possible (the first length mod 2·cp chunks one token longer; empty chunks when
    the document has fewer than 2·cp tokens — run_step refuses those)."""
    if cp < 1 or not 0 <= cp_rank < cp:
        raise ValueError(f"cp_rank {cp_rank!r} is not in 0..{cp - 1}")
    n = 2 * cp
    base, extra = divmod(length, n)
    bounds = [k * base + min(k, extra) for k in range(n + 1)]
    first, second = cp_rank, n - 1 - cp_rank
    return (bounds[first], bounds[first + 1]), (bounds[second], bounds[second + 1])


def pipeline_schedule(pp: int, stage: int, micro_batches: int) -> list[tuple[str, int]]:
    """Stage `stage`'s 1F1B order (PipeDream-Flush, Megatron-LM): ("F", j) and ("B", j) for micro-batch j's
    forward and backward. min(pp − stage − 1, m) forwards, then one forward and one backward in turn,
    then the remaining backwards; with pp = 1, F0 B0 F1 B1 …"""
    if not 0 <= stage < pp:
        raise ValueError(f"stage {stage!r} is not in 0..{pp - 1}")
    warmup = min(pp - stage - 1, micro_batches)
    ops = [("F", j) for j in range(warmup)]
    for j in range(micro_batches - warmup):
        ops += [("F", warmup + j), ("B", j)]
    return ops + [("B", j) for j in range(micro_batches - warmup, micro_batches)]


def rank_plan(plan: Plan, rank: int) -> RankView:
    """The view of `rank` (0 ≤ rank < plan.cluster.gpus); ranks are listed TP-fastest, then CP, then stage
    in each group."""
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < plan.cluster.gpus:
        raise ValueError(f"rank {rank!r} is not in 0..{plan.cluster.gpus - 1}")
    for k, g in enumerate(plan.groups):
        if rank in g.ranks:
            return _group_view(plan, k, rank)
    return RankView(rank=rank, group=None, tp_ranks=(rank,), cp_ranks=(rank,), stage_ranks=(rank,))


def _group_view(plan: Plan, k: int, rank: int) -> RankView:
    g = plan.groups[k]
    pp, per_stage = g.pp, g.tp * g.cp
    pos = g.ranks.index(rank)
    pp_rank, within = divmod(pos, per_stage)
    cp_rank, tp_rank = divmod(within, g.tp)
    stage = g.ranks[pp_rank * per_stage:(pp_rank + 1) * per_stage]
    slices = {i: zigzag_chunks(plan.lengths[i], g.cp, cp_rank) for i in g.sequence_ids}
    return RankView(rank=rank, group=k, tp=g.tp, cp=g.cp, pp=pp, tp_rank=tp_rank, cp_rank=cp_rank,
                    pp_rank=pp_rank, tp_ranks=tuple(stage[cp_rank * g.tp:(cp_rank + 1) * g.tp]),
                    cp_ranks=tuple(stage[tp_rank::g.tp]), stage_ranks=tuple(stage),
                    prev_peer=g.ranks[pos - per_stage] if pp_rank > 0 else None,
                    next_peer=g.ranks[pos + per_stage] if pp_rank < pp - 1 else None,
                    sequence_ids=tuple(g.sequence_ids), micro_batches=tuple(tuple(mb) for mb in g.micro_batches),
                    recompute_layers=tuple(g.recompute_layers), token_slices=slices)
