"""Time-limit × backend sweeps: one CSV row per run, resumable, with an anytime plot."""
from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

from .io import write_atomic
from .milp.solve import solve

FIELDS = ["problem", "objective", "backend", "time_limit_s", "threads", "seed", "makespan_ms", "bound_ms", "gap",
          "status", "wall_s", "step_ms", "baseline_ms"]


def problem_key(lengths, lat, objective: str, threads: int) -> str:
    """A hash of what a sweep solves (batch, cluster, model, step model, objective, threads): a CSV of
    another problem is never resumed into."""
    what = {"lengths": [int(x) for x in lengths], "cluster": lat.cluster.to_dict(), "model": lat.model.to_dict(),
            "latency_model": lat.describe(), "objective": objective, "threads": threads}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def load_rows(path, key: str | None = None) -> list[dict]:
    """Rows already in a sweep CSV (for resuming); a missing file is an empty sweep; a CSV of another
    problem (key mismatch) is refused."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open() as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames != FIELDS:
            raise ValueError(f"{str(path)!r} is not a sweep CSV of this tool (columns {reader.fieldnames})")
        rows = [_typed(r) for r in reader]
    other = {r["problem"] for r in rows} - {key}
    if key is not None and other:
        raise ValueError(f"{str(path)!r} holds a sweep of another problem (key {min(other)}, this one {key}: "
                         "batch, cluster, model, objective or threads differ); use another --out or delete it")
    return rows


def _typed(r: dict) -> dict:
    out = dict(r)
    for k in ("time_limit_s", "makespan_ms", "bound_ms", "gap", "wall_s", "step_ms", "baseline_ms"):
        out[k] = float(r[k])
    out["threads"], out["seed"] = int(r["threads"]), int(r["seed"])
    return out


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def run_sweep(lengths, lat, backends, limits, repeat, threads, csv_path, png_path, console=None,
              objective: str = "step") -> list[dict]:
    """Run every (backend, limit, seed) not already in the CSV; the CSV is rewritten atomically after each
    run, so an interrupted sweep loses at most the run in flight and resumes where it stopped."""
    from rich.progress import Progress

    key = problem_key(lengths, lat, objective, threads)
    rows = load_rows(csv_path, key)
    done = {(r["backend"], r["time_limit_s"], r["seed"]) for r in rows}
    todo = [(b, t, s) for b in backends for t in limits for s in range(repeat) if (b, float(t), s) not in done]
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("sweeping", total=len(todo))
        for backend, limit, seed in todo:
            progress.update(task, description=f"{backend} {limit:g}s seed {seed}")
            plan = solve(lengths, lat.cluster, lat, backend=backend, time_limit_s=limit, threads=threads, seed=seed,
                         objective=objective)
            s = plan.solver
            rows.append({"problem": key, "objective": objective, "backend": backend, "time_limit_s": float(limit), "threads": threads, "seed": seed,
                             "makespan_ms": plan.makespan_ms, "bound_ms": s.bound_ms, "gap": s.gap, "status": s.status,
                             "wall_s": s.wall_s, "step_ms": plan.step_ms, "baseline_ms": plan.baseline[f"{objective}_ms"]})
            write_atomic(csv_path, _csv_text(rows))
            progress.advance(task)
    if png_path:
        from .viz import anytime_png
        write_atomic(png_path, anytime_png(rows))
    return rows
