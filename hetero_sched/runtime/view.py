"""What one rank of a plan does (no torch needed): its group, TP/CP coordinates, peers and token slices.

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
    tp_rank: int = 0
    cp_rank: int = 0
    tp_ranks: tuple[int, ...] = ()
    """Global ranks of this rank's TP group (TP rank order)."""
    cp_ranks: tuple[int, ...] = ()
    """Global ranks of this rank's CP group (CP rank order)."""
    sequence_ids: tuple[int, ...] = ()
    micro_batches: tuple[tuple[int, ...], ...] = ()
    recompute_layers: tuple[int, ...] = ()
    """Blocks each micro-batch recomputes (the first k, as the plan records them)."""
    token_slices: dict = field(default_factory=dict)
    """sequence id → ((start, end), (start, end)): the two zigzag chunks of the plan's length this rank holds."""

    @property
    def idle(self) -> bool:
        return self.group is None


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


def rank_plan(plan: Plan, rank: int) -> RankView:
    """The view of `rank` (0 ≤ rank < plan.cluster.gpus); ranks are listed TP-fastest in each group."""
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < plan.cluster.gpus:
        raise ValueError(f"rank {rank!r} is not in 0..{plan.cluster.gpus - 1}")
    for k, g in enumerate(plan.groups):
        if rank not in g.ranks:
            continue
        pos = g.ranks.index(rank)
        cp_rank, tp_rank = divmod(pos, g.tp)
        slices = {i: zigzag_chunks(plan.lengths[i], g.cp, cp_rank) for i in g.sequence_ids}
        return RankView(rank=rank, group=k, tp=g.tp, cp=g.cp, tp_rank=tp_rank, cp_rank=cp_rank,
                        tp_ranks=tuple(g.ranks[cp_rank * g.tp:(cp_rank + 1) * g.tp]),
                        cp_ranks=tuple(g.ranks[tp_rank::g.tp]), sequence_ids=tuple(g.sequence_ids),
                        micro_batches=tuple(tuple(mb) for mb in g.micro_batches),
                        recompute_layers=tuple(g.recompute_layers), token_slices=slices)
    return RankView(rank=rank, group=None, tp_ranks=(rank,), cp_ranks=(rank,))
