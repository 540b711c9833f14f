"""Step polish: a plan's sequences moved between its groups, and its micro-batches repacked, to lower its step.

The searches minimise the makespan. The step also pays what the overlapped parameter all-gather and the
gradient reduce-scatter leave exposed, and that depends on each group's first micro-batch (its forward
hides the all-gather) and last one (its backward window hides the reduce-scatter): see
LatencyModel.sync_exposed_ms. A plan near the least makespan can lose over the step to a homogeneous one:
at 64 GPUs x 256 long-tail sequences (seed 31) the heuristic's TP2 plan of makespan 1,586 ms had a TP2xCP2
group holding a 40K document and a 3.9K one, two micro-batches, so either its first forward or its last
window was short; it held the reduce-scatter back and the plan took 1,739 ms over the step, against
WLB-LLM's 1,671 (polished: 1,630).

Each group g gets a step end s_g: when it ends (its all-gather wait included) or when the reduce-scatter
it alone holds back would finish,
    x_g = end_g + wait(F_g),   s_g = max(x_g, A + Q, max_b [x_g − W_g·(1 − done_b) + Q·tail_b]),
F_g its first forward, W_g its last window, A the all-gather, Q the layout gather plus the reduce-scatter,
done_b the share of the backward sweep after which bucket b is complete and tail_b the share of the
gradient bytes from bucket b on. The plan's step is at least max_g s_g (every bucket waits for every
group) and, groups being alike, about it. The polish lowers max_g s_g by local search on its bottleneck:
the group with the largest s_g gives a sequence to another group, or swaps one with it, when both then end
below it; each group's micro-batches of one recompute class are packed first-fit decreasing (as Plan.build
does), evened out in cost (as many micro-batches: the same cost, a longer first forward and last window
when first-fit leaves a short remainder), or with one or two micro-batches grown past their class's cap at
a higher recompute level (see _packings), whichever gives the lower s_g, in its best order. No group
changes its configuration or ranks, so the plan stays placed; a group that gives away its last sequence
is dropped (its GPUs idle; s_g is then computed for the plan's original groups and TP degrees, so only
the final pricing sees what dropping it changed). The result is priced by the step model like any plan
and kept only when its step is lower.
"""
from __future__ import annotations

import bisect
import copy
import time

import numpy as np

from ..latency.base import GroupStepEnds, _balanced, window_share
from ..packing import pack_micro_batches
from ..placement import nodes_spanned
from ..plan import Plan, _order_options

PARTNERS = 12       # groups (lowest step end first) the bottleneck may give a sequence to or swap with ...
WIDE = 200          # ... and when no move is left with them, how many before the polish stops
MAX_MOVES = 2_000    # improving moves at most (each lowers the bottleneck's step end)
EPS_MS = 1e-6
BUILD_S_PER_GROUP = 3e-4  # setting up and building the polished plan, per group (16,384 GPUs, 5,093 groups: 0.39 s
                          # and 1.02 s here) ...
MIN_S_PER_GROUP = 5e-4    # ... and the least time per group worth starting with (the rest for the moves)
BIG_LEVELS = (0.25, 0.5, 0.75, 1.0)  # shares of the layers recomputed by a micro-batch grown past its class's cap


class _Key:
    """Per configuration (tp, cp, crosses nodes): each sequence's recompute class, forward and cost."""

    def __init__(self, lat, lengths: np.ndarray, tp: int, cp: int, cross: bool):
        layers = lat.model.layers
        self.fits = lengths <= lat.tokens_cap(tp, cp, layers)
        ks = lat.recompute_layers_array(np.minimum(lengths, lat.tokens_cap(tp, cp, layers)), tp, cp)
        f, r, b = lat.seq_parts_array(lengths, tp, cp, cross, recompute_layers=ks)
        self.cost = f + r + b
        self.k_list, self.fwd_list, self.cost_list = ks.tolist(), f.tolist(), self.cost.tolist()  # (fast scalars)
        _, r_all, _ = lat.seq_parts_array(lengths, tp, cp, cross, recompute_layers=np.full(lengths.shape, layers))
        self.fixed_list, self.per_layer_list = (f + b).tolist(), (r_all / layers).tolist()  # cost at k: fixed + k·per_layer
        self.layers = layers
        self.all_caps = [lat.tokens_cap(tp, cp, k) for k in range(layers + 1)]  # increasing in k
        self.caps = {int(k): self.all_caps[int(k)] for k in np.unique(ks)}
        o_f, o_r, o_b = lat.overhead_parts(tp, cp, cross)
        self.o_fwd, self.overhead = o_f, o_f + o_r + o_b
        self.share = [float(window_share(k / layers)) for k in range(layers + 1)]
        self.big = lat.recompute != "full"  # larger micro-batches at a higher k are a choice

    def least_k(self, tokens: int) -> int:
        """The least recompute level with which a micro-batch of `tokens` fits."""
        return bisect.bisect_left(self.all_caps, tokens)


class _Polish:
    def __init__(self, plan: Plan, lat):
        self.lat, self.plan = lat, plan
        self.lengths = np.asarray(plan.lengths, dtype=np.int64)
        self.lengths_list = self.lengths.tolist()
        gpn = lat.cluster.gpus_per_node
        names = [(g.tp, g.cp, nodes_spanned(g.ranks, gpn) > 1) for g in plan.groups]
        distinct = sorted(set(names))
        table = [_Key(lat, self.lengths, *name) for name in distinct]
        self.key_of = np.array([distinct.index(name) for name in names])
        self.keys = [table[k] for k in self.key_of]
        self.cost = np.vstack([key.cost for key in table])  # (configurations, sequences)
        self.fits = np.vstack([key.fits for key in table])
        self.exposure = GroupStepEnds(lat, [g.tp for g in plan.groups], len(plan.groups))
        self.ids = [list(g.sequence_ids) for g in plan.groups]
        self.chosen: dict[int, tuple] = {}  # group -> (micro-batches, classes, first, last) where the polish moved
        self.repacked: set[int] = set()  # groups whose own sequences were tried repacked
        self.end = np.array([g.latency_ms for g in plan.groups])
        stats = plan.priced_with[1] if plan.priced_with is not None and plan.priced_with[0] is lat \
            else plan._micro_batch_stats(lat)
        firsts = [float(f[0]) for f, _, _ in stats]  # (the recorded order: first and last as the plan runs them)
        lasts = [float(w[-1]) for _, w, _ in stats]
        self.s = self.exposure(self.end, firsts, lasts)

    def _packings(self, key: _Key, ids: list[int]):
        """Micro-batch options, each (micro-batches, their recompute levels): first-fit decreasing by class
        (as Plan.build packs), evened out in cost, and with one or two micro-batches grown past their
        class's cap at a higher level (the largest sequences first, up to BIG_LEVELS' caps): a longer
        first forward hides more of the all-gather and a longer last window more of the reduce-scatter,
        for k/layers of a forward more in that micro-batch."""
        ffd, even = self._by_class(key, ids), self._by_class(key, ids, _balanced)
        options = [ffd] if even[0] == ffd[0] else [ffd, even]
        if not key.big or len(ids) < 2:
            return options
        by_length = sorted(ids, key=lambda i: (-self.lengths_list[i], i))
        seen = set()
        for share in BIG_LEVELS:
            level = round(share * key.layers)
            first = self._grown(by_length, key.all_caps[level])
            if len(first) < 2 or tuple(first) in seen:
                continue
            seen.add(tuple(first))
            taken = set(first)
            rest = [i for i in by_length if i not in taken]
            options.append(self._with(key, [first], rest))
            second = self._grown(rest, key.all_caps[level])
            if len(second) >= 2:
                taken.update(second)
                options.append(self._with(key, [first, second], [i for i in rest if i not in taken]))
        return options

    def _grown(self, by_length: list[int], cap: int) -> list[int]:
        """Sequences (longest first) that fill a micro-batch of at most `cap` tokens."""
        out, room = [], cap
        for i in by_length:
            if self.lengths_list[i] <= room:
                out.append(i)
                room -= self.lengths_list[i]
        return out

    def _with(self, key: _Key, grown: list[list[int]], rest: list[int]):
        batches, ks = self._by_class(key, rest)
        return [*grown, *batches], [key.least_k(sum(self.lengths_list[i] for i in mb)) for mb in grown] + ks

    def _by_class(self, key: _Key, ids: list[int], even=None):
        """Sequences of one class share micro-batches up to its cap, first-fit decreasing (evened out in cost
        by `even`)."""
        batches, ks = [], []
        for k in sorted({key.k_list[i] for i in ids}):
            packed = pack_micro_batches(self.lengths_list, [i for i in ids if key.k_list[i] == k], key.caps[k])
            if even is not None and len(packed) > 1:
                packed = even(self.lengths_list, packed, key.caps[k], key.cost_list)
            batches += packed
            ks += [k] * len(packed)
        return batches, ks

    def _timing(self, g: int, ids: list[int]) -> tuple:
        """(s_g, end, (micro-batches, levels, first, last)) of group g holding `ids`, at its best packing and
        order (s_g = 0 for a group left empty)."""
        key = self.keys[g]
        if not ids:
            return 0.0, 0.0, ([], [], 0, 0)
        fixed, per_layer, fwd_of = key.fixed_list, key.per_layer_list, key.fwd_list
        options, ends = [], []
        for batches, ks in self._packings(key, ids):
            fwd = [key.o_fwd + sum(fwd_of[i] for i in mb) for mb in batches]
            cost = [sum(fixed[i] + k * per_layer[i] for i in mb) for mb, k in zip(batches, ks)]
            win = [key.share[k] * (key.overhead + c) for c, k in zip(cost, ks)]
            pairs = _order_options(fwd, win)
            options += [(fwd[a], win[b], batches, ks, a, b) for a, b in pairs]
            ends += [key.overhead + sum(cost)] * len(pairs)
        s = self.exposure(ends, [o[0] for o in options], [o[1] for o in options])
        j = int(np.argmin(s))
        return float(s[j]), ends[j], options[j][2:]

    def run(self, deadline: float) -> int:
        """Lower the largest step end until no move does or the deadline; returns the moves made."""
        moved, wide = 0, False
        while moved < MAX_MOVES and time.monotonic() < deadline:
            if self._improve(int(np.argmax(self.s)), deadline, WIDE if wide else PARTNERS):
                moved, wide = moved + 1, False
            elif wide or len(self.ids) <= PARTNERS + 1:
                break
            else:
                wide = True  # stuck: every group a partner, once
        return moved

    def _partners(self, i: int, top: int, level: float, rank: np.ndarray, most: int, extra: float = 0.0):
        """Up to `most` groups (least step end first) that could take sequence i (freeing `extra` ms of
        their own) and stay below the level: a group's step end is at least its end plus the least wait."""
        cost = self.cost[self.key_of, i] - extra
        ok = self.fits[self.key_of, i] & (self.end + cost + self.exposure.least < level)
        ok[top] = False
        return [h for h in rank if ok[h]][:most] if ok.any() else []

    def _improve(self, top: int, deadline: float, most: int) -> bool:
        """One move (a sequence given, or two swapped) that brings group top and its partner below its step
        end. A move that leaves a group's end plus the least wait at the level is not priced."""
        level = self.s[top] - EPS_MS
        if top not in self.chosen and top not in self.repacked:
            self.repacked.add(top)  # (tried once: the same sequences give the same packings)
            if self._take(top, self.ids[top], level):
                return True  # its own sequences repacked (a plan's groups come packed first-fit, none grown)
        rank = np.argsort(self.s, kind="stable")
        cost_top = self.keys[top].cost
        mine = sorted(self.ids[top], key=lambda i: -cost_top[i])
        for i in mine:  # give i away
            if time.monotonic() >= deadline:
                return False
            partners = self._partners(i, top, level, rank, most)
            if not partners:
                continue
            rest = [j for j in self.ids[top] if j != i]
            mine_after = self._timing(top, rest)
            if mine_after[0] >= level:
                continue
            for h in partners:
                if self._take(h, self.ids[h] + [i], level):
                    self._set(top, rest, mine_after)
                    return True
        for i in mine:  # swap i for a sequence of a partner (a longer one may lengthen a short first forward)
            rest = [j for j in self.ids[top] if j != i]
            for h in self._partners(i, top, level, rank, most, np.inf):
                if time.monotonic() >= deadline:
                    return False
                key = self.keys[h]
                for j in self.ids[h]:
                    if (not self.keys[top].fits[j] or self.end[h] - key.cost[j] + key.cost[i] + self.exposure.least >= level):
                        continue
                    mine_after = self._timing(top, rest + [j])
                    if mine_after[0] < level and self._take(h, [x for x in self.ids[h] if x != j] + [i], level):
                        self._set(top, rest + [j], mine_after)
                        return True
        return False

    def _take(self, h: int, ids: list[int], level: float) -> bool:
        """Group h holds `ids` when its step end stays below the level."""
        timing = self._timing(h, ids)
        if timing[0] >= level:
            return False
        self._set(h, ids, timing)
        return True

    def _set(self, g: int, ids: list[int], timing: tuple) -> None:
        self.ids[g] = ids
        self.s[g], self.end[g], self.chosen[g] = timing

    def plan_out(self) -> Plan:
        """The polished assignment as a plan on the same ranks: the groups it moved with the micro-batches
        it chose, the others as they were."""
        lat, groups = self.lat, self.plan.groups
        kept = [k for k, ids in enumerate(self.ids) if ids]
        plan = Plan.build(self.lengths_list, [(groups[k].tp, groups[k].cp, 1, self.ids[k]) for k in kept], lat,
                          ranks=[groups[k].ranks for k in kept], solver=copy.deepcopy(self.plan.solver),
                          baseline=copy.deepcopy(self.plan.baseline))  # (the input plan's figures stay its own)
        for g, k in zip(plan.groups, kept):
            batches, ks, first, last = self.chosen.get(k, (groups[k].micro_batches, groups[k].recompute_layers,
                                                           0, len(groups[k].micro_batches) - 1))
            middle = [j for j in range(len(batches)) if j not in (first, last)]
            order = ([first] if first != last else []) + middle + [last]
            g.micro_batches = [[int(i) for i in batches[j]] for j in order]
            g.recompute_layers = [int(ks[j]) for j in order]
        plan.order_micro_batches(lat)
        return plan


def polish_step(plan: Plan, lat, deadline: float) -> Plan | None:
    """A plan of the same groups and ranks with a lower step (sequences moved, micro-batches repacked),
    or None when the polish finds none before the deadline (or the time left is under MIN_S_PER_GROUP a
    group). Plans with stages are left as they are."""
    groups = len(plan.groups)
    if not groups or any(g.pp > 1 for g in plan.groups) or deadline - time.monotonic() < MIN_S_PER_GROUP * groups:
        return None
    search = _Polish(plan, lat)
    search.run(deadline - BUILD_S_PER_GROUP * groups)
    better = search.plan_out()
    return better if better.step_ms < plan.step_ms - EPS_MS else None

