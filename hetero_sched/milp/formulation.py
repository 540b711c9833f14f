"""The assignment MIP as plain arrays (no solver imports, no model objects).

Items j are distinct lengths with multiplicity m_j (identical sequences aggregated exactly). Slots
(c, k), k < K_c = min(N // gpus_c, Σ_j m_j over items that fit c), are the possible groups of config c.

    min  T
    Σ_s x[j,s] = m_j                                   — every sequence exactly once
    x[j,s] ≤ m_j · y[s]                                 — only open groups run sequences
    overhead_c · y[s] + Σ_j cost[j,c] · x[j,s] ≤ T      — makespan = slowest group      (time rows)
    Σ_s gpus_c · y[s] ≤ N                               — GPU budget (placement then always succeeds)
    y[c,k] ≥ y[c,k+1]                                   — symmetry: a config's slots open in order
    Σ_j cost[j,c]·x[j,c,k] ≥ Σ_j cost[j,c]·x[j,c,k+1]   — symmetry: a config's slots sorted by load
    Σ_s gpus_c·(overhead_c·y[s] + Σ_j cost[j,c]·x[j,s]) ≤ N·T
                                                        — GPU-time: open slots hold ≤ N GPUs busy ≤ T
                                                          (implied for integers, tightens the LP)
    T ≥ lower bound                                     — a valid bound, given to the solver

Nodes n with capacities cap_n (a partial last node included): every solution is placeable as solved.
    intra slot s (config fits one node):  a[s,n] ∈ {0,1},  Σ_n a[s,n] = y[s]          — one node holds it
    cross slot s (tp_s, cp_s):            z[s,n] ∈ ℤ≥0,   Σ_n z[s,n] = cp_s · y[s]   — its TP blocks, per node
    Σ_s gpus_s·a[s,n] + Σ_s tp_s·z[s,n] ≤ cap_n                                      — node capacity
    used_n ≥ used_n+1 for nodes of equal capacity                                   — symmetry: nodes are alike
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .instance import Instance


@dataclass(kw_only=True, slots=True)
class Row:
    idx: list[int]
    coef: list[float]
    lb: float
    ub: float
    timed: bool = False  # coefficients (other than T's) are costs in ms
    t_coef: int = -1     # T's (integer) coefficient in a timed row


@dataclass(kw_only=True, slots=True)
class MilpModel:
    lb: list[float] = field(default_factory=list)
    ub: list[float] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    t_var: int = -1
    slots: list[tuple[int, int]] = field(default_factory=list)   # (config, k)
    y: list[int] = field(default_factory=list)                    # var of slot s
    x: dict = field(default_factory=dict)                         # (item, slot) -> var
    item_members: list = field(default_factory=list)              # item -> sequence indices
    node_vars: dict = field(default_factory=dict)                 # slot -> [(node, var, GPUs per unit)]

    def add_var(self, name: str, lb: float, ub: float) -> int:
        self.lb.append(lb)
        self.ub.append(ub)
        self.names.append(name)
        return len(self.lb) - 1

    @property
    def num_vars(self) -> int:
        return len(self.lb)


def slot_counts(inst: Instance, counts: np.ndarray, item_cost: np.ndarray) -> list[int]:
    fits = np.isfinite(item_cost)
    return [int(min(inst.total_gpus // inst.gpus[c], counts[fits[:, c]].sum())) for c in range(len(inst.configs))]


def aggregate(inst: Instance) -> tuple[list, np.ndarray, np.ndarray]:
    """Distinct lengths → items: (members per item, multiplicity, cost (J, C))."""
    uniq, first, inverse = np.unique(inst.lengths, return_index=True, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(uniq))
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])  # ascending ids per length
    return members, counts, inst.cost[first]


def estimate_size(inst: Instance) -> int:
    """Number of x and node variables the formulation would create."""
    _, counts, cost = aggregate(inst)
    ks = slot_counts(inst, counts, cost)
    fits = np.isfinite(cost)
    nodes = len(inst.node_caps) if len(inst.node_caps) > 1 else 0
    return int(sum(ks[c] * (fits[:, c].sum() + nodes) for c in range(len(ks))))


def build_milp(inst: Instance, upper_ms: float, lower_ms: float) -> MilpModel:
    members, counts, cost = aggregate(inst)
    ks = slot_counts(inst, counts, cost)
    m = MilpModel(item_members=members)
    m.t_var = m.add_var("T", lower_ms, upper_ms)
    for c, k_c in enumerate(ks):
        for k in range(k_c):
            m.slots.append((c, k))
            m.y.append(m.add_var(f"y_c{c}_k{k}", 0, 1))
    for s, (c, k) in enumerate(m.slots):
        for j in np.flatnonzero(np.isfinite(cost[:, c])):
            m.x[(int(j), s)] = m.add_var(f"x_j{j}_c{c}_k{k}", 0, int(counts[j]))
    by_item: dict[int, list[int]] = {}
    by_slot: dict[int, list[int]] = {}
    for (j, s), v in m.x.items():
        by_item.setdefault(j, []).append(v)
        by_slot.setdefault(s, []).append(j)
    for j in range(len(counts)):  # Σ_s x[j,s] = m_j
        m.rows.append(Row(idx=by_item[j], coef=[1.0] * len(by_item[j]), lb=counts[j], ub=counts[j]))
    for s, (c, _) in enumerate(m.slots):
        items = by_slot.get(s, [])
        for j in items:  # x[j,s] − m_j·y[s] ≤ 0
            m.rows.append(Row(idx=[m.x[(j, s)], m.y[s]], coef=[1.0, -float(counts[j])], lb=-np.inf, ub=0.0))
        # overhead_c·y[s] + Σ_j cost·x[j,s] − T ≤ 0
        m.rows.append(Row(idx=[m.y[s]] + [m.x[(j, s)] for j in items] + [m.t_var],
                          coef=[float(inst.overhead[c])] + [float(cost[j, c]) for j in items] + [-1.0],
                          lb=-np.inf, ub=0.0, timed=True))
    # Σ_s gpus_c·(overhead_c·y[s] + Σ_j cost·x[j,s]) − N·T ≤ 0
    area_idx, area_coef = [], []
    for s, (c, _) in enumerate(m.slots):
        g = float(inst.gpus[c])
        area_idx += [m.y[s]] + [m.x[(j, s)] for j in by_slot.get(s, [])]
        area_coef += [g * float(inst.overhead[c])] + [g * float(cost[j, c]) for j in by_slot.get(s, [])]
    m.rows.append(Row(idx=area_idx + [m.t_var], coef=area_coef + [-float(inst.total_gpus)], lb=-np.inf, ub=0.0,
                      timed=True, t_coef=-inst.total_gpus))
    # Σ_s gpus_c·y[s] ≤ N
    m.rows.append(Row(idx=list(m.y), coef=[float(inst.gpus[c]) for c, _ in m.slots], lb=-np.inf,
                      ub=float(inst.total_gpus)))
    _add_nodes(m, inst)
    for s in range(len(m.slots) - 1):
        (c, k), (c2, _) = m.slots[s], m.slots[s + 1]
        if c2 != c:
            continue
        m.rows.append(Row(idx=[m.y[s], m.y[s + 1]], coef=[1.0, -1.0], lb=0.0, ub=np.inf))  # y_k ≥ y_k+1
        a, b = by_slot.get(s, []), by_slot.get(s + 1, [])
        m.rows.append(Row(idx=[m.x[(j, s)] for j in a] + [m.x[(j, s + 1)] for j in b],  # load_k ≥ load_k+1
                          coef=[float(cost[j, c]) for j in a] + [-float(cost[j, c]) for j in b],
                          lb=0.0, ub=np.inf, timed=True))
    return m


def _add_nodes(m: MilpModel, inst: Instance) -> None:
    """Node-assignment variables and rows (see the module docstring); skipped on a single node, where
    the GPU budget row already is the node's capacity."""
    caps = inst.node_caps
    if len(caps) <= 1:
        return
    on_node: list[list[tuple[int, float]]] = [[] for _ in caps]
    for s, (c, k) in enumerate(m.slots):
        tp, cp, cross = inst.shape(c)  # cp: TP blocks (cp·pp with stages)
        unit = tp if cross else tp * cp
        choices = []
        for n, cap in enumerate(caps):
            most = min(cp, cap // tp) if cross else (1 if cap >= unit else 0)
            if most:
                v = m.add_var(f"{'z' if cross else 'a'}_c{c}_k{k}_n{n}", 0, most)
                choices.append((n, v, unit))
                on_node[n].append((v, float(unit)))
        m.node_vars[s] = choices
        # Σ_n a[s,n] = y[s]  (intra)   or   Σ_n z[s,n] = cp·y[s]  (cross)
        m.rows.append(Row(idx=[v for _, v, _ in choices] + [m.y[s]],
                          coef=[1.0] * len(choices) + [-float(cp if cross else 1)], lb=0.0, ub=0.0))
    for n, cap in enumerate(caps):  # Σ gpus·a + Σ tp·z ≤ cap_n
        m.rows.append(Row(idx=[v for v, _ in on_node[n]], coef=[u for _, u in on_node[n]], lb=-np.inf,
                          ub=float(cap)))
    for n in range(len(caps) - 1):  # used_n ≥ used_n+1 on alike nodes
        if caps[n] == caps[n + 1]:
            m.rows.append(Row(idx=[v for v, _ in on_node[n]] + [v for v, _ in on_node[n + 1]],
                              coef=[u for _, u in on_node[n]] + [-u for _, u in on_node[n + 1]], lb=0.0, ub=np.inf))


def hint_values(m: MilpModel, inst: Instance, solution, shares=None) -> dict[int, float]:
    """Variable values encoding a solution [(config, sequence indices)] in the slot model."""
    item_of = np.empty(inst.n, dtype=int)
    for j, mem in enumerate(m.item_members):
        item_of[mem] = j
    by_config: dict[int, list] = {}
    for c, items in solution:
        by_config.setdefault(c, []).append(np.asarray(items))
    values = {v: 0.0 for v in range(m.num_vars)}
    slot_of = {cs: s for s, cs in enumerate(m.slots)}
    worst = 0.0
    for c, groups in by_config.items():
        groups.sort(key=lambda it: -float(inst.cost[it, c].sum()))  # slots sorted by load
        for k, items in enumerate(groups):
            s = slot_of.get((c, k))
            if s is None:
                return {}
            values[m.y[s]] = 1.0
            for i in items:
                values[m.x[(int(item_of[i]), s)]] += 1.0
            worst = max(worst, inst.group_load(c, items))
    values[m.t_var] = max(worst, m.lb[m.t_var])
    if m.node_vars and not _hint_nodes(m, inst, solution, shares, values, slot_of):
        return {}
    return values


def _hint_nodes(m, inst, solution, shares, values, slot_of) -> bool:
    """Node variables of the hint: the solution's node shares, alike nodes renumbered by decreasing use."""
    if shares is None:
        return False
    caps = inst.node_caps
    used = [0] * len(caps)
    for share in shares:
        for n, g in share:
            used[n] += g
    rename = {}
    for cap in set(caps):
        alike = [n for n in range(len(caps)) if caps[n] == cap]
        for new, old in zip(alike, sorted(alike, key=lambda n: (-used[n], n))):
            rename[old] = new
    order: dict[int, list] = {}
    for (c, items), share in zip(solution, shares):
        order.setdefault(c, []).append((-float(inst.cost[np.asarray(items), c].sum()), share))
    for c, groups in order.items():
        groups.sort(key=lambda t: t[0])  # the same load order as the slots
        for k, (_, share) in enumerate(groups):
            s = slot_of[(c, k)]
            var_of = {n: (v, unit) for n, v, unit in m.node_vars[s]}
            for n, g in share:
                if rename[n] not in var_of:
                    return False
                v, unit = var_of[rename[n]]
                values[v] = g / unit
    return True


def decode_nodes(m: MilpModel, value_of, slots_used: list[int]) -> list | None:
    """Node shares [(node, GPUs)] of the given slots (None on a single node: any placement works)."""
    if not m.node_vars:
        return None
    return [[(n, round(value_of(v)) * unit) for n, v, unit in m.node_vars[s] if round(value_of(v)) > 0]
            for s in slots_used]


def decode(m: MilpModel, value_of) -> list[tuple[int, np.ndarray]]:
    """Solver values → [(config, sequence indices)], handing out each item's members in order."""
    pools = [list(mem) for mem in m.item_members]
    groups: dict[int, list[int]] = {}
    for (j, s), v in sorted(m.x.items()):
        take = round(value_of(v))
        if take > 0:
            groups.setdefault(s, []).extend(pools[j][:take])
            del pools[j][:take]
    if any(pools):
        raise RuntimeError("solver solution leaves sequences unassigned")
    return [(m.slots[s][0], np.array(sorted(items))) for s, items in sorted(groups.items())], sorted(groups)
