"""Time-limit × backend sweeps: one CSV row per run, resumable, with an anytime plot."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from .io import write_atomic
from .milp.solve import solve

FIELDS = ["backend", "time_limit_s", "threads", "seed", "makespan_ms", "bound_ms", "gap", "status", "wall_s",
          "step_ms", "baseline_ms"]


def load_rows(path) -> list[dict]:
    """Rows already in a sweep CSV (for resuming); a missing file is an empty sweep."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open() as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames != FIELDS:
            raise ValueError(f"{str(path)!r} is not a sweep CSV of this tool (columns {reader.fieldnames})")
        return [_typed(r) for r in reader]


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


def run_sweep(lengths, lat, backends, limits, repeat, threads, csv_path, png_path, console=None) -> list[dict]:
    """Run every (backend, limit, seed) not already in the CSV; the CSV is rewritten atomically after each
    run, so an interrupted sweep loses at most the run in flight and resumes where it stopped."""
    from rich.progress import Progress

    rows = load_rows(csv_path)
    done = {(r["backend"], r["time_limit_s"], r["seed"]) for r in rows}
    todo = [(b, t, s) for b in backends for t in limits for s in range(repeat) if (b, float(t), s) not in done]
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("sweeping", total=len(todo))
        for backend, limit, seed in todo:
            progress.update(task, description=f"{backend} {limit:g}s seed {seed}")
            plan = solve(lengths, lat.cluster, lat, backend=backend, time_limit_s=limit, threads=threads, seed=seed)
            s = plan.solver
            rows.append({"backend": backend, "time_limit_s": float(limit), "threads": threads, "seed": seed,
                             "makespan_ms": plan.makespan_ms, "bound_ms": s.bound_ms, "gap": s.gap, "status": s.status,
                             "wall_s": s.wall_s, "step_ms": plan.step_ms, "baseline_ms": plan.baseline["makespan_ms"]})
            write_atomic(csv_path, _csv_text(rows))
            progress.advance(task)
    if png_path:
        from .viz import anytime_png
        write_atomic(png_path, anytime_png(rows))
    return rows
