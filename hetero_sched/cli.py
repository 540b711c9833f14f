"""The command line: solve, compare, sweep, validate, show, latency. Printing happens only here."""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .io import check_writable, write_atomic
from .latency import latency_model
from .milp.backends import BACKENDS
from .specs import DEFAULT_MODEL, Cluster, ModelSpec, gpu_presets

# Pipes and CI logs get 120 columns instead of rich's 80, so tables are not squeezed.
_WIDTH = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "120"))
out = Console(highlight=False, width=_WIDTH)
err = Console(stderr=True, highlight=False, width=_WIDTH)


# ---- shared options -----------------------------------------------------------------------------------
class _Once(argparse.Action):
    """An option that may be given once: a second --lengths would silently replace the first batch."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} given twice; give it once")
        setattr(namespace, self.dest, values)


def _add_batch(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("batch (one of)")
    g.add_argument("--lengths", action=_Once, help="comma-separated token lengths, e.g. 32768,1024")
    g.add_argument("--batch", action=_Once, help="file of token lengths: .txt .csv .json .jsonl .parquet")
    g.add_argument("--column", action=_Once, help="column (csv/parquet) or field (jsonl) holding the lengths")
    g.add_argument("--synthetic", action=_Once, help="prolong:tokens=N,context=N,seed=N or lognormal:n=N,context=N,seed=N[,median=2048,sigma_x100=150] "
                        "(log-normal lengths around the median, sigma = sigma_x100/100, capped at the context)")


def _add_cluster(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpus", type=int, default=16, help="GPUs in the cluster (default 16)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per NVLink node (default 8)")
    p.add_argument("--gpu", default="h100", help=f"GPU preset, case-insensitive: {', '.join(gpu_presets())} "
                   "(default h100; only h100 is calibrated, the others scale its curves by datasheet ratios)")
    p.add_argument("--model", help=f"model preset: {', '.join(ModelSpec.presets())} (default {DEFAULT_MODEL})")
    p.add_argument("--hf-config", help="Hugging Face config.json of a dense model, instead of --model")
    p.add_argument("--table", help="profiled latency table (models/README.md) for the table step model")
    p.add_argument("--calibration", help="calibration file from `hetero-sched profile`: every curve of the step "
                   "model is read from it")
    p.add_argument("--recompute", default="auto", choices=["auto", "full"],
                   help="activation recompute: each micro-batch recomputes the least number of layers with which "
                   "it fits (auto, default), or every layer (full checkpointing)")
    p.add_argument("--no-overlap-param-gather", dest="overlap_param_gather", action="store_false",
                   help="charge the ZeRO-1 parameter all-gather after the optimizer step, exposed (default: it "
                   "overlaps the next step's first forward, bucket by bucket)")


def _add_solver(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="cpsat", help=f"{', '.join(BACKENDS)} or none (heuristic only)")
    p.add_argument("--time-limit", type=float, default=10.0, help="seconds, model building included (default 10)")
    p.add_argument("--threads", type=int, default=2,
                   help="solver threads (default 2; 2 or more also lets a pattern LP bound run in a worker process)")
    p.add_argument("--seed", type=int, default=0, help="the solver's random seed")
    p.add_argument("--work-limit", type=float, help="deterministic work limit instead of wall-clock luck: "
                   "CP-SAT deterministic seconds, HiGHS/CBC branch-and-bound nodes; with --threads 1 the plan "
                   "is reproducible byte for byte (wall-time fields aside); --time-limit is then not applied, since "
                   "the plan must not depend on the machine's load")
    p.add_argument("--objective", default="step", choices=["step", "makespan"],
                   help="minimise the step: makespan + exposed gradient sync (default), or the slowest group")
    _add_pp_degrees(p)
    p.add_argument("--round-lengths", type=int, metavar="N",
                   help="price lengths rounded up to a multiple of N tokens (fewer distinct lengths for huge "
                        "batches; costs stay upper bounds, the plan is priced on the true lengths)")


def _add_pp_degrees(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pp-degrees", metavar="LIST",
                   help="pipeline degrees to search, comma-separated, each dividing the model's layers, e.g. 1,2,4 "
                        "(default: 1 when the model fits without stages, else every divisor with which it fits)")


def _lengths(args) -> list[int]:
    from .workload import parse_lengths, read_batch, synthetic

    given = [x for x in (args.lengths, args.batch, args.synthetic) if x is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of --lengths, --batch, --synthetic")
    if args.lengths is not None:
        return parse_lengths(args.lengths)
    if args.batch is not None:
        return read_batch(args.batch, args.column)
    return synthetic(args.synthetic)


def _model(args) -> ModelSpec:
    if args.hf_config and args.model:
        raise ValueError("give either --model or --hf-config, not both")
    return ModelSpec.from_hf_config(args.hf_config) if args.hf_config else ModelSpec.preset(args.model or DEFAULT_MODEL)


def _setup(args):
    model = _model(args)
    for flag in ("gpus", "gpus_per_node"):
        if getattr(args, flag, 1) is not None and getattr(args, flag, 1) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(args, flag)}")
    cluster = Cluster(gpus=args.gpus, gpus_per_node=args.gpus_per_node, gpu=args.gpu)
    lat = latency_model(model, cluster, table=args.table, calibration=args.calibration, recompute=args.recompute,
                        overlap_param_gather=args.overlap_param_gather)
    note = _calibration_note(lat)
    if note:
        err.print(f"note: {note}", markup=False, soft_wrap=True)
    return lat


def _calibration_note(lat) -> str | None:
    """A line when the calibration file was measured on another device than the --gpu preset."""
    from .latency.calibfile import device_note

    return device_note(lat.k.device, lat.cluster.gpu, lat.k.path) if lat.k.calibrated_by_file else None


def _check_solver_args(args) -> None:
    if args.backend not in BACKENDS + ("none",):
        raise ValueError(f"unknown backend {args.backend!r}; choose one of {', '.join(BACKENDS + ('none',))}")
    if not 0 <= args.time_limit < math.inf:  # (nan too)
        raise ValueError(f"--time-limit must be a finite number >= 0, got {args.time_limit}")
    if getattr(args, "work_limit", None) is not None and not 0 < args.work_limit < math.inf:  # (nan too)
        raise ValueError(f"--work-limit must be a finite number > 0, got {args.work_limit}")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if getattr(args, "round_lengths", None) is not None and args.round_lengths < 1:
        raise ValueError(f"--round-lengths must be >= 1, got {args.round_lengths}")


def _pp_degrees(args) -> tuple[int, ...] | None:
    """--pp-degrees as integers (each is checked against the model's layers when the solver prices)."""
    text = getattr(args, "pp_degrees", None)
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--pp-degrees must be comma-separated integers such as 1,2,4, got {text!r}") from None


# ---- commands --------------------------------------------------------------------------------------------
def cmd_solve(args) -> int:
    from .milp.solve import solve

    _check_solver_args(args)
    if args.out:
        check_writable(args.out)
    lengths = _lengths(args)
    lat = _setup(args)
    plan = solve(lengths, lat.cluster, lat, backend=args.backend, time_limit_s=args.time_limit,
                 threads=args.threads, seed=args.seed, objective=args.objective,
                 deterministic_limit=args.work_limit, round_lengths=args.round_lengths, pp_degrees=_pp_degrees(args))
    if args.out:  # before printing: a reader that closes the pipe early (| head) must not lose the file
        write_atomic(args.out, plan.to_json())
        err.print(f"plan written to {args.out}")
    if args.json:  # written as it is: through rich, 16,384 GPUs' plan took 4.4 s to print instead of 1.3 s
        sys.stdout.write(plan.to_json() + "\n")
        sys.stdout.flush()
    else:
        print_plan(plan, lat)
    return 0


def print_plan(plan, lat=None) -> None:
    """The plan's groups as a table, then its summary; `lat` (the step model it was priced with) names
    the device a calibration file was measured on."""
    if lat is not None:
        gpu = gpu_label(lat)
    else:
        gpu = plan.cluster.gpu if plan.cluster.spec.calibrated or plan.latency_model.get("calibration_sha256") \
            else f"{plan.cluster.gpu} (UNCALIBRATED)"
    t = Table(title=f"{plan.model.name} on {plan.cluster.gpus} x {gpu} "
                    f"({plan.cluster.gpus_per_node}/node): {plural(len(plan.lengths), 'sequence')}, "
                    f"{sum(plan.lengths):,} tokens")
    if len(plan.groups) > MAX_TABLE_GROUPS:
        out.print(_table_by_shape(plan, t))
        print_summary(plan)
        return
    for col in ("group", "TP", "CP", "PP", "ranks", "sequences", "tokens", "micro-batches", "recompute",
                "latency ms", "memory GB"):
        t.add_column(col, justify="right" if col not in ("ranks",) else "left")
    for k, g in enumerate(plan.groups):
        t.add_row(str(k), str(g.tp), str(g.cp), str(g.pp), _ranks(g.ranks), str(len(g.sequence_ids)),
                  f"{sum(plan.lengths[i] for i in g.sequence_ids):,}", str(len(g.micro_batches)),
                  _recompute_range(g.recompute_layers, plan.model.layers), f"{g.latency_ms:,.1f}",
                  f"{g.memory_gb:.1f}")
    out.print(t)
    print_summary(plan)


MAX_TABLE_GROUPS = 256  # above, the table has one row per (TP, CP, PP) shape (a row per group: 8 s for 5,000 groups)


def _table_by_shape(plan, t: Table) -> Table:
    """One row per (TP, CP, PP) shape: how many groups and GPUs, their sequences and tokens, the range of
    their latencies and the most memory; the plan file lists every group."""
    t.caption = f"{len(plan.groups):,} groups, one row per shape (every group is in the plan file)"
    for col in ("TP", "CP", "PP", "groups", "GPUs", "sequences", "tokens", "recompute", "latency ms", "memory GB"):
        t.add_column(col, justify="right")
    shapes: dict = {}
    for g in plan.groups:
        shapes.setdefault((g.tp, g.cp, g.pp), []).append(g)
    lengths = plan.lengths
    for (tp, cp, pp), gs in sorted(shapes.items(), key=lambda kv: (-kv[0][0] * kv[0][1] * kv[0][2], -kv[0][0])):
        lat = [g.latency_ms for g in gs]
        ks = [k for g in gs for k in g.recompute_layers]
        t.add_row(str(tp), str(cp), str(pp), f"{len(gs):,}", f"{len(gs) * tp * cp * pp:,}",
                  f"{sum(len(g.sequence_ids) for g in gs):,}",
                  f"{sum(lengths[i] for g in gs for i in g.sequence_ids):,}", _recompute_range(ks, plan.model.layers),
                  f"{min(lat):,.1f}-{max(lat):,.1f}", f"{max(g.memory_gb for g in gs):.1f}")
    return t


def _recompute_range(ks, layers: int) -> str:
    """Layers its micro-batches recompute, of the model's: '0/32', '3-32/32'."""
    if not ks:
        return "-"
    low, high = min(ks), max(ks)
    return f"{low}/{layers}" if low == high else f"{low}-{high}/{layers}"


def _limit(s) -> str:
    return f"work limit {s.work_limit:g}, no wall-clock limit" if s.work_limit is not None else f"limit {s.time_limit_s} s"


def print_summary(plan) -> None:
    """The lines under a plan's table: step, what the solver did and proved, the baseline."""
    s, b = plan.solver, plan.baseline
    out.print(f"makespan {plan.makespan_ms:,.1f} ms + sync {plan.sync_ms:,.1f} ms exposed "
              f"({plan.sync_ms_upper:,.1f} ms if nothing overlapped) = step {plan.step_ms:,.1f} ms "
              f"on {plan.gpus_used}/{plan.cluster.gpus} GPUs")
    if s:
        out.print(f"solver {s.backend}, objective {s.objective}: {s.status}, lower bound {s.bound_ms:,.1f} ms "
                  f"(makespan >= {s.makespan_bound_ms:,.1f}, step >= {s.step_bound_ms:,.1f}), gap {s.gap:.2%}, "
                  f"{s.wall_s:.2f} s ({_limit(s)}, {plural(s.threads, 'thread')}, seed {s.seed})")
        for part in s.message.split(" | "):
            out.print(f"  {part}", markup=False, style="dim")
    if b:
        from .compare import baseline_name

        obj = s.objective if s else "step"
        other = "makespan" if obj == "step" else "step"
        ratio = {m: b[f"{m}_ms"] / getattr(plan, f"{m}_ms") for m in ("step", "makespan")}
        out.print(f"best WLB-LLM on the {obj}: {baseline_name(b)} makespan {b['makespan_ms']:,.1f} ms, "
                  f"step {b['step_ms']:,.1f} ms -> speed-up {ratio[obj]:.2f}x {obj}, {ratio[other]:.2f}x {other}")
        if ratio[other] < 1 - 1e-9:
            slower = 1 / ratio[other]
            how = f"{slower:.2f}x" if slower >= 1.005 else f"{100 * (slower - 1):.2f} %"  # (1.001x is not "1.00x")
            out.print(f"note: this plan is {how} slower than that WLB-LLM plan on the {other} "
                      f"(the {obj} is what was minimised)")


def _ranks(ranks) -> str:
    if ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"{ranks[0]}-{ranks[-1]}" if len(ranks) > 1 else str(ranks[0])
    return ",".join(map(str, ranks))


def cmd_latency(args) -> int:
    from .workload import parse_length

    if args.max_cp < 1:
        raise ValueError(f"--max-cp must be >= 1, got {args.max_cp}")
    if args.csv:
        check_writable(args.csv)
    lat = _setup(args)
    lengths = [parse_length(x) for x in args.at.split(",")] if args.at else [1024, 8192, 32768, 131072]
    pp = args.pp
    lat.check_pp(pp)
    header = ["TP", "CP", "max tokens", "overhead ms"] + [f"{x:,} tok" for x in lengths]
    rows = []
    for tp, cp in lat.cluster.configs(lat.model):
        if cp > args.max_cp or tp * cp * pp > lat.cluster.gpus:
            continue
        cap = lat.max_tokens(tp, cp, pp)
        rows.append([tp, cp, cap, lat.overhead_ms(tp, cp, None, pp)]
                    + [lat.seq_latency_ms(x, tp, cp, pp=pp) if x <= cap else None for x in lengths])
    if args.csv:
        header_csv = ["gpu", "calibrated", "tp", "cp", "max_tokens", "overhead_ms"] + [f"ms_at_{x}" for x in lengths]
        write_atomic(args.csv, _csv(header_csv, [[lat.cluster.gpu, lat.calibrated, *r] for r in rows]))
        err.print(f"latency table written to {args.csv}")
    what = "fwd+recompute+bwd, all layers" if pp == 1 else \
        f"{pp} stages: fwd+recompute+bwd of the last stage (its blocks and the LM head), what a sequence adds to a full pipeline"
    t = Table(title=f"step model ({lat.kind}) for {lat.model.name} on {lat.cluster.gpus} x {gpu_label(lat)}: "
                    f"{what}, ms ('-': does not fit)")
    for col in header:
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(str(r[0]), str(r[1]), f"{r[2]:,}", f"{r[3]:.1f}", *("-" if v is None else f"{v:,.1f}" for v in r[4:]))
    out.print(t)
    return 0


def gpu_label(lat) -> str:
    """The GPU's name, flagged when its curves were not measured on it; with a calibration file, the device
    that file was measured on (and the --gpu preset when that is another device)."""
    if lat.k.calibrated_by_file:
        device = lat.k.device.get("name") or "?"
        note = _calibration_note(lat)
        preset = f"; --gpu {lat.cluster.gpu} for what it did not measure" if note else ""
        return f"{device} (calibration {Path(lat.k.path).name}{preset})"
    if not lat.calibrated:
        return f"{lat.cluster.gpu} (UNCALIBRATED: H100 curves scaled by datasheet ratios)"
    return lat.cluster.gpu


def _csv(header, rows) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(["" if v is None else v for v in r] for r in rows)
    return buf.getvalue()


def cmd_compare(args) -> int:
    from .compare import compare_batch, seed_case_rows

    _check_solver_args(args)
    for path in (args.csv,):
        if path:
            check_writable(path)
    if args.seed_cases:
        rows = seed_case_rows(args.model or DEFAULT_MODEL, args.backend, args.time_limit, args.threads,
                              args.objective)
        t = Table(title=f"seed cases: hetero-sched vs the best placed WLB-LLM config on the {args.objective}")
        for col in ("case", "hetero-sched groups", "WLB-LLM best", "makespan speed-up", "step speed-up",
                    "seed's ratio", "status"):
            t.add_column(col)
        for r in rows:
            t.add_row(r["title"], r["groups"], r["wlb"], f"{r['speedup_makespan']:.2f}x",
                      f"{r['speedup_step']:.2f}x", f"{r['seed_ratio']:.2f}x (sum)", r["status"])
        out.print(t)
        out.print("The seed's ratios sum two group latencies (cases 2-3) in other units; ours compare makespans.")
        return 0
    lat = _setup(args)
    lengths = _lengths(args)
    rows, plan = compare_batch(lengths, lat, args.backend, args.time_limit, args.threads, args.seed, args.objective,
                               round_lengths=args.round_lengths, pp_degrees=_pp_degrees(args))
    fields = ["plan", "tp", "cp", "pp", "dp", "cross_node_replicas", "fits", "recompute", "makespan_ms", "sync_ms",
              "sync_ms_upper", "step_ms", "best", "why_not"]
    if args.csv:
        write_atomic(args.csv, _csv(fields, [[r.get(f) for f in fields] for r in rows]))
        err.print(f"comparison written to {args.csv}")
    if args.json:
        import json
        out.print(json.dumps({"objective": args.objective, "rows": rows, "plan": plan.to_dict()}, indent=1),
                  markup=False, soft_wrap=True)
        return 0
    t = Table(title=f"{plural(len(lengths), 'sequence')}, {sum(lengths):,} tokens on {lat.cluster.gpus} GPUs, sorted by "
                    f"{args.objective} (* = best)")
    for col in ("", "plan", "TP", "CP", "PP", "DP", "fits", "recompute", "makespan ms", "sync ms (upper)", "step ms",
                f"hetero-sched speed-up ({args.objective})"):
        t.add_column(col, justify="left" if col in ("plan", "fits") else "right")
    key = f"{args.objective}_ms"
    for r in rows:
        cells = [str(r.get(k) if r.get(k) is not None else "") for k in ("tp", "cp", "pp", "dp")]
        if not r["fits"]:
            t.add_row("", escape(r["plan"]), *cells, "does not fit", "", "", "", "", escape(r["why_not"]))
            continue
        t.add_row("*" if r["best"] else "", escape(r["plan"]), *cells, "yes", r["recompute"], f"{r['makespan_ms']:,.1f}",
                  f"{r['sync_ms']:,.1f} ({r['sync_ms_upper']:,.1f})", f"{r['step_ms']:,.1f}",
                  f"{r[key] / getattr(plan, key):.2f}x")
    out.print(t)
    print_summary(plan)
    return 0


def cmd_validate(args) -> int:
    plan, lat = _read_plan(args)
    problems = plan.validate(lat)
    if problems:
        _print_problems(args.plan, problems)
        return 1
    out.print(f"{args.plan}: valid ({plural(len(plan.groups), 'group')}, {plural(len(plan.lengths), 'sequence')}, "
              f"makespan {plan.makespan_ms:,.1f} ms, step {plan.step_ms:,.1f} ms)")
    return 0


def plural(count: int, noun: str) -> str:
    """'1 group', '2 groups'."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _print_problems(path, problems, tail: str = "") -> None:
    err.print(f"{path}: INVALID ({plural(len(problems), 'problem')}){tail}", markup=False)
    for p in problems:
        err.print(f"  - {p}", markup=False)


def _read_plan(args):
    """The plan file and the step model its --table / --calibration name (None: the plan's own)."""
    from .plan import latency_for
    from .planfile import read_plan, step_model_for

    plan = read_plan(args.plan)
    lat = step_model_for(plan, args.table, args.calibration)
    # a plan that needs a --calibration or --table file not given is missing input (exit 2), not invalid
    return plan, lat if lat is not None else latency_for(plan)


def _add_plan_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", help="the profiled table the plan was made with (when it is not shipped)")
    p.add_argument("--calibration", help="the calibration file the plan was made with")


def cmd_show(args) -> int:
    from .viz import _pyplot, gantt_image, image_format

    if args.png:
        check_writable(args.png)
        image_format(Path(args.png).suffix)
        _pyplot()  # fail now, before the table is printed, when matplotlib is missing
    plan, lat = _read_plan(args)
    problems = plan.validate(lat)
    if problems:
        _print_problems(args.plan, problems, "; not shown")
        return 1
    print_plan(plan, lat)
    if args.png:
        write_atomic(args.png, gantt_image(plan, Path(args.png).suffix))
        err.print(f"Gantt chart written to {args.png}")
    return 0


def cmd_sweep(args) -> int:
    from .sweep import run_sweep

    backends = [b.strip() for b in args.backends.split(",")]
    for b in backends:
        if b not in BACKENDS:
            raise ValueError(f"unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
    limits = []
    for x in args.time_limits.split(","):
        try:
            limits.append(float(x))
        except ValueError:
            raise ValueError(f"time limit {x!r} is not a number") from None
        if not 0 <= limits[-1] < math.inf:  # (nan too)
            raise ValueError(f"--time-limits: each must be a finite number >= 0, got {x.strip()}")
    if args.repeat < 1:
        raise ValueError(f"--repeat must be >= 1, got {args.repeat}")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    check_writable(args.out)
    if args.png:
        check_writable(args.png)
        from .viz import _pyplot
        _pyplot()  # fail now, before any solve, when matplotlib is missing
    lengths = _lengths(args)
    lat = _setup(args)
    rows = run_sweep(lengths, lat, backends, limits, args.repeat, args.threads, args.out, args.png, out,
                     objective=args.objective, pp_degrees=_pp_degrees(args))
    out.print(f"{plural(len(rows), 'run')} in {args.out}" + (f", anytime plot in {args.png}" if args.png else ""))
    return 0


MAX_LOCAL_PROCESSES = 64  # `run` spawns one CPU process a rank on this machine


def cmd_run(args) -> int:
    """Spawn gloo workers that run one step of the tiny model on the plan; print the per-group report."""
    import json
    import tempfile

    from .planfile import check_run_options, check_runnable

    if args.nproc is not None and args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    check_run_options(args.max_tokens, args.timeout)
    plan, lat = _read_plan(args)
    nproc = plan.cluster.gpus if args.nproc is None else args.nproc
    check_runnable(plan, plan.cluster.gpus, lat, source=args.plan)
    if nproc != plan.cluster.gpus:
        raise ValueError(f"--nproc {nproc} does not match the plan's {plan.cluster.gpus} GPUs (one process a GPU)")
    if nproc > MAX_LOCAL_PROCESSES:
        raise ValueError(f"the plan has {nproc} ranks: more than {MAX_LOCAL_PROCESSES} local processes; launch it with "
                         "torchrun -m hetero_sched.runtime on the cluster instead")
    try:
        from .runtime.launch import demo_step, spawn
    except ImportError as exc:
        raise ValueError(f"{exc}") from None
    with tempfile.TemporaryDirectory() as tmp:
        out_path = f"{tmp}/report.json"
        try:
            spawn(demo_step, nproc, plan.to_json(), args.max_tokens, args.seed, out_path, timeout_s=args.timeout)
        except Exception as exc:  # noqa: BLE001 — a worker's failure arrives as its traceback text
            raise ValueError(f"a worker failed: {str(exc).strip().splitlines()[-1]}") from None
        with open(out_path) as fh:
            report = json.load(fh)
    t = Table(title=f"one step of the tiny model on {nproc} gloo processes (documents of <= {args.max_tokens} "
                    "tokens standing in for the plan's)")
    for col in ("group", "TP", "CP", "PP", "sequences", "tokens", "measured s"):
        t.add_column(col, justify="right")
    for g in report["groups"]:
        t.add_row(str(g["group"]), str(g["tp"]), str(g["cp"]), str(g.get("pp", 1)), str(g["sequences"]), f"{g['tokens']:,}",
                  f"{g['seconds']:.3f}")
    out.print(t)
    out.print(f"loss {report['loss']:.6f}; step {report['wall_s']:.3f} s, of which gradient sync "
              f"{report['sync_s']:.3f} s (after the slowest group; the others wait for it)")
    return 0


def cmd_plan_dataset(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from .dataset import PlanOptions, StepRule, plan_dataset, read_documents

    _check_solver_args(args)
    if args.executor not in ("local", "ray"):
        raise ValueError(f"unknown executor {args.executor!r}; choose local or ray")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.address and args.executor != "ray":
        raise ValueError("--address joins a Ray cluster: it needs --executor ray")
    _check_step_args(args)
    rule = StepRule(tokens_per_step=args.tokens_per_step, context=args.context, shuffle=args.shuffle,
                    delay_steps=args.delay_steps, outlier_factor=args.outlier_factor)
    lengths = read_documents(args.data, args.column, args.tokenizer)
    lat = _setup(args)
    opts = PlanOptions(model=lat.model.to_dict(), cluster=lat.cluster.to_dict(), table=args.table,
                       calibration=args.calibration, recompute=lat.recompute,
                       overlap_param_gather=lat.overlap_param_gather,
                       backend=args.backend, time_limit_s=args.time_limit, work_limit=args.work_limit,
                       threads=args.threads, seed=args.seed, objective=args.objective,
                       round_lengths=args.round_lengths, pp_degrees=_pp_degrees(args))
    with Progress(*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as bar:  # a pipe gets no bar
        task = bar.add_task("planning steps", total=None)
        run = plan_dataset(lengths, rule, opts, args.out, executor=args.executor, workers=args.workers,
                           address=args.address, progress=lambda k, n: bar.update(task, completed=k, total=n))
    out.print(f"{plural(len(run.steps), 'step')} ({run.done_before} already planned, {run.planned} now) in {args.out}; "
              f"summary in {args.out}/summary.md")
    summary = (Path(args.out) / "summary.md").read_text().splitlines()
    for line in summary[4:9]:
        out.print(line, markup=False)
    return 0


def _check_step_args(args) -> None:
    """plan-dataset's step options, named as the user typed them (StepRule names its fields)."""
    for option, value, least in (("--tokens-per-step", args.tokens_per_step, 1), ("--context", args.context, 1),
                                 ("--delay-steps", args.delay_steps, 0)):
        if value < least:
            raise ValueError(f"{option} must be >= {least}, got {value}")
    if args.shuffle is not None and args.shuffle < 0:
        raise ValueError(f"--shuffle takes a seed >= 0, got {args.shuffle}")
    if not args.outlier_factor > 1:
        raise ValueError(f"--outlier-factor must be > 1, got {args.outlier_factor}")


def cmd_profile(args) -> int:
    check_writable(args.out)
    model = _model(args)
    try:
        import torch  # noqa: F401

        from .profile import profile, write_calibration
    except ImportError:
        raise ValueError("profiling needs PyTorch: pip install 'hetero-sched[torch]'") from None
    start = time.monotonic()
    doc = profile(model, device=args.device, quick=args.quick)
    write_calibration(doc, args.out)
    g, a = doc["gemm"], doc["attention"]
    out.print(f"{doc['device']['name']} ({doc['device']['kind']}), {doc['software']['attention']}: GEMM peak "
              f"{g['peak_tflops']:.1f} TFLOP/s (m½ {g['m_half']:.0f}, floor {g['floor_ms'] * 1e3:.1f} us), attention "
              f"forward {min(a['fwd_tflops']):.2f}-{max(a['fwd_tflops']):.2f} TFLOP/s, backward rate "
              f"{a['bwd_rate']:.2f}; {len(doc['gemm']['measurements'])} GEMM, "
              f"{len(doc['pointwise']['measurements'])} pointwise, {len(a['measurements'])} attention timings "
              f"in {time.monotonic() - start:.0f} s")
    out.print(doc["nccl_note"])
    err.print(f"calibration written to {args.out}")
    return 0


def cmd_check_model(args) -> int:
    from .workload import parse_length

    check_writable(args.out)
    model = _model(args)
    lengths = [parse_length(x) for x in args.lengths.split(",")] if args.lengths else None
    save = None
    if args.calibration is None:
        out_path = Path(args.out)
        save = args.save_calibration or str(out_path.with_name(out_path.stem + ".calibration.json"))
        check_writable(save)
    try:
        import torch  # noqa: F401

        from .check_model import check_model, write_check
    except ImportError:
        raise ValueError("check-model needs PyTorch: pip install 'hetero-sched[torch]'") from None
    result = check_model(model, calibration=args.calibration, device=args.device, quick=args.quick,
                         recompute=args.recompute, lengths=lengths, gpus=args.gpus, threads=args.threads,
                         calibration_out=save, capacity=not args.no_capacity,
                         progress=lambda msg: err.print(msg, markup=False))
    write_check(result, args.out)
    _print_check(result)
    if result.calibration["made_here"]:
        err.print(f"calibration written to {result.calibration['path']}")
    err.print(f"check written to {args.out}")
    return 0


def _print_check(result) -> None:
    cuda = result.device["kind"] == "cuda"
    shape = result.shape
    out.print(f"{result.model.name} decoder layers ({shape.hidden} wide, {shape.heads}/{shape.kv_heads} heads, ffn "
              f"{shape.ffn}) on {result.device['name']} ({result.device['kind']}, {result.software['attention']}), "
              f"TP1 CP1: ms per layer, forward + recompute ({result.recompute}) + backward", markup=False)
    t = Table()
    for col in ["tokens", "predicted ms", "measured ms", "error"] + (["predicted GB", "measured GB"] if cuda else []):
        t.add_column(col, justify="right")
    for r in result.rows:
        cells = [f"{r.length:,}", f"{r.predicted_ms:,.2f}",
                 "out of memory" if r.measured_ms is None else f"{r.measured_ms:,.2f}",
                 "-" if r.error is None else f"{r.error:+.1%}"]
        if cuda:
            cells += ["-" if r.predicted_gb is None else f"{r.predicted_gb:.1f}",
                      "-" if r.measured_gb is None else f"{r.measured_gb:.1f}"]
        t.add_row(*cells)
    out.print(t)
    med = result.median_abs_error
    sha = result.calibration["sha256"][:12]
    out.print(f"median |error| {'-' if med is None else f'{med:.1%}'} over {len(result.rows)} lengths "
              f"(layers {result.layers[0]} and {result.layers[1]} differenced); calibration {sha}… "
              f"({'profiled here' if result.calibration['made_here'] else result.calibration['path']}); "
              f"{result.wall_s:.0f} s")
    cap = result.capacity
    if cap:
        verdict = (f"fits: peak {cap['measured_gb']:.1f} GB (model {cap['predicted_gb']:.1f} GB), "
                   f"{cap['measured_ms']:,.0f} ms (model {cap['predicted_ms']:,.0f} ms)") if cap["fits"] \
            else f"does NOT fit ({cap.get('oom', 'out of memory')}); model {cap['predicted_gb']:.1f} GB"
        out.print(f"max_tokens(1, 1) = {cap['tokens']:,} tokens through all {cap['layers']} layers: {verdict}")
    for note in result.notes:
        out.print(f"note: {note}", markup=False)


# ---- parser and entry point -----------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """Bad arguments: one line on stderr and exit status 2, as every other bad input (argparse also
    prints the usage; `--help` shows it)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hetero-sched", description="Plan heterogeneous TP/CP/PP groups for a "
                "long-context training step and compare with WLB-LLM.")
    p.add_argument("--version", action="version", version=f"hetero-sched {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("solve", help="plan one batch and print the groups")
    _add_batch(s), _add_cluster(s), _add_solver(s)
    s.add_argument("--out", help="write the plan as JSON here (atomically)")
    s.add_argument("--json", action="store_true", help="print the plan JSON instead of the table")
    s.set_defaults(func=cmd_solve)
    c = sub.add_parser("compare", help="every homogeneous WLB-LLM config, Megatron and hetero-sched")
    _add_batch(c), _add_cluster(c), _add_solver(c)
    c.add_argument("--seed-cases", action="store_true", help="the seed document's three batches")
    c.add_argument("--json", action="store_true", help="print the rows and the plan as JSON instead of the table")
    c.add_argument("--csv", help="also write the rows as CSV here (atomically)")
    c.set_defaults(func=cmd_compare)
    w = sub.add_parser("sweep", help="time limits x backends: CSV and an anytime plot")
    _add_batch(w), _add_cluster(w)
    w.add_argument("--time-limits", default="0.1,0.3,1,3,10",
                   help="comma-separated time limits in seconds, one run each (default 0.1,0.3,1,3,10)")
    w.add_argument("--backends", default="cpsat,highs,cbc",
                   help=f"comma-separated backends, each run at every time limit (default cpsat,highs,cbc; "
                        f"known: {', '.join(BACKENDS)})")
    w.add_argument("--repeat", type=int, default=1, help="runs per (backend, limit), seeds 0..repeat-1")
    w.add_argument("--threads", type=int, default=2, help="the backends' threads (default 2)")
    w.add_argument("--out", default="sweep.csv", help="CSV, resumed when it exists (default sweep.csv)")
    w.add_argument("--png", help="anytime plot (needs the plot extra: pip install 'hetero-sched[plot]')")
    w.add_argument("--objective", default="step", choices=["step", "makespan"], help="what each run minimises")
    _add_pp_degrees(w)
    w.set_defaults(func=cmd_sweep)
    v = sub.add_parser("validate", help="re-check a plan JSON: 0 valid, 1 invalid, 2 unreadable")
    v.add_argument("plan")
    _add_plan_model(v)
    v.set_defaults(func=cmd_validate)
    sh = sub.add_parser("show", help="a plan JSON as a table and a Gantt chart")
    sh.add_argument("plan")
    sh.add_argument("--png", help="write a Gantt chart here: .png, .svg or .pdf by extension (plot extra)")
    _add_plan_model(sh)
    sh.set_defaults(func=cmd_show)
    r = sub.add_parser("run", help="execute a plan: one step of a tiny Llama on local gloo workers (torch extra)")
    r.add_argument("plan")
    r.add_argument("--nproc", type=int, help="processes to spawn (default and only valid value: the plan's GPUs)")
    r.add_argument("--max-tokens", type=int, default=256, help="tokens per stand-in document (default 256)")
    r.add_argument("--seed", type=int, default=0, help="model and token seed")
    r.add_argument("--timeout", type=float, default=120, help="seconds before a stuck collective fails (default 120)")
    _add_plan_model(r)
    r.set_defaults(func=cmd_run)
    d = sub.add_parser("plan-dataset", help="plan every step of a dataset (process pool or Ray) into plans.jsonl")
    d.add_argument("data", help="lengths (.parquet .jsonl .csv .txt .json) or, with --tokenizer, text (.parquet .jsonl)")
    d.add_argument("--column", help="the length column, or the text column with --tokenizer")
    d.add_argument("--tokenizer", help="a Hugging Face tokenizer.json to count the tokens of a text column")
    d.add_argument("--tokens-per-step", type=int, required=True, help="tokens per step (documents packed in order)")
    d.add_argument("--context", type=int, default=131072, help="documents are truncated here (default 131072)")
    d.add_argument("--shuffle", type=int, metavar="SEED", help="shuffle the documents with this seed")
    d.add_argument("--delay-steps", type=int, default=0, help="outliers may wait up to this many steps (default 0)")
    d.add_argument("--outlier-factor", type=float, default=4.0,
                   help="an outlier is longer than this many times the mean document (default 4)")
    d.add_argument("--executor", default="local", help="local (process pool, default) or ray")
    d.add_argument("--workers", type=int, default=1, help="worker processes or Ray CPUs (default 1)")
    d.add_argument("--address", help="a running Ray cluster to join (--executor ray)")
    d.add_argument("--out", required=True, help="output folder (resumed when it holds this run's plans)")
    _add_cluster(d), _add_solver(d)
    d.set_defaults(func=cmd_plan_dataset, threads=1)
    pr = sub.add_parser("profile", help="time this GPU's kernels and write a calibration file (torch extra)")
    pr.add_argument("--model", help=f"model preset whose shapes are timed (default {DEFAULT_MODEL})")
    pr.add_argument("--hf-config", help="Hugging Face config.json instead of --model")
    pr.add_argument("--out", default="calibration.json", help="calibration file to write (default calibration.json)")
    pr.add_argument("--device", default="cuda", help="cuda (default) or cpu (to exercise the code path)")
    pr.add_argument("--quick", action="store_true", help="a reduced sweep (under a minute on 2 CPU cores)")
    pr.set_defaults(func=cmd_profile)
    cm = sub.add_parser("check-model", help="the step model against real decoder layers on this device "
                        "(profiles first without --calibration; torch extra)")
    cm.add_argument("--model", help=f"model preset whose layers are timed (default {DEFAULT_MODEL})")
    cm.add_argument("--hf-config", help="Hugging Face config.json instead of --model")
    cm.add_argument("--calibration", help="calibration file from `hetero-sched profile` (default: profile now)")
    cm.add_argument("--save-calibration", help="where the calibration profiled here goes (default: beside --out, "
                    "OUT.calibration.json)")
    cm.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    cm.add_argument("--quick", action="store_true", help="widths / 8 and 128-1K tokens: the closed loop in under "
                    "a minute on 2 CPU cores")
    cm.add_argument("--recompute", default="full", choices=["full", "auto"],
                    help="what is timed and predicted: every layer recomputed (default here, unlike solve's auto: "
                         "it exercises the recompute pass at every length), or each length's least k")
    cm.add_argument("--lengths", help="tokens to time, comma-separated, K suffix allowed (default 1K-128K; "
                    "--quick 128-1K)")
    cm.add_argument("--gpus", type=int, default=8, help="cluster size whose ZeRO-1 optimizer shard the memory "
                    "figures include (default 8)")
    cm.add_argument("--threads", type=int, help="CPU threads (default 1: steadier on a shared machine)")
    cm.add_argument("--no-capacity", action="store_true", help="skip the max_tokens(1, 1) micro-batch through "
                    "every layer (CUDA)")
    cm.add_argument("--out", required=True, help="check.json to write (atomically)")
    cm.set_defaults(func=cmd_check_model)
    lt = sub.add_parser("latency", help="the step model's table for every (TP, CP), at one PP degree")
    _add_cluster(lt)
    lt.add_argument("--pp", type=int, default=1, help="pipeline stages of every group in the table (default 1)")
    lt.add_argument("--at", help="lengths to price, comma-separated, K/M suffixes allowed (default 1K,8K,32K,128K)")
    lt.add_argument("--max-cp", type=int, default=8, help="list CP degrees up to this (default 8)")
    lt.add_argument("--csv", help="also write the table as CSV here")
    lt.set_defaults(func=cmd_latency)
    return p


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C always interrupts, even when started from a shell that ignores SIGINT for background jobs
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:
        err.print(f"hetero-sched: error: {exc}", markup=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err.print("hetero-sched: interrupted; nothing half-written")
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
