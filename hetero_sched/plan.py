"""Plan, Group and SolveResult: the planner's output, its JSON form and its validation."""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from .latency import LatencyModel, latency_model
from .packing import pack_micro_batches
from .placement import nodes_spanned, place_groups, tp_group_inside_node
from .specs import Cluster, ModelSpec

SCHEMA_VERSION = 1
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
    """One group of tp·cp GPUs running its sequences micro-batch after micro-batch."""

    tp: int
    cp: int
    ranks: list[int]
    """Global GPU ranks, TP-fastest: ranks[k*tp:(k+1)*tp] is the TP group of CP rank k."""
    sequence_ids: list[int]
    micro_batches: list[list[int]]
    """Sequence ids of each micro-batch, in run order; each ≤ max_tokens(tp, cp) tokens."""
    latency_ms: float
    memory_gb: float

    @property
    def gpus(self) -> int:
        return self.tp * self.cp


@dataclass(kw_only=True, slots=True)
class SolveResult:
    """What the solver did and proved. gap = (makespan − bound) / makespan on recomputed costs."""

    backend: str
    status: str
    time_limit_s: float | None = None
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

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def build(cls, lengths: Sequence[int], assignment: Sequence[tuple[int, int, Sequence[int]]],
              lat: LatencyModel, solver: SolveResult | None = None, baseline: dict | None = None,
              ranks: Sequence[Sequence[int]] | None = None) -> Plan:
        """Place (tp, cp, sequence ids) groups on ranks (given, or placed greedily inside nodes where
        possible), pack micro-batches (the largest runs last: it opens the longest window for the
        gradient sync to overlap), price everything. Groups without sequences are dropped."""
        lengths = [int(x) for x in lengths]
        cluster = lat.cluster
        if ranks is None:
            assignment = [(tp, cp, ids) for tp, cp, ids in assignment if len(ids)]
            ranks = place_groups([(tp, cp) for tp, cp, _ in assignment], cluster.gpus, cluster.gpus_per_node)
        kept = [(a, list(r)) for a, r in zip(assignment, ranks) if len(a[2])]
        groups = []
        for (tp, cp, ids), rk in kept:
            ids = sorted(int(i) for i in ids)
            batches = pack_micro_batches(lengths, ids, lat.max_tokens(tp, cp))
            batches.sort(key=lambda mb: sum(lengths[i] for i in mb))
            groups.append(Group(tp=tp, cp=cp, ranks=rk, sequence_ids=ids, micro_batches=batches,
                                latency_ms=0.0, memory_gb=0.0))
        plan = cls(model=lat.model, cluster=cluster, latency_model=lat.describe(), lengths=lengths,
                   groups=groups, makespan_ms=0.0, sync_ms=0.0, step_ms=0.0, solver=solver, baseline=baseline)
        plan.reprice(lat)
        return plan

    def reprice(self, lat: LatencyModel) -> None:
        """Recompute every figure from the step model (never from a solver's objective)."""
        cost, shape = self._sequence_costs(lat)
        last = []
        for g, (tp, cp, cross) in zip(self.groups, shape):
            overhead = lat.overhead_ms(tp, cp, cross)
            g.latency_ms = overhead + float(cost[g.sequence_ids].sum())  # overhead + Σ seq_latency_ms
            last.append(overhead + float(cost[g.micro_batches[-1]].sum()))
            biggest = max(sum(self.lengths[i] for i in mb) for mb in g.micro_batches)
            g.memory_gb = lat.memory_gb(biggest, g.tp, g.cp)
        self.makespan_ms = max((g.latency_ms for g in self.groups), default=0.0)
        tps = [g.tp for g in self.groups]
        self.sync_ms_upper = lat.sync_upper_ms(tps)
        self.sync_ms = lat.sync_exposed_ms(tps, [(g.latency_ms, t) for g, t in zip(self.groups, last)])
        self.step_ms = self.makespan_ms + self.sync_ms
        if self.solver is not None:
            s = self.solver
            s.makespan_bound_ms = min(s.makespan_bound_ms, self.makespan_ms)
            s.step_bound_ms = min(s.step_bound_ms, self.step_ms)
            s.objective_ms = self.step_ms if s.objective == "step" else self.makespan_ms
            s.bound_ms = s.step_bound_ms if s.objective == "step" else s.makespan_bound_ms
            s.gap = (s.objective_ms - s.bound_ms) / s.objective_ms if s.objective_ms > 0 else 0.0

    def _sequence_costs(self, lat: LatencyModel):
        """seq_latency_ms of every sequence on its group's configuration, placed as the ranks say (one
        vectorised call per configuration), and each group's (tp, cp, crosses nodes)."""
        gpn = self.cluster.gpus_per_node
        shape = [(g.tp, g.cp, nodes_spanned(g.ranks, gpn) > 1) for g in self.groups]
        cost = np.zeros(len(self.lengths))
        lengths = np.asarray(self.lengths, dtype=np.int64)
        for key in set(shape):
            ids = np.array([i for g, s in zip(self.groups, shape) if s == key for i in g.sequence_ids], dtype=int)
            if ids.size:
                cost[ids] = lat.seq_latency_array(lengths[ids], *key)
        return cost, shape

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
            cap = lat.max_tokens(g.tp, g.cp)
            for mb in g.micro_batches:
                tokens = sum(self.lengths[i] for i in mb)
                if tokens > cap:
                    problems.append(f"group {k}: micro-batch of {tokens} tokens exceeds max_tokens {cap}")
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
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data) -> Plan:
        if not isinstance(data, dict):
            raise ValueError("plan JSON must be an object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"unsupported plan schema_version {version!r} (this tool reads {SCHEMA_VERSION})")
        try:
            seqs = data["sequences"]
            ids = [s["id"] for s in seqs]
            if ids != list(range(len(seqs))):
                raise ValueError("sequence ids must be 0..n-1 in order")
            groups = [Group(**{k: g[k] for k in ("tp", "cp", "ranks", "sequence_ids", "micro_batches",
                                                 "latency_ms", "memory_gb")}) for g in data["groups"]]
            solver = SolveResult(**data["solver"]) if data.get("solver") else None
            return cls(model=ModelSpec.from_dict(data["model"]), cluster=Cluster.from_dict(data["cluster"]),
                       latency_model=dict(data["latency_model"]), lengths=[s["length"] for s in seqs],
                       groups=groups, makespan_ms=float(data["makespan_ms"]), sync_ms=float(data["sync_ms"]),
                       step_ms=float(data["step_ms"]), solver=solver, baseline=data.get("baseline"),
                       extra=data.get("extra", {}), sync_ms_upper=float(data.get("sync_ms_upper", data["sync_ms"])))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed plan JSON: missing or wrong field {exc}") from None


def _check_group(k: int, g: Group, n: int, cl: Cluster, model: ModelSpec, used: set, seen: list) -> list[str]:
    problems = []
    if g.tp not in cl.tp_degrees(model) or not isinstance(g.cp, int) or g.cp < 1:
        return [f"group {k}: (tp={g.tp}, cp={g.cp}) is not a valid configuration"]
    if len(g.ranks) != g.gpus or len(set(g.ranks)) != g.gpus:
        problems.append(f"group {k}: needs {g.gpus} distinct ranks, has {g.ranks}")
    if any(not (0 <= r < cl.gpus) for r in g.ranks):
        problems.append(f"group {k}: rank out of range 0..{cl.gpus - 1}")
    if used & set(g.ranks):
        problems.append(f"group {k}: ranks {sorted(used & set(g.ranks))} already used by another group")
    used |= set(g.ranks)
    if not tp_group_inside_node(g.ranks, g.tp, cl.gpus_per_node):
        problems.append(f"group {k}: a TP group spans nodes")
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
    if desc.get("kind") == "analytic":
        return latency_model(plan.model, plan.cluster)
    if desc.get("kind") == "table":
        from ._data import shipped_table_by_sha
        path = shipped_table_by_sha(plan.cluster.gpu, desc.get("table_sha256"))
        if path is None:
            raise ValueError("the plan's latency table is not shipped with this tool; pass it with --table")
        return latency_model(plan.model, plan.cluster, table=path)
    raise ValueError(f"unknown latency model kind {desc.get('kind')!r}")
