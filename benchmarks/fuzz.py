"""Fuzz the planner on random small instances: python benchmarks/fuzz.py [--cases 10000] [--minutes 30]

Every case draws a step model (recompute auto or full; the parameter all-gather overlapped in 7 cases
of 10) and checks, on its objective (step or makespan, alternating): the plan validates and its JSON
round-trips unchanged; it is never worse than the best placed WLB-LLM plan (recomputed figures, exact
comparison); bounds ≤ the plan's figures; exposed sync ≤ its upper bound; on makespan cases small enough
for brute force (≤ 6 sequences, ≤ 16 GPUs), bound ≤ the exhaustive topology-aware optimum ≤ makespan and
'optimal' only when the gap is closed; inputs the model cannot hold raise ValueError naming the sequence;
nothing else raises. Three cases in ten search pipeline stages (pp_degrees: one or two divisors of the
layers): the same checks, against the 4D WLB-LLM plan over the same degrees, and on makespan cases small
enough (≤ 5 sequences, ≤ 8 GPUs) bound ≤ the exhaustive optimum over (TP, CP, PP) groups priced by the
1F1B simulation ≤ makespan. CP-SAT runs every case, HiGHS and CBC one case in five each. Writes
benchmarks/results/fuzz_<yyyymm>.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
from hetero_sched.baselines.wlb_llm import wlb_llm_best

import hetero_sched as hs
from hetero_sched.milp.exhaustive import brute_force_makespan, brute_force_pipelined
from hetero_sched.milp.instance import build_instance, largest_sequence

OUT = Path(__file__).resolve().parent / "results"
MODELS = [hs.ModelSpec(name="small-1b", layers=24, hidden=2048, heads=16, kv_heads=16, ffn=5632, vocab=32000),
          hs.ModelSpec(name="gqa-3b", layers=28, hidden=3072, heads=24, kv_heads=8, ffn=8192, vocab=128256)]


def draw_case(rng: np.random.Generator):
    model = MODELS[int(rng.integers(len(MODELS)))]
    options = {"recompute": str(rng.choice(["auto", "full"])), "overlap_param_gather": bool(rng.random() < 0.7)}
    gpn = int(rng.choice([2, 4, 8]))
    gpus = int(rng.integers(1, 33))
    n = int(rng.integers(1, 9))
    kind = rng.random()
    if kind < 0.6:
        lengths = np.exp(rng.uniform(np.log(64), np.log(300_000), n))
    elif kind < 0.8:
        lengths = np.full(n, rng.integers(128, 65536))
    else:
        lengths = rng.integers(1, 4096, n)
    pp_degrees = None
    if rng.random() < 0.3:
        divisors = [d for d in range(2, model.layers + 1) if model.layers % d == 0 and d <= max(gpus, 2)]
        pp_degrees = tuple(sorted({int(rng.choice(divisors)), int(rng.choice([1] + divisors))}))
    return model, gpus, gpn, [int(x) for x in lengths], options, pp_degrees


def check_case(rng, lat_cache, backend, objective) -> tuple[str, str]:
    model, gpus, gpn, lengths, options, pp_degrees = draw_case(rng)
    key = (model.name, gpus, gpn, *options.values())
    try:
        if key not in lat_cache:
            lat_cache[key] = hs.latency_model(model, hs.Cluster(gpus=gpus, gpus_per_node=gpn), **options)
        lat = lat_cache[key]
    except ValueError as exc:
        if "cannot fit" in str(exc):
            return "model does not fit (ValueError)", ""
        raise
    degrees = [1] if pp_degrees is None else [p for p in pp_degrees if p <= gpus]
    try:
        cap = largest_sequence(lat, pp_degrees)
    except ValueError:
        cap = 0
    try:
        plan = hs.solve(lengths, lat.cluster, lat, backend=backend, time_limit_s=5, threads=1,
                        seed=int(rng.integers(99)), objective=objective, pp_degrees=pp_degrees)
    except ValueError as exc:
        if (max(lengths) > cap and "sequence" in str(exc)) or (cap == 0 and ("fits on no" in str(exc)
                                                                                or "need at least" in str(exc))):
            return "sequence too long (ValueError)", ""
        return "FAIL", f"unexpected ValueError: {exc} for {lengths} on {gpus} (pp_degrees {pp_degrees})"
    problems = plan.validate()
    if problems:
        return "FAIL", f"invalid plan: {problems[:3]}"
    if hs.Plan.from_json(plan.to_json()).to_json() != plan.to_json():
        return "FAIL", "JSON round trip changed the plan"
    key = f"{objective}_ms"
    wlb = wlb_llm_best(lengths, lat.cluster, lat, objective=objective, pp_degrees=pp_degrees)
    if getattr(plan, key) > getattr(wlb, key):
        return "FAIL", f"worse than WLB-LLM on the {objective}"
    s = plan.solver
    honest = (s.bound_ms <= s.objective_ms == getattr(plan, key) and s.makespan_bound_ms <= plan.makespan_ms
              and s.step_bound_ms <= plan.step_ms and plan.sync_ms <= plan.sync_ms_upper + 1e-9)
    if not honest or (s.status == "optimal") != (s.gap <= 1e-6):
        return "FAIL", f"dishonest status/bound: {s}"
    staged = " with stages" if pp_degrees else ""
    if pp_degrees and objective == "makespan" and len(lengths) <= 5 and gpus <= 8:
        optimum = brute_force_pipelined(lengths, lat, degrees)
        if s.makespan_bound_ms > optimum * (1 + 1e-9):
            return "FAIL", f"bound {s.makespan_bound_ms} above the simulated exhaustive optimum {optimum}"
        if plan.makespan_ms < optimum * (1 - 1e-9):
            return "FAIL", f"makespan {plan.makespan_ms} below the simulated exhaustive optimum {optimum}"
        return f"ok ({objective}, {s.status}, brute-forced{staged})", ""
    if objective == "makespan" and len(lengths) <= 6 and gpus <= 16 and not pp_degrees:
        optimum = brute_force_makespan(build_instance(lengths, lat, prune=False, all_cps=True))
        if s.bound_ms > optimum * (1 + 1e-9):
            return "FAIL", f"bound {s.bound_ms} above the exhaustive optimum {optimum}"
        if plan.makespan_ms < optimum * (1 - 1e-9):
            return "FAIL", f"makespan {plan.makespan_ms} below the exhaustive optimum {optimum}"
        if s.status == "optimal" and plan.makespan_ms > optimum * (1 + 1e-6):
            return "FAIL", f"claims optimal at {plan.makespan_ms} > exhaustive {optimum}"
        return f"ok ({objective}, {s.status}, brute-forced)", ""
    return f"ok ({objective}, {s.status}{staged})", ""


def run_share(job: int, jobs: int, cases: int, minutes: float, seed: int):
    """Cases job, job + jobs, ... of the run (each job has its own random stream)."""
    rng = np.random.default_rng([seed, job])
    counts: Counter = Counter()
    per_backend: Counter = Counter()
    failures: list[str] = []
    lat_cache: dict = {}
    start = time.monotonic()
    done = 0
    for k in range(job, cases, jobs):
        if time.monotonic() - start > 60 * minutes:
            break
        backend = "cpsat" if k % 5 else ("highs" if k % 10 else "cbc")
        objective = ("step", "makespan")[(k // 3) % 2]  # decorrelated from the backend and the job
        try:
            outcome, detail = check_case(rng, lat_cache, backend, objective)
        except Exception:  # noqa: BLE001 — anything else raising is a failure to report, not to hide
            outcome, detail = "FAIL", traceback.format_exc(limit=3)
        counts[outcome] += 1
        per_backend[backend] += 1
        if outcome == "FAIL":
            failures.append(f"case {k} ({backend}): {detail}")
        done += 1
    return counts, per_backend, failures, done


def main() -> None:
    from concurrent.futures import ProcessPoolExecutor

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1, help="processes sharing the cases")
    args = ap.parse_args()
    start = time.monotonic()
    counts: Counter = Counter()
    per_backend: Counter = Counter()
    failures: list[str] = []
    done = 0
    with ProcessPoolExecutor(args.jobs) as pool:
        shares = [pool.submit(run_share, j, args.jobs, args.cases, args.minutes, args.seed) for j in range(args.jobs)]
        for f in shares:
            c, b, fails, n = f.result()
            counts += c
            per_backend += b
            failures += fails
            done += n
    wall = time.monotonic() - start
    lines = [f"# Fuzzing ({dt.date.today():%Y-%m})", "",
             (f"Generated by `python benchmarks/fuzz.py --cases {args.cases} --minutes {args.minutes:g} --seed {args.seed} "
              f"--jobs {args.jobs}` on "
             f"{dt.date.today()}: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
             f"hetero-sched {hs.__version__}. Solver: time limit 5 s, 1 thread, seeds drawn per case."), "",
             f"**{done} cases in {wall / 60:.1f} min, {len(failures)} failures.** Backends: "
             + ", ".join(f"{b} {n}" for b, n in sorted(per_backend.items())) + ".", "",
             ("Instances: 1-32 GPUs (2, 4 or 8 per node), 1-8 sequences (log-uniform 64-300K tokens, all equal, "
             "or short 1-4K), two small model shapes (MHA 1B, GQA 3B)."), "",
             "| outcome | cases |", "|---|---|"]
    lines += [f"| {o} | {n} |" for o, n in sorted(counts.items())]
    if failures:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in failures[:50]]
    OUT.mkdir(exist_ok=True)
    (OUT / f"fuzz_{dt.date.today():%Y%m}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
