"""Time-limit × backend sweeps: one CSV row per run, resumable, with an anytime plot."""
from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

from .io import write_atomic
from .milp.solve import solve

# Each figure names what it measures: the bound and the baseline of the makespan and of the step; `gap` is on the
# row's objective ((objective - its bound) / objective).
FIELDS = ["problem", "objective", "backend", "time_limit_s", "threads", "seed", "makespan_ms", "makespan_bound_ms",
          "step_ms", "step_bound_ms", "gap", "status", "wall_s", "baseline_makespan_ms", "baseline_step_ms"]
OLD_FIELDS = ["problem", "objective", "backend", "time_limit_s", "threads", "seed", "makespan_ms", "bound_ms", "gap",
              "status", "wall_s", "step_ms", "baseline_ms"]  # before 0.1.1: bound and baseline of the objective only
NUMBERS = ("time_limit_s", "makespan_ms", "makespan_bound_ms", "step_ms", "step_bound_ms", "gap", "wall_s",
           "baseline_makespan_ms", "baseline_step_ms")


def problem_key(lengths, lat, objective: str, threads: int, pp_degrees=None) -> str:
    """A hash of what a sweep solves (batch, cluster, model, step model, objective, threads, pipeline
    degrees when given): a CSV of another problem is never resumed into."""
    what = {"lengths": [int(x) for x in lengths], "cluster": lat.cluster.to_dict(), "model": lat.model.to_dict(),
            "latency_model": lat.describe(), "objective": objective, "threads": threads}
    if pp_degrees is not None:
        what["pp_degrees"] = sorted(int(p) for p in pp_degrees)
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def load_rows(path, key: str | None = None) -> list[dict]:
    """Rows already in a sweep CSV (for resuming); a missing file is an empty sweep; a CSV of another
    problem (key mismatch) is refused."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open() as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames not in (FIELDS, OLD_FIELDS):
            raise ValueError(f"{str(path)!r} is not a sweep CSV of this tool (columns {reader.fieldnames})")
        rows = [_typed(_renamed(r)) for r in reader]
    other = {r["problem"] for r in rows} - {key}
    if key is not None and other:
        raise ValueError(f"{str(path)!r} holds a sweep of another problem (key {min(other)}, this one {key}: "
                         "batch, cluster, model, objective or threads differ); use another --out or delete it")
    return rows


def _renamed(r: dict) -> dict:
    """A row of an older sweep CSV under today's columns (the other objective's bound and baseline unknown)."""
    if "bound_ms" not in r:
        return r
    out = {k: r.get(k, "nan") for k in FIELDS}
    out[f"{r['objective']}_bound_ms"], out[f"baseline_{r['objective']}_ms"] = r["bound_ms"], r["baseline_ms"]
    return out


def _typed(r: dict) -> dict:
    out = dict(r)
    for k in NUMBERS:
        out[k] = float(r[k])
    out["threads"], out["seed"] = int(r["threads"]), int(r["seed"])
    return out


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _row(key: str, objective: str, backend: str, limit: float, threads: int, seed: int, plan) -> dict:
    s, b = plan.solver, plan.baseline
    return {"problem": key, "objective": objective, "backend": backend, "time_limit_s": float(limit), "threads": threads,
            "seed": seed, "makespan_ms": plan.makespan_ms, "makespan_bound_ms": s.makespan_bound_ms,
            "step_ms": plan.step_ms, "step_bound_ms": s.step_bound_ms, "gap": s.gap, "status": s.status,
            "wall_s": s.wall_s, "baseline_makespan_ms": b["makespan_ms"], "baseline_step_ms": b["step_ms"]}


def run_sweep(lengths, lat, backends, limits, repeat, threads, csv_path, png_path, console=None,
              objective: str = "step", pp_degrees=None) -> list[dict]:
    """Run every (backend, limit, seed) not already in the CSV; the CSV is rewritten atomically after each
    run, so an interrupted sweep loses at most the run in flight and resumes where it stopped."""
    from rich.progress import Progress

    key = problem_key(lengths, lat, objective, threads, pp_degrees)
    rows = load_rows(csv_path, key)
    done = {(r["backend"], r["time_limit_s"], r["seed"]) for r in rows}
    todo = [(b, t, s) for b in backends for t in limits for s in range(repeat) if (b, float(t), s) not in done]
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("sweeping", total=len(todo))
        for backend, limit, seed in todo:
            progress.update(task, description=f"{backend} {limit:g}s seed {seed}")
            plan = solve(lengths, lat.cluster, lat, backend=backend, time_limit_s=limit, threads=threads, seed=seed,
                         objective=objective, pp_degrees=pp_degrees)
            rows.append(_row(key, objective, backend, limit, threads, seed, plan))
            write_atomic(csv_path, _csv_text(rows))
            progress.advance(task)
    if png_path:
        from .viz import anytime_png
        write_atomic(png_path, anytime_png(rows))
    return rows
