"""Seed-style comparison tables: every homogeneous WLB-LLM config, Megatron packing, hetero-sched."""
from __future__ import annotations

from .baselines.megatron import megatron_best
from .baselines.wlb_llm import wlb_llm_plan
from .latency import LatencyModel, latency_model
from .milp.solve import solve
from .seeds import SEED_CASES
from .specs import Cluster, ModelSpec

ALL_CONFIGS_UP_TO = 64  # GPUs; beyond, only power-of-two CP degrees are listed (plus the best)


def compare_batch(lengths, lat: LatencyModel, backend: str, time_limit_s: float, threads: int, seed: int,
                  objective: str = "makespan"):
    """Rows for each homogeneous config (or why it does not fit), Megatron's best, and the planner's plan."""
    cluster = lat.cluster
    plan = solve(lengths, cluster, lat, backend=backend, time_limit_s=time_limit_s, threads=threads, seed=seed,
                 objective=objective)
    rows = []
    for tp, cp in cluster.configs(lat.model):
        if cluster.gpus > ALL_CONFIGS_UP_TO and cp & (cp - 1) and (tp, cp) != (plan.baseline["tp"],
                                                                                plan.baseline["cp"]):
            continue
        dp = cluster.gpus // (tp * cp)
        try:
            p = wlb_llm_plan(lengths, cluster, lat, tp=tp, cp=cp)
            rows.append({"name": "WLB-LLM", "tp": tp, "cp": cp, "dp": dp, "makespan_ms": p.makespan_ms, "step_ms": p.step_ms})
        except ValueError as exc:
            rows.append({"name": "WLB-LLM", "tp": tp, "cp": cp, "dp": dp, "error": str(exc).split(":")[0]
                             if "cannot hold" in str(exc) else str(exc)})
    meg = megatron_best(lengths, cluster, lat)
    rows.append({"name": "Megatron (best)", "tp": meg.baseline["tp"], "cp": meg.baseline["cp"], "dp": meg.baseline["dp"],
                     "makespan_ms": meg.makespan_ms, "step_ms": meg.step_ms})
    shapes = shape_summary(plan)
    rows.append({"name": f"hetero-sched [{plan.solver.status}] {shapes}", "tp": "", "cp": "", "dp": "",
                     "makespan_ms": plan.makespan_ms, "step_ms": plan.step_ms})
    return rows, plan


def shape_summary(plan) -> str:
    """'1x(TP4xCP7) + 2x(TP1xCP4)': group shapes with their counts, largest groups first."""
    counts: dict = {}
    for g in sorted(plan.groups, key=lambda g: (-g.tp * g.cp, -g.tp)):
        counts[(g.tp, g.cp)] = counts.get((g.tp, g.cp), 0) + 1
    return " + ".join(f"{n}x(TP{tp}xCP{cp})" for (tp, cp), n in counts.items())


def seed_case_rows(model_name: str, backend: str, time_limit_s: float, threads: int,
                   objective: str = "makespan") -> list[dict]:
    rows = []
    for name, case in SEED_CASES.items():
        cluster = Cluster(gpus=case["gpus"])
        lat = latency_model(ModelSpec.preset(model_name), cluster)
        plan = solve(case["lengths"], cluster, lat, backend=backend, time_limit_s=time_limit_s, threads=threads,
                     objective=objective)
        b = plan.baseline
        rows.append({"case": name, "title": case["title"],
                         "groups": shape_summary(plan),
                         "wlb": f"TP{b['tp']}xCP{b['cp']}xDP{b['dp']}", "makespan_ms": plan.makespan_ms,
                         "step_ms": plan.step_ms, "wlb_makespan_ms": b["makespan_ms"], "wlb_step_ms": b["step_ms"],
                         "speedup_makespan": b["makespan_ms"] / plan.makespan_ms,
                         "speedup_step": b["step_ms"] / plan.step_ms, "seed_ratio": case["seed_ratio"],
                         "status": plan.solver.status, "gap": plan.solver.gap, "wall_s": plan.solver.wall_s})
    return rows
