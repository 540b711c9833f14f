"""Plan, Group and SolveResult: the planner's output, its JSON form and its validation."""
from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from .latency import LatencyModel, latency_model
from .latency.base import (
    GroupStepEnds,
    check_pp,
    config_name,
    pack_by_class,
    pipeline_ms,
    pipeline_order,
    window_share,
)
from .placement import nodes_spanned, place_groups, tp_group_inside_node
from .specs import Cluster, ModelSpec

SCHEMA_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)  # 1: every micro-batch recomputed every layer, all-gather not overlapped;
                               # 2: no pipeline stages (pp = 1 when a group has none)
EXACT_ORDER_GROUPS = 4  # up to this many groups with a choice, every (first, last) combination is priced
GREEDY_ORDER_GROUPS = 8  # beyond, this many ending last (wait included) choose one by one (the others
                         # keep the largest last), in up to GREEDY_ORDER_ROUNDS passes
GREEDY_ORDER_ROUNDS = 3
REL_TOL = 1e-6  # recomputed figures must match the file to this relative tolerance
OBJECTIVES = ("step", "makespan")


def check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")


def objective_key(plan: Plan, objective: str) -> tuple[float, float]:
    """What a plan is ranked by: the objective, then the other measure."""
    return (plan.step_ms, plan.makespan_ms) if objective == "step" else (plan.makespan_ms, plan.step_ms)


@dataclass(kw_only=True, slots=True)
class Group:
    """One group of tp·cp·pp GPUs running its sequences micro-batch after micro-batch (through pp
    pipeline stages, 1F1B, when pp > 1)."""

    tp: int
    cp: int
    ranks: list[int]
    """Global GPU ranks, TP-fastest, then CP, then stage: ranks[(s*cp + k)*tp:(s*cp + k + 1)*tp] is the TP
    group of CP rank k of stage s (stage s holds blocks s·layers/pp … (s+1)·layers/pp − 1)."""
    sequence_ids: list[int]
    micro_batches: list[list[int]]
    """Sequence ids of each micro-batch, in run order; each ≤ max_tokens(tp, cp) tokens."""
    latency_ms: float
    memory_gb: float
    recompute_layers: list[int] = field(default_factory=list)
    """Layers each micro-batch recomputes (Megatron's block method: the first k blocks), one int per
    micro-batch; each micro-batch must fit in memory with its k. With stages, k is a multiple of pp:
    each stage recomputes its first k/pp blocks."""
    pp: int = 1
    """Pipeline stages (even split of the layers, LM head on the last)."""

    @property
    def gpus(self) -> int:
        return self.tp * self.cp * self.pp

    @property
    def name(self) -> str:
        return config_name(self.tp, self.cp, self.pp)


@dataclass(kw_only=True, slots=True)
class SolveResult:
    """What the solver did and proved. gap = (makespan − bound) / makespan on recomputed costs."""

    backend: str
    status: str
    time_limit_s: float | None = None
    work_limit: float | None = None
    """The deterministic work limit, when one was given (time_limit_s was then not applied)."""
    threads: int = 1
    seed: int = 0
    objective: str = "step"
    """What was minimised: 'step' (makespan + exposed sync) or 'makespan'."""
    objective_ms: float = math.nan
    """The plan's value on the objective, recomputed from the placed plan."""
    bound_ms: float = 0.0
    """A valid lower bound on the objective."""
    gap: float = 1.0
    """(objective_ms − bound_ms) / objective_ms."""
    makespan_bound_ms: float = 0.0
    """A valid lower bound on the makespan (whatever the objective)."""
    step_bound_ms: float = 0.0
    """A valid lower bound on the step (makespan + exposed sync)."""
    wall_s: float = 0.0
    message: str = ""
    """What ran and why the status is what it is (e.g. 'exact MIP not built ...')."""


@dataclass(kw_only=True, slots=True)
class Plan:
    model: ModelSpec
    cluster: Cluster
    latency_model: dict
    lengths: list[int]
    groups: list[Group]
    makespan_ms: float
    sync_ms: float
    """Gradient sync the step pays once overlapped with the slowest groups' backward."""
    step_ms: float
    """makespan_ms + sync_ms."""
    solver: SolveResult | None = None
    baseline: dict | None = None
    extra: dict = field(default_factory=dict)
    sync_ms_upper: float = 0.0
    """Gradient sync without any overlap: an upper bound on sync_ms."""
    priced_with: tuple | None = field(default=None, init=False, repr=False, compare=False)
    """(step model, micro-batch stats) of the last pricing: see refresh."""

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def build(cls, lengths: Sequence[int], assignment: Sequence[tuple],
              lat: LatencyModel, solver: SolveResult | None = None, baseline: dict | None = None,
              ranks: Sequence[Sequence[int]] | None = None, recompute_layers: int | None = None) -> Plan:
        """Place (tp, cp, sequence ids) or (tp, cp, pp, sequence ids) groups on ranks (given, or placed
        greedily inside nodes where possible), pack micro-batches, choose their order, price everything. Groups without sequences are
        dropped. recompute_layers=None: each micro-batch recomputes the least k with which it fits (the
        model's recompute mode; sequences of one class k share micro-batches up to that class's cap, so a
        micro-batch's least k is its class's and its cost the sum of its sequences' — exactly what the
        solver priced); an int: that k for every micro-batch (one global setting, as Megatron-LM and
        WLB-LLM run), micro-batches packed up to what fits with it. Order: see order_micro_batches."""
        lengths = [int(x) for x in lengths]
        cluster = lat.cluster
        assignment = [_as_assignment(a, lat.model.layers) for a in assignment]
        if ranks is None:
            assignment = [a for a in assignment if len(a[3])]
            ranks = place_groups([(tp, cp * pp) for tp, cp, pp, _ in assignment], cluster.gpus,
                                 cluster.gpus_per_node)
        kept = [(a, list(r)) for a, r in zip(assignment, ranks) if len(a[3])]
        groups = []
        for (tp, cp, pp, ids), rk in kept:
            ids = sorted(int(i) for i in ids)
            cross = nodes_spanned(rk, cluster.gpus_per_node) > 1
            batches, ks = pack_by_class(lengths, ids, lat, tp, cp, pp, recompute_layers, cross)
            groups.append(Group(tp=tp, cp=cp, pp=pp, ranks=rk, sequence_ids=ids, micro_batches=batches,
                                latency_ms=0.0, memory_gb=0.0, recompute_layers=ks))
        plan = cls(model=lat.model, cluster=cluster, latency_model=lat.describe(), lengths=lengths,
                   groups=groups, makespan_ms=0.0, sync_ms=0.0, step_ms=0.0, solver=solver, baseline=baseline)
        plan.order_micro_batches(lat)
        return plan

    def order_micro_batches(self, lat: LatencyModel) -> None:
        """Choose each group's run order, then price the plan. Only two micro-batches matter to the step:
        the first, whose forward hides the overlapped parameter all-gather (a longer forward waits less),
        and the last, whose backward window hides the gradient reduce-scatter (a longer window, less
        exposed); the step never rises when either grows. So the best order takes the longest forward
        first and the longest window last when they are different micro-batches; when one micro-batch has
        both, it goes last with the next longest forward first, or first with the next longest window
        last — the only two orders not beaten by another. Up to EXACT_ORDER_GROUPS groups with that
        choice, every combination is priced; beyond, the GREEDY_ORDER_GROUPS that end last once their
        all-gather wait is counted choose one by one, in passes until none changes.
        The others run in increasing size. A pipelined group (pp > 1) runs its micro-batches in
        increasing stage time: sorted, 1F1B stalls least (a long micro-batch after a short one stalls
        every stage), and its fill and drain are the shortest first and longest last."""
        self._order_pipelines(lat)
        stats = self._micro_batch_stats(lat)
        options = [_order_options(f, w) if g.pp == 1 else [(0, len(f) - 1)] for g, (f, w, _) in zip(self.groups, stats)]
        choice = [0] * len(self.groups)
        open_ = [k for k, o in enumerate(options) if len(o) > 1]
        if open_ and lat.overlap_param_gather:
            choice = self._best_orders(lat, stats, options, open_)
        ordered = []
        for g, opts, c, (fwd, window, tokens) in zip(self.groups, options, choice, stats):
            first, last = opts[c]
            middle = sorted((j for j in range(len(g.micro_batches)) if j not in (first, last)),
                            key=lambda j: (tokens[j], j))
            order = ([first] if first != last else []) + middle + [last]
            if g.pp > 1:
                order = list(range(len(g.micro_batches)))  # _order_pipelines' order, already simulated
            g.micro_batches = [g.micro_batches[j] for j in order]
            g.recompute_layers = [g.recompute_layers[j] for j in order]
            ordered.append((fwd[order], window[order], tokens[order]))  # per micro-batch: reordered, not repriced
        self._price(lat, ordered)

    def _order_pipelines(self, lat: LatencyModel) -> None:
        """Each pipelined group's micro-batches in increasing stage time (see order_micro_batches)."""
        for g in self.groups:
            if g.pp > 1 and len(g.micro_batches) > 1:
                fwd, bwd = lat.stage_times([[self.lengths[i] for i in mb] for mb in g.micro_batches], g.tp, g.cp,
                                           g.pp, self._crosses(g), g.recompute_layers)
                order = pipeline_order(fwd, bwd)
                g.micro_batches = [g.micro_batches[j] for j in order]
                g.recompute_layers = [g.recompute_layers[j] for j in order]

    def _crosses(self, g: Group) -> bool:
        return nodes_spanned(g.ranks, self.cluster.gpus_per_node) > 1

    def _best_orders(self, lat, stats, options, open_: list[int]) -> list[int]:
        """Index into each group's options that gives the least step (see order_micro_batches)."""
        tps = [(g.tp, g.pp) for g in self.groups]
        timings = self._timings_from(stats, [o[0] for o in options])

        def step_with(k: int, c: int) -> None:
            first, last = options[k][c]
            timings[k] = (timings[k][0], stats[k][0][first], stats[k][1][last])

        def step() -> float:
            return lat.sync_exposed_ms(tps, timings)

        choice = [0] * len(self.groups)
        if len(open_) <= EXACT_ORDER_GROUPS:
            best, best_combo = math.inf, None
            for combo in itertools.product(*[range(len(options[k])) for k in open_]):
                for k, c in zip(open_, combo):
                    step_with(k, c)
                value = step()
                if value < best - 1e-12:
                    best, best_combo = value, combo
            for k, c in zip(open_, best_combo):
                choice[k] = c
            return choice
        choice = self._own_best_orders(lat, tps, timings, stats, options, open_, step_with, step)
        best = step()
        for _ in range(GREEDY_ORDER_ROUNDS):
            improved = False
            for k in self._latest(lat, timings, open_)[:GREEDY_ORDER_GROUPS]:
                step_with(k, 1 - choice[k])
                value = step()
                if value < best - 1e-12:
                    best, choice[k], improved = value, 1 - choice[k], True
                else:
                    step_with(k, choice[k])
            if not improved:
                break
        return choice

    def _own_best_orders(self, lat, tps, timings, stats, options, open_: list[int], step_with, step) -> list[int]:
        """The greedy's start: each group at the order of its own least step end (GroupStepEnds), where
        that prices the plan lower than every group keeping its largest window last (it is set so when it
        returns). Flipping one group at a time cannot leave a plateau of groups alike: at 4,096 GPUs a
        hundred TP2xCP7 groups, each a 128K document and ~24K tokens of short ones, all started with the
        short forward (a 136 ms wait) where the long one first (45 ms) lowered the step from 3,522.6 to
        3,458 ms."""
        pairs = [(k, j) for k in open_ for j in range(len(options[k]))]  # every option of every open group, at once
        s = GroupStepEnds(lat, tps, len(self.groups))([timings[k][0] for k, _ in pairs],
                                                      [stats[k][0][options[k][j][0]] for k, j in pairs],
                                                      [stats[k][1][options[k][j][1]] for k, j in pairs])
        least: dict[int, tuple[float, int]] = {}
        for (k, j), value in zip(pairs, s.tolist()):
            if k not in least or value < least[k][0]:
                least[k] = (value, j)
        choice = [0] * len(self.groups)
        for k, (_, j) in least.items():
            choice[k] = j
        if not any(choice):
            return choice
        plain = step()
        for k in open_:
            step_with(k, choice[k])
        if step() < plain - 1e-12:
            return choice
        for k in open_:
            step_with(k, 0)
        return [0] * len(self.groups)

    def _latest(self, lat: LatencyModel, timings, candidates: list[int]) -> list[int]:
        """Candidates by decreasing end after their all-gather wait: the groups that set the step (a group
        whose first micro-batch is short can end last whatever its latency)."""
        ends, firsts, _ = lat._timing_columns(timings)
        _, _, allgather = lat.sync_parts([(g.tp, g.pp) for g in self.groups])
        delays = lat.gather_delays(allgather, firsts, len(ends))
        return sorted(candidates, key=lambda k: (-(ends[k] + delays[k]), k))

    def _micro_batch_stats(self, lat: LatencyModel) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per group, in its recorded order: (forward ms, backward window ms, tokens) of each micro-batch;
        sets every group's latency_ms (overhead + Σ seq_latency_ms at its micro-batch's k) and memory_gb
        (its largest micro-batch under its k). The forward of a micro-batch carries the overhead's forward
        part, its window BACKWARD_SHARE-at-k of overhead + its sequences (see LatencyModel.sync_exposed_ms)."""
        lengths = np.asarray(self.lengths, dtype=np.int64)
        keys = [(g.tp, g.cp, self._crosses(g)) for g in self.groups]
        fwd, cost = np.zeros(len(lengths)), np.zeros(len(lengths))
        for key in {k for k, g in zip(keys, self.groups) if g.pp == 1}:
            members = [g for g, k in zip(self.groups, keys) if k == key and g.pp == 1]
            ids = np.array([i for g in members for mb in g.micro_batches for i in mb], dtype=np.int64)
            ks = np.array([k for g in members for mb, k in zip(g.micro_batches, g.recompute_layers) for _ in mb])
            if ids.size:
                f, r, b = lat.seq_parts_array(lengths[ids], *key, recompute_layers=ks)
                fwd[ids], cost[ids] = f, f + r + b
        plain = [k for k, g in enumerate(self.groups) if g.pp == 1]
        per_group = dict(zip(plain, self._plain_stats(lat, [self.groups[k] for k in plain], [keys[k] for k in plain],
                                                       lengths, fwd, cost)))
        return [per_group[k] if g.pp == 1 else self._pipeline_stats(lat, g, key[2])
                for k, (g, key) in enumerate(zip(self.groups, keys))]

    @staticmethod
    def _plain_stats(lat: LatencyModel, groups: list, keys: list, lengths: np.ndarray, fwd: np.ndarray,
                     cost: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """_micro_batch_stats of groups without stages, every micro-batch of every group in one pass (one
        group at a time took a fifth of a 0.1 s limit at 1,024 GPUs): per micro-batch sums in sequence
        order (bincount adds each bin's weights in order: the same floats as group by group)."""
        if not groups:
            return []
        layers = lat.model.layers
        sizes = [len(mb) for g in groups for mb in g.micro_batches]
        counts = [len(g.micro_batches) for g in groups]
        mb_of = np.repeat(np.arange(len(sizes)), sizes)
        flat = np.fromiter((i for g in groups for mb in g.micro_batches for i in mb), dtype=np.int64, count=len(mb_of))
        mb_cost = np.bincount(mb_of, weights=cost[flat], minlength=len(sizes))
        mb_fwd = np.bincount(mb_of, weights=fwd[flat], minlength=len(sizes))
        tokens = np.bincount(mb_of, weights=lengths[flat], minlength=len(sizes)).astype(np.int64)
        ks = np.fromiter((k for g in groups for k in g.recompute_layers), dtype=np.int64, count=len(sizes))
        parts = np.array([lat.overhead_parts(*key) for key in keys])  # (groups, 3)
        overhead = parts[:, 0] + parts[:, 1] + parts[:, 2]
        o_fwd_mb, overhead_mb = np.repeat(parts[:, 0], counts), np.repeat(overhead, counts)
        firsts = np.r_[0, np.cumsum(counts)[:-1]]
        distinct = sorted(set(keys))
        mb_key = np.repeat([distinct.index(k) for k in keys], counts)
        memory = np.zeros(len(sizes))
        for j, (tp, cp, _) in enumerate(distinct):  # one memory pass per (tp, cp, cross)
            rows = np.flatnonzero(mb_key == j)
            memory[rows] = lat.memory_gb_array(tokens[rows], tp, cp, ks[rows])
        peaks = np.maximum.reduceat(memory, firsts)
        forward = o_fwd_mb + mb_fwd
        window = window_share(ks / layers) * (overhead_mb + mb_cost)
        out = []
        for g, a, c, o, peak in zip(groups, firsts.tolist(), counts, overhead.tolist(), peaks.tolist()):
            g.latency_ms = o + float(cost[g.sequence_ids].sum())  # overhead + Σ seq_latency_ms
            g.memory_gb = peak
            out.append((forward[a:a + c], window[a:a + c], tokens[a:a + c]))
        return out

    def _pipeline_stats(self, lat: LatencyModel, g: Group, cross: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A pipelined group's (forward, backward window, tokens) per micro-batch, in its recorded order:
        a micro-batch's forward and backward each run through every stage; sets latency_ms (the 1F1B
        simulation, pipeline_latency_ms) and memory_gb (its largest micro-batch, pp of them in flight)."""
        batches = [[self.lengths[i] for i in mb] for mb in g.micro_batches]
        f, b = lat.stage_times(batches, g.tp, g.cp, g.pp, cross, g.recompute_layers)
        o_fwd, o_rec, o_bwd = lat.overhead_parts(g.tp, g.cp, cross, g.pp)
        g.latency_ms = sum((o_fwd, o_rec, o_bwd)) + pipeline_ms(f, b)  # = lat.pipeline_latency_ms, priced once
        tokens = np.array([sum(mb) for mb in batches], dtype=np.int64)
        g.memory_gb = float(lat.memory_gb_array(tokens, g.tp, g.cp, g.recompute_layers, g.pp).max())
        return o_fwd + f.sum(axis=1), o_rec + o_bwd + b.sum(axis=1), tokens

    def _timings_from(self, stats, pairs=None) -> list[tuple[float, float, float]]:
        """(end, first micro-batch's forward, last one's window) of each group; pairs: (first, last)
        indices to use instead of the recorded order's."""
        pairs = pairs or [(0, len(f) - 1) for f, _, _ in stats]
        return [(g.latency_ms, float(f[a]), float(w[b])) for g, (f, w, _), (a, b) in zip(self.groups, stats, pairs)]

    def __getstate__(self) -> dict:  # pickled (process pools, Ray) without the step model of its last pricing
        return {name: getattr(self, name) for name in self.__slots__ if name != "priced_with"}

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)
        self.priced_with = None

    def reprice(self, lat: LatencyModel) -> None:
        """Recompute every figure from the step model (never from a solver's objective)."""
        self._price(lat, self._micro_batch_stats(lat))

    def refresh(self, lat: LatencyModel) -> None:
        """reprice a plan whose groups did not change since `lat` built or priced it (its solver or baseline
        may have): the makespan, sync, step and solver figures from that pricing's per-micro-batch figures,
        without pricing every sequence again (a fifth of a 0.1 s limit at 1,024 GPUs); else reprice."""
        if self.priced_with is not None and self.priced_with[0] is lat:
            self._price(lat, self.priced_with[1])
        else:
            self.reprice(lat)

    def _price(self, lat: LatencyModel, stats) -> None:
        """Makespan, sync, step and the solver's figures, from the groups' latencies and the micro-batch
        stats of their recorded order (_micro_batch_stats)."""
        self.priced_with = (lat, stats)
        self.makespan_ms = max((g.latency_ms for g in self.groups), default=0.0)
        tps = [(g.tp, g.pp) for g in self.groups]
        self.sync_ms_upper = lat.sync_upper_ms(tps)
        self.sync_ms = lat.sync_exposed_ms(tps, self._timings_from(stats))
        self.step_ms = self.makespan_ms + self.sync_ms
        if self.solver is not None:
            s = self.solver
            s.makespan_bound_ms = min(s.makespan_bound_ms, self.makespan_ms)
            s.step_bound_ms = min(s.step_bound_ms, self.step_ms)
            s.objective_ms = self.step_ms if s.objective == "step" else self.makespan_ms
            s.bound_ms = s.step_bound_ms if s.objective == "step" else s.makespan_bound_ms
            s.gap = (s.objective_ms - s.bound_ms) / s.objective_ms if s.objective_ms > 0 else 0.0

    @property
    def gpus_used(self) -> int:
        return sum(g.gpus for g in self.groups)

    # ---- validation -----------------------------------------------------------------------------
    def validate(self, lat: LatencyModel | None = None) -> list[str]:
        """Every invariant of DESIGN.md; returns the list of problems (empty = valid)."""
        problems: list[str] = []
        n, cl = len(self.lengths), self.cluster
        if n == 0:
            problems.append("the plan has no sequences")
        if any((not isinstance(x, int)) or x <= 0 for x in self.lengths):
            problems.append("sequence lengths must be positive integers")
        seen = [0] * n
        used: set[int] = set()
        for k, g in enumerate(self.groups):
            problems += _check_group(k, g, n, cl, self.model, used, seen)
        problems += [f"sequence {i} appears in {c} groups (must be exactly 1)" for i, c in enumerate(seen) if c != 1]
        if self.latency_model.get("recompute") == "full":
            problems += [f"group {k}: recompute 'full' recomputes all {self.model.layers} layers, but recompute_layers "
                         f"is {g.recompute_layers}" for k, g in enumerate(self.groups)
                         if any(x != self.model.layers for x in g.recompute_layers)]
        if sum(g.gpus for g in self.groups) > cl.gpus:
            problems.append(f"groups use {sum(g.gpus for g in self.groups)} GPUs > {cl.gpus}")
        if problems:
            return problems
        try:
            lat = lat or latency_for(self)
        except ValueError as exc:
            return [f"cannot rebuild the step model named in the plan: {exc}"]
        return problems + self._check_figures(lat)

    def _check_figures(self, lat: LatencyModel) -> list[str]:
        problems = []
        for k, g in enumerate(self.groups):
            cap = lat.max_tokens(g.tp, g.cp, g.pp)
            for j, (mb, layers) in enumerate(zip(g.micro_batches, g.recompute_layers)):
                tokens = sum(self.lengths[i] for i in mb)
                if tokens > cap:
                    problems.append(f"group {k}: micro-batch of {tokens} tokens exceeds max_tokens {cap}")
                elif tokens > lat.tokens_cap(g.tp, g.cp, layers, g.pp):
                    problems.append(f"group {k}: micro-batch {j} of {tokens} tokens does not fit with {layers} "
                                    f"recomputed layers ({lat.memory_gb(tokens, g.tp, g.cp, layers, g.pp):.1f} GB > "
                                    f"{lat.usable_bytes / 1e9:.1f} GB usable; it needs "
                                    f"{lat.recompute_layers_array([tokens], g.tp, g.cp, g.pp)[0]} or more)")
        if problems:
            return problems
        copy = Plan.from_dict(self.to_dict())
        copy.reprice(lat)
        pairs = [(f"group {k} latency_ms", a.latency_ms, b.latency_ms) for k, (a, b) in
                 enumerate(zip(self.groups, copy.groups))]
        pairs += [(f"group {k} memory_gb", a.memory_gb, b.memory_gb) for k, (a, b) in
                  enumerate(zip(self.groups, copy.groups))]
        pairs += [("makespan_ms", self.makespan_ms, copy.makespan_ms), ("sync_ms", self.sync_ms, copy.sync_ms),
                  ("sync_ms_upper", self.sync_ms_upper, copy.sync_ms_upper), ("step_ms", self.step_ms, copy.step_ms)]
        for name, stated, true in pairs:
            if not math.isclose(stated, true, rel_tol=REL_TOL, abs_tol=REL_TOL):
                problems.append(f"{name} is {stated!r} but the step model gives {true!r}")
        return problems

    # ---- JSON -----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {
            "schema_version": SCHEMA_VERSION,
            "model": self.model.to_dict(),
            "cluster": self.cluster.to_dict(),
            "latency_model": dict(self.latency_model),
            "sequences": [{"id": i, "length": x} for i, x in enumerate(self.lengths)],
            "groups": [asdict(g) for g in self.groups],
            "makespan_ms": self.makespan_ms, "sync_ms": self.sync_ms, "sync_ms_upper": self.sync_ms_upper,
            "step_ms": self.step_ms,
            "solver": asdict(self.solver) if self.solver else None,
            "baseline": self.baseline,
        }
        if self.extra:
            d["extra"] = self.extra
        return d

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"plan is not valid JSON: {exc}") from None
        from .planfile import check_schema
        check_schema(data)  # a wrong type is named here, not met as a TypeError deep in validate()
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data) -> Plan:
        if not isinstance(data, dict):
            raise ValueError("plan JSON must be an object")
        version = data.get("schema_version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise ValueError(f"unsupported plan schema_version {version!r} (this tool reads "
                             f"{', '.join(map(str, READABLE_VERSIONS))})")
        try:
            seqs = data["sequences"]
            ids = [s["id"] for s in seqs]
            if ids != list(range(len(seqs))):
                raise ValueError("sequence ids must be 0..n-1 in order")
            model = ModelSpec.from_dict(data["model"])
            groups = [_group_from(k, g, version, model.layers) for k, g in enumerate(data["groups"])]
            described = dict(data["latency_model"])
            if version == 1:  # made before recompute was chosen and the all-gather overlapped
                described |= {"recompute": "full", "overlap_param_gather": False}
            solver = SolveResult(**data["solver"]) if data.get("solver") else None
            return cls(model=model, cluster=Cluster.from_dict(data["cluster"]),
                       latency_model=described, lengths=[s["length"] for s in seqs],
                       groups=groups, makespan_ms=float(data["makespan_ms"]), sync_ms=float(data["sync_ms"]),
                       step_ms=float(data["step_ms"]), solver=solver, baseline=data.get("baseline"),
                       extra=data.get("extra", {}), sync_ms_upper=float(data.get("sync_ms_upper", data["sync_ms"])))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed plan JSON: missing or wrong field {exc}") from None


def _group_from(k: int, g: dict, version: int, layers: int) -> Group:
    fields = {k: g[k] for k in ("tp", "cp", "ranks", "sequence_ids", "micro_batches", "latency_ms", "memory_gb")}
    fields["pp"] = g.get("pp", 1)
    try:
        check_pp(fields["pp"], layers)
    except ValueError as exc:
        raise ValueError(f"malformed plan JSON: group {k}: {exc}") from None
    if version == 1:
        fields["recompute_layers"] = [layers] * len(fields["micro_batches"])
    else:
        fields["recompute_layers"] = g["recompute_layers"]
    return Group(**fields)


def _as_assignment(a, layers: int) -> tuple[int, int, int, list]:
    """(tp, cp, ids) or (tp, cp, pp, ids) → (tp, cp, pp, ids); ValueError on a bad pp."""
    if len(a) == 3:
        return a[0], a[1], 1, a[2]
    if len(a) == 4:
        return a[0], a[1], check_pp(a[2], layers), a[3]
    raise ValueError(f"a group is (tp, cp, ids) or (tp, cp, pp, ids), got {len(a)} fields")


def _order_options(forwards, windows) -> list[tuple[int, int]]:
    """(first, last) micro-batch pairs no other pair beats on both the first forward and the last window
    (the largest window last first: with one option, the only one). Plain Python: the step polish asks it
    for thousands of small groups, where numpy's per-call cost dominated."""
    if len(forwards) == 1:
        return [(0, 0)]
    a = max(range(len(forwards)), key=forwards.__getitem__)
    b = max(range(len(windows)), key=windows.__getitem__)
    if a != b:
        return [(a, b)]
    rest = [j for j in range(len(forwards)) if j != a]
    return [(max(rest, key=forwards.__getitem__), b), (a, max(rest, key=windows.__getitem__))]


def _check_group(k: int, g: Group, n: int, cl: Cluster, model: ModelSpec, used: set, seen: list) -> list[str]:
    problems = []
    if g.tp not in cl.tp_degrees(model) or not isinstance(g.cp, int) or g.cp < 1:
        return [f"group {k}: (tp={g.tp}, cp={g.cp}) is not a valid configuration"]
    try:
        check_pp(g.pp, model.layers)
    except ValueError as exc:
        return [f"group {k}: {exc}"]
    if len(g.ranks) != g.gpus or len(set(g.ranks)) != g.gpus:
        problems.append(f"group {k}: needs {g.gpus} distinct ranks, has {g.ranks}")
    if any(not (0 <= r < cl.gpus) for r in g.ranks):
        problems.append(f"group {k}: rank out of range 0..{cl.gpus - 1}")
    if used & set(g.ranks):
        problems.append(f"group {k}: ranks {sorted(used & set(g.ranks))} already used by another group")
    used |= set(g.ranks)
    if not tp_group_inside_node(g.ranks, g.tp, cl.gpus_per_node):
        problems.append(f"group {k}: a TP group spans nodes")
    ks = g.recompute_layers
    if not isinstance(ks, list) or len(ks) != len(g.micro_batches) or any(
            isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= model.layers for k in ks):
        problems.append(f"group {k}: recompute_layers must hold one integer in 0..{model.layers} per micro-batch, "
                        f"got {ks!r}")
    elif g.pp > 1 and any(x % g.pp for x in ks):
        problems.append(f"group {k}: with {g.pp} stages each micro-batch recomputes a multiple of {g.pp} layers "
                        f"(k/pp blocks of each stage), got {ks!r}")
    in_batches = sorted(i for mb in g.micro_batches for i in mb)
    if in_batches != sorted(g.sequence_ids) or any(not mb for mb in g.micro_batches):
        problems.append(f"group {k}: micro-batches do not hold exactly the group's sequences once")
    if not g.sequence_ids:
        problems.append(f"group {k}: has no sequences")
    for i in g.sequence_ids:
        if not (isinstance(i, int) and 0 <= i < n):
            problems.append(f"group {k}: unknown sequence id {i!r}")
        else:
            seen[i] += 1
    return problems


def latency_for(plan: Plan) -> LatencyModel:
    """Rebuild the step model a plan names (analytic, or a shipped table identified by its hash)."""
    desc = plan.latency_model
    if desc.get("calibration_sha256"):
        raise ValueError("the plan was made with a calibration file; pass it with --calibration")
    options = {"recompute": desc.get("recompute", "full"),
               "overlap_param_gather": desc.get("overlap_param_gather", False)}
    if desc.get("kind") == "analytic":
        return latency_model(plan.model, plan.cluster, **options)
    if desc.get("kind") == "table":
        from ._data import shipped_table_by_sha
        path = shipped_table_by_sha(plan.cluster.gpu, desc.get("table_sha256"))
        if path is None:
            raise ValueError("the plan's latency table is not shipped with this tool; pass it with --table")
        return latency_model(plan.model, plan.cluster, table=path, **options)
    raise ValueError(f"unknown latency model kind {desc.get('kind')!r}")
