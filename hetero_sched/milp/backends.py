"""Backends behind one interface: CP-SAT (OR-Tools), HiGHS (highspy), CBC (PuLP).

Each takes a MilpModel, a time limit, threads, a seed, a relative gap and a hint, and returns the
values it found (or none), and a lower bound that holds for the TRUE costs in ms."""
from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .formulation import MilpModel

BACKENDS = ("cpsat", "highs", "cbc")
SENSE_TAG = {"==": "e", ">=": "l", "<=": "u"}  # suffix of a row's name in the CBC model


@dataclass(kw_only=True, slots=True)
class BackendResult:
    value_of: Callable[[int], float] | None  # None: no incumbent
    bound_ms: float
    proven_optimal: bool
    status: str  # the solver's own words


# Model-building throughput, nonzeros per second, measured on the 2-core machine of the benchmarks
# (24 GPUs x 256 sequences, 340K nonzeros): CP-SAT 250K/s, HiGHS 150K/s, CBC through PuLP 25K/s
# (PuLP expression building, MPS writing and CBC's root preprocessing, which ignores its time limit).
BUILD_NNZ_PER_S = {"cpsat": 250_000, "highs": 150_000, "cbc": 25_000}
BUILD_SHARE = 0.5  # a model whose estimated build takes more than this share of the time left is not built


def build_seconds(name: str, m: MilpModel) -> float:
    """Estimated seconds to hand the model to the backend (see BUILD_NNZ_PER_S)."""
    return sum(len(row.idx) for row in m.rows) / BUILD_NNZ_PER_S[name]


class BuildTimeout(Exception):
    """The time limit ran out while the model was being handed to the backend."""


def run_backend(name: str, m: MilpModel, *, time_limit_s: float, threads: int, seed: int, rel_gap: float,
                hint: dict[int, float], deterministic_limit: float | None = None) -> BackendResult:
    """Build and solve; the time limit covers both (BuildTimeout when building alone exhausts it)."""
    import time

    runner = {"cpsat": _cpsat, "highs": _highs, "cbc": _cbc}.get(name)
    if runner is None:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    deadline = time.monotonic() + time_limit_s if deterministic_limit is None else float("inf")
    return runner(m, deadline, max(time_limit_s, 0.05), threads, seed, rel_gap, hint, deterministic_limit)


def _rows(m: MilpModel, deadline: float):
    """The model's rows, checking the deadline every 2,000 rows."""
    import time

    for r, row in enumerate(m.rows):
        if r % 2000 == 0 and time.monotonic() > deadline:
            raise BuildTimeout(f"the time limit ran out after building {r:,} of {len(m.rows):,} rows")
        yield r, row


def _left(deadline: float, fallback: float) -> float:
    """Seconds the backend may still run. Under a deterministic work limit (deadline = inf) the clock
    must not decide anything, or the plan would depend on the machine's load: no wall-clock limit."""
    import time

    return 1e7 if deadline == float("inf") else max(0.05, deadline - time.monotonic())


# ---- CP-SAT -----------------------------------------------------------------------------------------
def _cpsat(m, deadline, time_limit_s, threads, seed, rel_gap, hint, det_limit) -> BackendResult:
    from ortools.sat.python import cp_model

    # Integer costs: floor(ms / unit). Every true load ≥ unit × its integer load, so a bound proven on
    # the floored costs, times unit, is a valid bound on the true makespan; a group of k sequences loses
    # at most (k+1)·unit = (k+1)·2^-24 of the incumbent to flooring. Finer units are NOT safe: with
    # 2^30 (coefficients near 1e10) CP-SAT 9.15 returned a wrong OPTIMAL on a fuzzed case (bound 9 %
    # above the exhaustive optimum); 2^24 keeps coefficients below ~2e8 (see tests/solvers).
    unit = max(m.ub[m.t_var], 1e-9) / 2 ** 24
    model = cp_model.CpModel()
    xs = []
    for v in range(m.num_vars):
        if v == m.t_var:
            lo, hi = math.floor(m.lb[v] / unit), math.ceil(m.ub[v] / unit)
        else:
            lo, hi = int(m.lb[v]), int(m.ub[v])
        xs.append(model.NewIntVar(lo, hi, m.names[v]))
    for _, row in _rows(m, deadline):
        coefs = [(row.t_coef if v == m.t_var else _scaled(a, unit)) if row.timed else int(a)
                 for v, a in zip(row.idx, row.coef)]
        expr = sum(c * xs[v] for v, c in zip(row.idx, coefs))
        for sense, rhs in _senses(row):  # integer rows: round the bounds inwards
            rhs = math.ceil(rhs) if sense == ">=" else math.floor(rhs) if sense == "<=" else int(rhs)
            model.Add(_compare(expr, sense, rhs))
    model.Minimize(xs[m.t_var])
    for v, val in hint.items():
        model.AddHint(xs[v], round(val / unit) if v == m.t_var else round(val))
    solver = new_cpsat(_left(deadline, time_limit_s), threads, seed)
    p = solver.parameters
    p.relative_gap_limit = rel_gap
    if det_limit is not None:
        p.max_deterministic_time = det_limit
    code = solver.Solve(model)
    name = solver.StatusName(code)
    if code in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return BackendResult(value_of=lambda v: solver.Value(xs[v]), bound_ms=solver.BestObjectiveBound() * unit,
                             proven_optimal=False, status=name)
    if code == cp_model.INFEASIBLE:
        return BackendResult(value_of=None, bound_ms=m.ub[m.t_var], proven_optimal=False, status=name)
    return BackendResult(value_of=None, bound_ms=0.0, proven_optimal=False, status=name)  # UNKNOWN, invalid


@contextlib.contextmanager
def _noting_sigint():
    """Record whether SIGINT arrived (into the yielded list) while still delivering it as before."""
    seen: list = []
    previous = signal.getsignal(signal.SIGINT)

    def note(signum, frame):
        seen.append(signum)
        if callable(previous):
            previous(signum, frame)

    if threading.current_thread() is not threading.main_thread():
        yield seen  # signal handlers can only be set from the main thread
        return
    signal.signal(signal.SIGINT, note)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _quiet_stdout():
    """Silence writes to the process's stdout file descriptor (C libraries bypass sys.stdout)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _senses(row) -> list[tuple[str, float]]:
    """A row lb ≤ expr ≤ ub as the comparisons it needs: '==' when lb = ub, else '>=' and/or '<='."""
    if row.lb == row.ub:
        return [("==", row.lb)]
    return [(s, b) for s, b in ((">=", row.lb), ("<=", row.ub)) if math.isfinite(b)]


def _compare(expr, sense: str, rhs):
    return expr == rhs if sense == "==" else expr >= rhs if sense == ">=" else expr <= rhs


def _scaled(cost_ms: float, unit: float) -> int:
    """A cost in integer units, rounded toward zero: −a maps to −floor(a/unit), so rows that compare
    two loads stay antisymmetric and every integer load is ≤ the true load / unit."""
    return int(math.copysign(math.floor(abs(cost_ms) / unit), cost_ms))


# ---- HiGHS (highspy directly: PuLP's HiGHS API offers no MIP start) -----------------------------------
_HIGHS_THREADS: int | None = None  # the thread count HiGHS's global scheduler was started with


def new_cpsat(time_limit_s: float, threads: int, seed: int):
    """A CP-SAT solver with its time limit, workers and seed. Ctrl-C is left to Python: CP-SAT's own SIGINT
    handler (catch_sigint_signal, on by default) leaves SIGINT at its default action after Solve, so a
    later Ctrl-C would kill the process instead of raising KeyboardInterrupt; with it off,
    KeyboardInterrupt is raised as soon as Solve returns (within the limit)."""
    from ortools.sat.python import cp_model

    solver = cp_model.CpSolver()
    p = solver.parameters
    p.max_time_in_seconds = time_limit_s
    p.num_workers = max(1, threads)
    p.random_seed = seed
    p.catch_sigint_signal = False
    return solver


def new_highs(threads: int):
    """A silent highspy.Highs on `threads` threads. HiGHS keeps one global thread scheduler per process;
    a run asking another thread count fails ("Not Set") unless the scheduler is reset first (HiGHS issue
    ERGO-Code/HiGHS#715)."""
    import highspy

    global _HIGHS_THREADS
    with _quiet_stdout():  # HiGHS prints a banner on construction, before any option can be set
        h = highspy.Highs()
    h.silent()
    if _HIGHS_THREADS not in (None, max(1, threads)):
        highspy.Highs.resetGlobalScheduler(True)
    _HIGHS_THREADS = max(1, threads)
    h.setOptionValue("threads", _HIGHS_THREADS)
    return h


def _highs(m, deadline, time_limit_s, threads, seed, rel_gap, hint, det_limit) -> BackendResult:
    import highspy
    import numpy as np

    h = new_highs(threads)
    h.setOptionValue("time_limit", float(time_limit_s))
    h.setOptionValue("random_seed", int(seed))
    h.setOptionValue("mip_rel_gap", float(rel_gap))
    if det_limit is not None:
        h.setOptionValue("mip_max_nodes", int(det_limit))
    n = m.num_vars
    cost = np.zeros(n)
    cost[m.t_var] = 1.0
    h.addVars(n, np.array(m.lb, dtype=float), np.array(m.ub, dtype=float))
    h.changeColsCost(n, np.arange(n, dtype=np.int32), cost)
    integer = np.array([v for v in range(n) if v != m.t_var], dtype=np.int32)
    h.changeColsIntegrality(integer.size, integer, np.full(integer.size, highspy.HighsVarType.kInteger))
    for _, row in _rows(m, deadline):
        h.addRow(float(row.lb), float(row.ub), len(row.idx), np.array(row.idx, dtype=np.int32),
                 np.array(row.coef, dtype=float))
    if hint:
        sol = highspy.HighsSolution()
        sol.col_value = [float(hint.get(v, 0.0)) for v in range(n)]
        sol.value_valid = True
        h.setSolution(sol)
    h.setOptionValue("time_limit", float(_left(deadline, time_limit_s)))
    h.HandleKeyboardInterrupt = True  # highspy cancels the solve on Ctrl-C (and swallows it) ...
    with _noting_sigint() as interrupted:
        h.run()
    if interrupted:
        raise KeyboardInterrupt  # ... so we pass the interrupt on
    status = h.getModelStatus()
    info = h.getInfo()
    # HiGHS proves bounds up to its tolerances: shave a relative 1e-9 to stay valid.
    bound = max(0.0, float(info.mip_dual_bound) * (1 - 1e-9)) if math.isfinite(info.mip_dual_bound) else 0.0
    has_sol = info.primal_solution_status == 2  # kSolutionStatusFeasible
    values = list(h.getSolution().col_value) if has_sol else None
    text = h.modelStatusToString(status)
    return BackendResult(value_of=(lambda v: values[v]) if values else None, bound_ms=bound,
                         proven_optimal=False, status=text)


# ---- CBC (through PuLP) ----------------------------------------------------------------------------
def _cbc(m, deadline, time_limit_s, threads, seed, rel_gap, hint, det_limit) -> BackendResult:
    import warnings

    import pulp

    warnings.filterwarnings("ignore", category=DeprecationWarning, module="pulp")  # PuLP 4 renames
    prob = pulp.LpProblem("hetero_sched", pulp.LpMinimize)
    xs = [pulp.LpVariable(f"v{v}", lowBound=m.lb[v], upBound=m.ub[v],
                          cat=pulp.LpContinuous if v == m.t_var else pulp.LpInteger) for v in range(m.num_vars)]
    prob += xs[m.t_var]
    for r, row in _rows(m, deadline):
        expr = pulp.lpSum(a * xs[v] for v, a in zip(row.idx, row.coef))
        for sense, rhs in _senses(row):
            prob += _compare(expr, sense, rhs), f"r{r}{SENSE_TAG[sense]}"
    for v, val in hint.items():
        xs[v].setInitialValue(val)
    fd, log = tempfile.mkstemp(suffix=".log")
    os.close(fd)
    options = [f"randomCbcSeed {max(1, seed)}"]
    if det_limit is not None:
        options.append(f"maxNodes {int(det_limit)}")
    try:
        solver = pulp.PULP_CBC_CMD(timeLimit=_left(deadline, time_limit_s), threads=max(1, threads), gapRel=rel_gap,
                                   warmStart=bool(hint), msg=False, logPath=log, options=options)
        prob.solve(solver)
        with open(log) as fh:
            text = fh.read()
    finally:
        os.unlink(log)
    # PuLP may say "Optimal" after a time limit: trust CBC's own result line and bound instead.
    result = re.search(r"Result - (.*)", text)
    words = result.group(1).strip() if result else pulp.LpStatus[prob.status]
    bound_match = re.search(r"Lower bound:\s*([-\d.eE+]+)", text)
    has_sol = prob.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible)
    bound = float(bound_match.group(1)) if bound_match else 0.0
    if words.startswith("Optimal solution found") and has_sol:
        bound = max(bound, pulp.value(prob.objective) * (1 - rel_gap))
    bound = max(0.0, bound * (1 - 1e-9))  # CBC's tolerances: shave to stay valid
    return BackendResult(value_of=(lambda v: xs[v].varValue or 0.0) if has_sol else None, bound_ms=bound,
                         proven_optimal=False, status=words)
