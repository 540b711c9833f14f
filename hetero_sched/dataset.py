"""A whole dataset: documents cut into steps, every step planned (process pool or Ray), plans.jsonl written
in step order, resumable; WLB-LLM's outlier delay across steps; AheadPlanner for planning during training.

Steps: documents in file order (or shuffled with a seed), truncated at the context, packed greedily into
steps of about `tokens_per_step` tokens (a step closes before the document that would overflow it; a
longer document gets a step of its own).

Outlier delay (WLB-LLM, Wang et al. OSDI'25, section 4: a multi-level queue holds very long documents
back so that they spread over steps instead of stalling one): a document longer than `outlier_factor`
times the mean document length is an outlier. Outliers wait in a queue; every step admits, oldest
first, those that have waited `delay_steps` steps, then others while the step's outlier tokens stay
under the dataset's outlier share of a step. Every document is trained exactly once; the delay of each
is reported. The same steps are planned by hetero-sched and priced for WLB-LLM and Megatron, so both
sides are compared with the same delay.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .latency import LatencyModel, latency_model
from .specs import Cluster, ModelSpec
from .workload import as_length, quote_value, read_values

PLANS = "plans.jsonl"
MANIFEST = "manifest.json"


# ---- documents and steps ------------------------------------------------------------------------------------
def read_documents(path, column: str | None = None, tokenizer: str | None = None) -> list[int]:
    """Token length of every row: a length column, or (with tokenizer, a Hugging Face tokenizer.json) the
    token count of a text column."""
    values = read_values(path, column)
    if not values:
        raise ValueError(f"{str(path)!r} holds no documents")
    if tokenizer is None:
        return [as_length(v, path, k) for k, v in enumerate(values)]
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ValueError("tokenising text needs the tokenizers package: pip install 'hetero-sched[dataset]'") from None
    try:
        tok = Tokenizer.from_file(str(tokenizer))
    except Exception as exc:  # noqa: BLE001 — the tokenizers library raises its own exception types
        raise ValueError(f"cannot load tokenizer {str(tokenizer)!r}: {exc}") from None
    bad = next((k for k, v in enumerate(values) if not isinstance(v, str)), None)
    if bad is not None:
        raise ValueError(f"{str(path)!r}: row {bad} of the text column is {quote_value(values[bad])}, not text")
    return [max(1, len(e.ids)) for e in tok.encode_batch(values)]


@dataclass(kw_only=True, frozen=True, slots=True)
class StepRule:
    tokens_per_step: int
    context: int
    shuffle: int | None = None
    delay_steps: int = 0
    outlier_factor: float = 4.0

    def __post_init__(self) -> None:
        for name in ("tokens_per_step", "context"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int) \
                    or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.delay_steps, int) or self.delay_steps < 0:
            raise ValueError(f"delay_steps must be a non-negative integer, got {self.delay_steps!r}")
        if self.shuffle is not None and (isinstance(self.shuffle, bool) or not isinstance(self.shuffle, int)
                                         or self.shuffle < 0):
            raise ValueError(f"shuffle must be a non-negative integer seed (or None), got {self.shuffle!r}")
        if not self.outlier_factor > 1:
            raise ValueError(f"outlier_factor must be > 1, got {self.outlier_factor!r}")


def make_steps(lengths: list[int], rule: StepRule) -> tuple[list[list[int]], dict[int, int]]:
    """Rows of each step (in the order they were admitted) and each row's delay in steps."""
    order = list(range(len(lengths)))
    if rule.shuffle is not None:
        np.random.default_rng(rule.shuffle).shuffle(order)
    size = [min(x, rule.context) for x in lengths]
    if rule.delay_steps == 0:
        return _pack(order, size, rule.tokens_per_step), dict.fromkeys(order, 0)
    mean = float(np.mean(size))
    outlier = {r for r in order if size[r] > rule.outlier_factor * mean}
    share = sum(size[r] for r in outlier) / max(1, sum(size)) * rule.tokens_per_step
    return _pack_with_delay(order, size, rule, outlier, share)


def _due(queue: deque, s: int, k: int) -> int:
    """Outliers step s must admit so that none waits more than k steps, spread evenly: for each arrival
    step c in the queue, the c-or-earlier arrivals over the k − (s − c) + 1 steps left to them."""
    need, count = 0, 0
    for i, (_, came) in enumerate(queue):
        count = i + 1
        if i + 1 < len(queue) and queue[i + 1][1] == came:
            continue
        need = max(need, -(-count // max(1, k - (s - came) + 1)))
    return need


def _pack(order: list[int], size: list[int], budget: int) -> list[list[int]]:
    steps, current, used = [], [], 0
    for r in order:
        if current and used + size[r] > budget:
            steps.append(current)
            current, used = [], 0
        current.append(r)
        used += size[r]
    return steps + ([current] if current else [])


@dataclass(kw_only=True, slots=True)
class _Step:
    index: int
    rows: list
    used: int = 0      # tokens
    outliers: int = 0  # outlier tokens

    def admit(self, r: int, came: int, tokens: int, is_outlier: bool, delay: dict) -> None:
        self.rows.append(r)
        delay[r] = self.index - came
        self.used += tokens
        self.outliers += tokens if is_outlier else 0


def _pack_with_delay(order, size, rule: StepRule, outlier: set, share: float):
    stream, queue = deque(order), deque()  # queue: (row, step it arrived in)
    steps: list[list[int]] = []
    delay: dict[int, int] = {}
    while stream or queue:
        step = _Step(index=len(steps), rows=[])
        # outliers due within the delay are spread evenly over the steps left before their deadline; then
        # others while the step's outlier tokens stay within the dataset's outlier share of a step
        due = _due(queue, step.index, rule.delay_steps)
        while queue:
            r, _ = queue[0]
            if stream:  # more documents to come: outliers take at most the step's outlier share
                fits = step.outliers + size[r] <= share
            else:  # only outliers left: fill steps by the token budget (at least one each)
                fits = not step.rows or step.used + size[r] <= rule.tokens_per_step
            if not (due > 0 or fits):
                break
            r, came = queue.popleft()
            step.admit(r, came, size[r], True, delay)
            due -= 1
        while stream:
            r = stream[0]
            if r in outlier:
                queue.append((stream.popleft(), step.index))
                if len(queue) == 1 and step.outliers + size[r] <= share:
                    step.admit(*queue.pop(), size[r], True, delay)
                continue
            if step.rows and step.used + size[r] > rule.tokens_per_step:
                break
            step.admit(stream.popleft(), step.index, size[r], False, delay)
        if step.rows:
            steps.append(step.rows)
    return steps, delay


# ---- planning one step ---------------------------------------------------------------------------------------
@dataclass(kw_only=True, frozen=True, slots=True)
class PlanOptions:
    """What `solve` needs, as plain data (travels to worker processes and Ray tasks)."""

    model: dict
    cluster: dict
    table: str | None = None
    calibration: str | None = None
    backend: str = "cpsat"
    time_limit_s: float = 10.0
    work_limit: float | None = None
    threads: int = 1
    seed: int = 0
    objective: str = "step"
    round_lengths: int | None = None
    pp_degrees: tuple | None = None
    recompute: str = "auto"
    overlap_param_gather: bool = True


_LAT_CACHE: dict = {}


def _lat(opts: PlanOptions) -> LatencyModel:
    key = (json.dumps(opts.model, sort_keys=True), json.dumps(opts.cluster, sort_keys=True), opts.table,
           opts.calibration, opts.recompute, opts.overlap_param_gather)
    if key not in _LAT_CACHE:
        _LAT_CACHE[key] = latency_model(ModelSpec.from_dict(opts.model), Cluster.from_dict(opts.cluster),
                                        table=opts.table, calibration=opts.calibration, recompute=opts.recompute,
                                        overlap_param_gather=opts.overlap_param_gather)
    return _LAT_CACHE[key]


def plan_step(step: int, lengths: list[int], rows: list[int], opts: PlanOptions) -> str:
    """One line of plans.jsonl: the plan's JSON with `step`, `documents`, and the Megatron baseline in
    extra (so the summary recomputes from the file alone)."""
    from .baselines.megatron import megatron_best
    from .milp.solve import solve

    lat = _lat(opts)
    plan = solve(lengths, lat.cluster, lat, backend=opts.backend, time_limit_s=opts.time_limit_s,
                 threads=opts.threads, seed=opts.seed, objective=opts.objective,
                 deterministic_limit=opts.work_limit, round_lengths=opts.round_lengths, pp_degrees=opts.pp_degrees)
    meg = megatron_best(lengths, lat.cluster, lat, objective=opts.objective, pp_degrees=opts.pp_degrees)
    plan.extra = {"megatron": {"tp": meg.baseline["tp"], "cp": meg.baseline["cp"], "pp": meg.baseline["pp"], "dp": meg.baseline["dp"],
                               "makespan_ms": meg.makespan_ms, "step_ms": meg.step_ms}}
    d = plan.to_dict()
    d["step"], d["documents"] = step, list(rows)
    return json.dumps(d, allow_nan=False)


def _plan_step_args(args) -> str:
    return plan_step(*args)


# ---- executors -------------------------------------------------------------------------------------------------
class LocalExecutor:
    """A process pool; results come back in step order."""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def map(self, tasks: list) -> Iterator[str]:
        if self.workers == 1:
            yield from (_plan_step_args(t) for t in tasks)
            return
        with ProcessPoolExecutor(self.workers) as pool:
            yield from pool.map(_plan_step_args, tasks, chunksize=1)

    def close(self) -> None:
        pass


class RayExecutor:
    """Ray tasks (`address` joins a running cluster; without it a local instance is started and shut down);
    results come back in step order, at most `window` tasks in flight."""

    def __init__(self, workers: int, address: str | None) -> None:
        try:
            import ray
        except ImportError:
            raise ValueError("--executor ray needs Ray: pip install 'hetero-sched[ray]'") from None
        self.ray = ray
        self.started = not ray.is_initialized()
        if address and address != "auto":
            _check_reachable(address)
        # Ray puts the driver's working directory first on its workers' path: run from a source checkout, they
        # would import its bare hetero_sched folder instead of the installed package. An empty working
        # directory keeps them on the installed one.
        self._empty = tempfile.mkdtemp(prefix="hetero-sched-ray-")
        env = {"working_dir": self._empty}
        try:
            if address:
                ray.init(address=address, log_to_driver=False, logging_level="ERROR", runtime_env=env)
            elif self.started:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                         runtime_env=env)
        except Exception as exc:  # noqa: BLE001 — Ray raises ConnectionError, RuntimeError, ... for bad addresses
            raise ValueError(f"cannot reach the Ray cluster at {address!r}: {str(exc).splitlines()[0]}") from None
        self.window = 4 * max(1, workers)
        self.remote = ray.remote(num_cpus=1)(_plan_step_args)

    def map(self, tasks: list) -> Iterator[str]:
        pending: deque = deque()
        it = iter(tasks)
        for t in it:
            pending.append(self.remote.remote(t))
            if len(pending) >= self.window:
                break
        while pending:
            yield self.ray.get(pending.popleft())
            nxt = next(it, None)
            if nxt is not None:
                pending.append(self.remote.remote(nxt))

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
        shutil.rmtree(self._empty, ignore_errors=True)


def _check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Fail fast (Ray itself retries for minutes) when host:port of a Ray address accepts no connection."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot reach the Ray cluster at {address!r}: {exc}") from None


# ---- the dataset run ----------------------------------------------------------------------------------------------
@dataclass(kw_only=True, slots=True)
class DatasetRun:
    out: Path
    steps: list[list[int]]
    delay: dict[int, int]
    done_before: int
    planned: int
    wall_s: float


def plan_dataset(lengths: list[int], rule: StepRule, opts: PlanOptions, out: str | Path, *,
                 executor: str = "local", workers: int = 1, address: str | None = None,
                 progress: Callable[[int, int], None] | None = None) -> DatasetRun:
    """Plan every step not yet in out/plans.jsonl, appending complete lines in step order; a folder made
    for other data or options is refused. Writes the summary (markdown + PNG) at the end."""
    start = time.monotonic()
    out = Path(out)
    _check_budget(lengths, rule)
    steps, delay = make_steps(lengths, rule)
    _check_fits(lengths, rule, opts)
    manifest = _manifest(lengths, rule, opts)
    _check_out(out)
    runner = RayExecutor(workers, address) if executor == "ray" else LocalExecutor(workers)
    planned = 0
    try:
        done = _prepare(out, manifest)
        tasks = [(k, [min(lengths[r], rule.context) for r in rows], rows, opts)
                 for k, rows in enumerate(steps)][done:]
        with open(out / PLANS, "ab") as fh:
            for line in runner.map(tasks):
                fh.write((line + "\n").encode())  # one write per complete line
                fh.flush()
                os.fsync(fh.fileno())
                planned += 1
                if progress:
                    progress(done + planned, len(steps))
    finally:
        runner.close()
    run = DatasetRun(out=out, steps=steps, delay=delay, done_before=done, planned=planned,
                     wall_s=time.monotonic() - start)
    write_summary(out, delay, run.wall_s, executor, workers)
    return run


def _check_budget(lengths, rule: StepRule) -> None:
    """Every step within its budget: a document longer than tokens_per_step after truncation would get a
    step of its own over it (make_steps' rule), so such a dataset is refused."""
    if rule.tokens_per_step >= rule.context:
        return
    row = next((k for k, x in enumerate(lengths) if min(x, rule.context) > rule.tokens_per_step), None)
    if row is not None:
        raise ValueError(f"--tokens-per-step {rule.tokens_per_step} is below --context {rule.context}, and document "
                         f"{row} has {min(lengths[row], rule.context)} tokens after truncation: its step would exceed "
                         f"the budget; use --context {rule.tokens_per_step} or a larger --tokens-per-step")


def _check_fits(lengths, rule: StepRule, opts: PlanOptions) -> None:
    from .milp.instance import largest_sequence

    lat = _lat(opts)
    cap = largest_sequence(lat, opts.pp_degrees)
    longest = min(max(lengths), rule.context)
    if longest > cap:
        row = next(k for k, x in enumerate(lengths) if min(x, rule.context) == longest)
        raise ValueError(f"document {row} has {longest} tokens (after truncation at --context {rule.context}); the "
                         f"largest any (TP, CP, PP) group of {lat.cluster.gpus} GPUs holds is {cap}")


def _manifest(lengths, rule: StepRule, opts: PlanOptions) -> dict:
    what = {"lengths": hashlib.sha256(np.asarray(lengths, dtype=np.int64).tobytes()).hexdigest(),
            "documents": len(lengths), "rule": asdict(rule), "options": asdict(opts)}
    return {"key": hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16], **what}


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file, not a folder")
    if not out.parent.is_dir():
        raise ValueError(f"cannot create {str(out)!r}: folder {str(out.parent)!r} does not exist")


def _prepare(out: Path, manifest: dict) -> int:
    """Create the folder, or check it was made for the same run; drop a torn last line; return the number
    of steps already planned."""
    from .io import write_atomic

    out.mkdir(exist_ok=True)
    known = out / MANIFEST
    if known.exists():
        old = json.loads(known.read_text())
        if old.get("key") != manifest["key"]:
            raise ValueError(f"{str(out)!r} holds plans of another dataset or other options (key {old.get('key')}, "
                             f"this run {manifest['key']}); use another --out")
    else:
        write_atomic(known, json.dumps(manifest, indent=1))
    plans = out / PLANS
    if not plans.exists():
        return 0
    data = plans.read_bytes()
    whole = data[:data.rfind(b"\n") + 1]
    if len(whole) != len(data):  # an interrupted write: keep the complete lines only
        with open(plans, "r+b") as fh:
            fh.truncate(len(whole))
    return whole.count(b"\n")


# ---- summary -------------------------------------------------------------------------------------------------
def read_plans(out: str | Path) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / PLANS).read_text().splitlines() if line]


def summarise(records: list[dict]) -> dict:
    """Totals recomputed from the plans file: predicted epoch time of hetero-sched, the best WLB-LLM and
    Megatron plans (each step on its own best homogeneous config), statuses, per-step speed-ups."""
    step = np.array([r["step_ms"] for r in records])
    wlb = np.array([r["baseline"]["step_ms"] for r in records])
    meg = np.array([r["extra"]["megatron"]["step_ms"] for r in records])
    statuses: dict[str, int] = {}
    for r in records:
        statuses[r["solver"]["status"]] = statuses.get(r["solver"]["status"], 0) + 1
    return {"steps": len(records), "documents": sum(len(r["documents"]) for r in records),
            "tokens": int(sum(sum(s["length"] for s in r["sequences"]) for r in records)),
            "epoch_ms": float(step.sum()), "wlb_epoch_ms": float(wlb.sum()), "megatron_epoch_ms": float(meg.sum()),
            "speedup_vs_wlb": float(wlb.sum() / step.sum()), "speedup_vs_megatron": float(meg.sum() / step.sum()),
            "per_step_speedup": (wlb / step).tolist(), "statuses": statuses,
            "solver_wall_s": float(sum(r["solver"]["wall_s"] for r in records))}


def write_summary(out: Path, delay: dict[int, int], wall_s: float, executor: str, workers: int) -> dict:
    from .io import write_atomic

    records = read_plans(out)
    if not records:
        return {}
    s = summarise(records)
    delays = np.array(list(delay.values()))
    q = np.percentile(s["per_step_speedup"], [0, 10, 50, 90, 100])
    lines = [f"# Dataset plan: {s['steps']} steps, {s['documents']:,} documents, {s['tokens']:,} tokens", "",
             (f"Objective {records[0]['solver']['objective']}; {records[0]['cluster']['gpus']} GPUs; executor "
             f"{executor} ({workers} workers); wall time of the last run {wall_s:.1f} s; solver time summed over "
             f"steps {s['solver_wall_s']:.1f} s."), "",
             "| plan | predicted epoch (s) | hetero-sched speed-up |", "|---|---|---|",
             f"| hetero-sched | {s['epoch_ms'] / 1e3:,.2f} | 1.00x |",
             f"| best WLB-LLM config of each step | {s['wlb_epoch_ms'] / 1e3:,.2f} | {s['speedup_vs_wlb']:.3f}x |",
             (f"| best Megatron config of each step | {s['megatron_epoch_ms'] / 1e3:,.2f} | "
             f"{s['speedup_vs_megatron']:.3f}x |"), "",
             (f"Per-step speed-up over WLB-LLM: min {q[0]:.3f}, p10 {q[1]:.3f}, median {q[2]:.3f}, p90 {q[3]:.3f}, "
             f"max {q[4]:.3f}."), "",
             "Solver statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(s["statuses"].items())) + ".", "",
             (f"Outlier delay (steps): max {int(delays.max())}, mean {delays.mean():.3f}, documents delayed "
             f"{int((delays > 0).sum())} of {delays.size}."), "", "![summary](summary.png)"]
    write_atomic(out / "summary.md", "\n".join(lines) + "\n")
    write_atomic(out / "summary.json", json.dumps({k: v for k, v in s.items() if k != "per_step_speedup"}, indent=1))
    try:
        write_atomic(out / "summary.png", _summary_png(s, delays))
    except ValueError:
        pass  # matplotlib missing: the markdown and JSON carry the numbers
    return s


def _summary_png(s: dict, delays: np.ndarray) -> bytes:
    from .viz import _png

    return _png(summary_figure(s, delays))


def summary_figure(s: dict, delays: np.ndarray):
    """Per-step speed-ups (steps are counted: integer ticks) and the outlier delays (a note instead of a
    histogram when no document waited)."""
    from matplotlib.ticker import MaxNLocator

    from .viz import _pyplot

    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    a1.hist(s["per_step_speedup"], bins=40)
    a1.axvline(1, color="black", lw=0.8)
    a1.yaxis.set_major_locator(MaxNLocator(integer=True))
    a1.set(xlabel="step speed-up over the best WLB-LLM config", ylabel="steps", title="per-step speed-up")
    a2.set(xlabel="delay (steps)", ylabel="documents", title="outlier delay")
    if delays.size and delays.max() > 0:
        a2.hist(delays, bins=range(int(delays.max()) + 2), align="left")
        a2.set(yscale="log")
        a2.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        a2.set(xticks=[], yticks=[])
        a2.text(0.5, 0.5, f"no document delayed ({delays.size:,} documents)", ha="center", va="center",
                transform=a2.transAxes)
    fig.tight_layout()
    return fig


# ---- planning ahead of training ---------------------------------------------------------------------------------
class AheadPlanner:
    """Iterate over plans of `steps` (lists of lengths) in order while up to `lookahead` later steps are
    solved in the background by `workers` processes. Waits at most `time_limit_s` (+ a grace for the
    process hop) for a step; a step that is late gets the best placed WLB-LLM plan instead, and
    `late` counts how often that happened."""

    GRACE_S = 2.0

    def __init__(self, steps, cluster: Cluster, lat: LatencyModel, *, lookahead: int = 4, workers: int = 1,
                 time_limit_s: float = 10.0, objective: str = "step", backend: str = "cpsat") -> None:
        if lookahead < 1 or workers < 1:
            raise ValueError(f"lookahead and workers must be >= 1, got {lookahead} and {workers}")
        if cluster != lat.cluster:
            raise ValueError(f"cluster {cluster} does not match the latency model's {lat.cluster}")
        self.steps, self.lat, self.lookahead = list(steps), lat, lookahead
        self.time_limit_s, self.objective = time_limit_s, objective
        self.opts = PlanOptions(model=lat.model.to_dict(), cluster=cluster.to_dict(), backend=backend,
                                time_limit_s=time_limit_s, objective=objective,
                                table=str(lat.table_path) if hasattr(lat, "table_path") else None,
                                calibration=lat.k.path)
        self.pool = ProcessPoolExecutor(workers)
        self.late = 0
        self.served = 0

    def __iter__(self):
        from .baselines.wlb_llm import wlb_llm_best
        from .plan import Plan

        futures: deque = deque()
        upcoming = iter(enumerate(self.steps))
        try:
            for k, lengths in upcoming:
                futures.append((lengths, self.pool.submit(plan_step, k, lengths, list(range(len(lengths))), self.opts)))
                if len(futures) >= self.lookahead:
                    break
            while futures:
                lengths, fut = futures.popleft()
                try:
                    plan = Plan.from_dict(json.loads(fut.result(timeout=self.time_limit_s + self.GRACE_S)))
                except TimeoutError:
                    fut.cancel()
                    self.late += 1
                    plan = wlb_llm_best(lengths, self.lat.cluster, self.lat, objective=self.objective)
                self.served += 1
                nxt = next(upcoming, None)
                if nxt is not None:
                    k, ls = nxt
                    futures.append((ls, self.pool.submit(plan_step, k, ls, list(range(len(ls))), self.opts)))
                yield plan
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)
