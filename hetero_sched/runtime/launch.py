"""Starting ranks: `spawn` (local gloo workers, used by `hetero-sched run` and the tests) and
`from_environment` (torchrun: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; NCCL when CUDA is there)."""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import signal
import socket
import threading
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..plan import Plan
from ..planfile import MAX_TIMEOUT_S
from .model import TinyConfig, TinyLlama
from .parallel import init_groups, run_step

DEFAULT_TIMEOUT_S = 120  # collectives that wait longer fail with torch's timeout message instead of hanging


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(worker, nproc: int, *args, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Run worker(rank, *args) in nproc processes joined by a gloo process group on this machine. Ctrl-C
    stops them all without a word from any of them and raises KeyboardInterrupt here."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise ValueError(f"timeout_s must be > 0 and <= {MAX_TIMEOUT_S:.0f}, got {timeout_s!r}")
    port = free_port()
    ctx = _start(nproc, (worker, nproc, port, timeout_s, args))
    try:
        while not ctx.join():
            pass
    except KeyboardInterrupt:
        _stop(ctx)
        raise
    except mp.ProcessExitedException as exc:
        if exc.signal_name == "SIGINT":  # Ctrl-C reached a worker before this process noticed it
            _stop(ctx)
            raise KeyboardInterrupt from None
        raise


def _start(nproc: int, args: tuple):
    """Start the workers with SIGINT ignored (inherited across exec): a Ctrl-C while they import torch
    would otherwise print a KeyboardInterrupt traceback from each. _entry restores the default action."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        return mp.start_processes(_entry, args=args, nprocs=nproc, join=False, start_method="spawn")
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


def _stop(ctx) -> None:
    for p in ctx.processes:
        if p.is_alive():
            p.terminate()
    for p in ctx.processes:
        p.join()


def _entry(rank: int, worker, nproc: int, port: int, timeout_s: float, args) -> None:
    # Ctrl-C (and the parent's death, which torch turns into SIGINT) ends a worker at once and silently
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=nproc, timeout=dt.timedelta(seconds=timeout_s))
    try:
        worker(rank, *args)
    finally:
        dist.destroy_process_group()


def from_environment(timeout_s: float = DEFAULT_TIMEOUT_S) -> int:
    """Join the process group torchrun describes (NCCL on this rank's GPU when CUDA is there); returns
    this rank."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=dt.timedelta(seconds=timeout_s))
    return dist.get_rank()


def device() -> torch.device:
    """Where this rank computes: its GPU under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def demo_tokens(plan: Plan, max_tokens: int, seed: int, vocab: int) -> list[torch.Tensor]:
    """Random documents standing in for the plan's sequences: each min(length, max_tokens) tokens, at
    least 2·cp of its group (CPU runs cannot afford the plan's real lengths)."""
    cp_of = {i: g.cp for g in plan.groups for i in g.sequence_ids}
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(vocab, (max(2 * cp_of[i], min(n, max_tokens)),), generator=gen)
            for i, n in enumerate(plan.lengths)]


def demo_config(plan: Plan) -> TinyConfig:
    """The tiny model a demo step runs: as many blocks as the least common multiple of TinyConfig's and of
    every group's stage count (each stage holds an even share of the blocks)."""
    return TinyConfig(layers=math.lcm(TinyConfig().layers, *(g.pp for g in plan.groups)))


def demo_step(rank: int, plan_json: str, max_tokens: int, seed: int, out_path: str | None) -> dict:
    """One step of the tiny model on demo tokens; rank 0 writes (and returns) the per-group report."""
    plan = Plan.from_json(plan_json)
    torch.manual_seed(seed)
    model = TinyLlama(demo_config(plan)).to(device())
    tokens = [t.to(device()) for t in demo_tokens(plan, max_tokens, seed, model.config.vocab)]
    groups = init_groups(plan)
    dist.barrier()
    start = time.perf_counter()
    grads = run_step(plan, model, tokens, groups)
    wall = time.perf_counter() - start
    mine = {"rank": rank, "group": groups.view.group, "seconds": grads.seconds, "sync": grads.sync_seconds}
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    # the rank that finished computing last waits least: its sync time is the synchronisation itself
    report = {"loss": grads.loss, "wall_s": wall, "sync_s": min(r["sync"] for r in everyone), "groups": []}
    for k, g in enumerate(plan.groups):
        secs = [r["seconds"] for r in everyone if r["group"] == k]
        report["groups"].append({"group": k, "tp": g.tp, "cp": g.cp, "pp": g.pp,
                                 "sequences": len(g.sequence_ids),
                                 "tokens": int(sum(len(tokens[i]) for i in g.sequence_ids)),
                                 "seconds": max(secs)})
    if rank == 0 and out_path:
        with open(out_path, "w") as fh:
            json.dump(report, fh)
    return report
