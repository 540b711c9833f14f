"""Seed-style comparison tables: every homogeneous WLB-LLM config, Megatron packing, hetero-sched."""
from __future__ import annotations

from .baselines.megatron import megatron_best
from .baselines.wlb_llm import wlb_llm_best, wlb_llm_plan
from .latency import LatencyModel, latency_model
from .latency.base import config_name
from .milp.instance import check_pp_degrees
from .milp.solve import solve
from .seeds import SEED_CASES
from .specs import Cluster, ModelSpec

ALL_CONFIGS_UP_TO = 64  # GPUs; beyond, only power-of-two CP degrees are listed (plus the best)


def compare_batch(lengths, lat: LatencyModel, backend: str, time_limit_s: float, threads: int, seed: int,
                  objective: str = "step", round_lengths: int | None = None, pp_degrees=None):
    """Rows for each homogeneous WLB-LLM config (placed, one global recompute setting; or why it does not
    fit) over the pipeline degrees searched, Megatron's best, the best WLB-LLM config with per-micro-batch
    recompute (recompute='auto') and the planner's plan, sorted by the objective; the best row is marked."""
    cluster = lat.cluster
    plan = solve(lengths, cluster, lat, backend=backend, time_limit_s=time_limit_s, threads=threads, seed=seed,
                 objective=objective, round_lengths=round_lengths, pp_degrees=pp_degrees)
    rows = []
    best_cfg = (plan.baseline["tp"], plan.baseline["cp"], plan.baseline.get("pp", 1))
    for pp in check_pp_degrees(pp_degrees, lat):
        for tp, cp in cluster.configs(lat.model):
            if tp * cp * pp > cluster.gpus or (cluster.gpus > ALL_CONFIGS_UP_TO and cp & (cp - 1)
                                               and (tp, cp, pp) != best_cfg):
                continue
            try:
                rows.append(_row("WLB-LLM", wlb_llm_plan(lengths, cluster, lat, tp=tp, cp=cp, pp=pp,
                                                         objective=objective)))
            except ValueError as exc:
                rows.append({"plan": "WLB-LLM", "tp": tp, "cp": cp, "pp": pp, "dp": cluster.gpus // (tp * cp * pp),
                             "fits": False, "why_not": str(exc)})
    rows.append(_row("Megatron (best)", megatron_best(lengths, cluster, lat, objective=objective,
                                                      pp_degrees=pp_degrees)))
    if lat.recompute == "auto":  # what adaptive recompute alone gives WLB-LLM, without heterogeneous groups
        rows.append(_row("WLB-LLM (best) + per-micro-batch recompute",
                         wlb_llm_best(lengths, cluster, lat, objective=objective, recompute="per-micro-batch",
                                      pp_degrees=pp_degrees)))
    rows.append(_row(f"hetero-sched [{plan.solver.status}] {shape_summary(plan)}", plan, homogeneous=False))
    key = f"{objective}_ms"
    rows.sort(key=lambda r: (not r["fits"], r.get(key, 0.0), r.get("makespan_ms", 0.0)))
    best = min(r[key] for r in rows if r["fits"])
    for r in rows:
        r["best"] = bool(r["fits"] and r[key] <= best * (1 + 1e-12))
    return rows, plan


def _row(name: str, p, homogeneous: bool = True) -> dict:
    b = p.baseline if homogeneous else None
    return {"plan": name, "tp": b["tp"] if b else None, "cp": b["cp"] if b else None,
            "pp": b.get("pp", 1) if b else None, "dp": b["dp"] if b else None,
            "cross_node_replicas": b.get("cross_node_replicas") if b else None, "fits": True,
            "makespan_ms": p.makespan_ms, "sync_ms": p.sync_ms, "sync_ms_upper": p.sync_ms_upper,
            "step_ms": p.step_ms, "recompute": recompute_label(p), "why_not": ""}


def recompute_label(plan) -> str:
    """'k=12 (global)' for one setting, 'per micro-batch' when micro-batches differ or choose their own."""
    b = plan.baseline if plan.baseline and plan.baseline.get("recompute") == "global" else None
    if b and b.get("recompute_layers") is not None and plan.solver is None:
        return f"k={b['recompute_layers']} (global)"
    return "per micro-batch"


def shape_summary(plan) -> str:
    """'1x(TP4xCP7) + 2x(TP1xCP4xPP2)': group shapes with their counts, largest groups first."""
    counts: dict = {}
    for g in sorted(plan.groups, key=lambda g: (-g.gpus, -g.tp)):
        counts[g.name] = counts.get(g.name, 0) + 1
    return " + ".join(f"{n}x({name})" for name, n in counts.items())


def baseline_name(b: dict) -> str:
    """'TP8xCP2xPP9xDP3' for a homogeneous baseline record."""
    return f"{config_name(b['tp'], b['cp'], b.get('pp', 1))}xDP{b['dp']}"


def seed_case_rows(model_name: str, backend: str, time_limit_s: float, threads: int,
                   objective: str = "step") -> list[dict]:
    rows = []
    for name, case in SEED_CASES.items():
        cluster = Cluster(gpus=case["gpus"])
        lat = latency_model(ModelSpec.preset(model_name), cluster)
        plan = solve(case["lengths"], cluster, lat, backend=backend, time_limit_s=time_limit_s, threads=threads,
                     objective=objective)
        b = plan.baseline
        rows.append({"case": name, "title": case["title"],
                         "groups": shape_summary(plan),
                         "wlb": baseline_name(b), "makespan_ms": plan.makespan_ms,
                         "step_ms": plan.step_ms, "wlb_makespan_ms": b["makespan_ms"], "wlb_step_ms": b["step_ms"],
                         "speedup_makespan": b["makespan_ms"] / plan.makespan_ms,
                         "speedup_step": b["step_ms"] / plan.step_ms, "seed_ratio": case["seed_ratio"],
                         "status": plan.solver.status, "gap": plan.solver.gap, "wall_s": plan.solver.wall_s})
    return rows
