"""torchrun entry: `torchrun --nproc-per-node 8 -m hetero_sched.runtime plan.json` runs one step of the tiny
model on demo tokens (NCCL when CUDA is there, gloo otherwise) and prints the per-group report on rank 0.
The plan is checked as `hetero-sched run` checks it (readable, the published schema, valid, one GPU per
process) before any process group exists; bad input: one line from rank 0, exit status 2 on every rank."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

PROG = "python -m hetero_sched.runtime"
QUIET_RANK_WAIT_S = 10.0


class _BadInput(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line from rank 0, like every other bad input (argparse: usage on each)
        raise _BadInput(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("plan")
    p.add_argument("--max-tokens", type=int, default=256, help="tokens per demo document (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=120, help="seconds before a stuck collective fails (default 120)")
    p.add_argument("--table", help="the profiled table the plan was made with (when it is not shipped)")
    p.add_argument("--calibration", help="the calibration file the plan was made with")
    return p


def world_from_environment(env=os.environ) -> tuple[int, int]:
    """(rank, world size) as torchrun sets them; ValueError when this was not started by torchrun."""
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in env]
    if missing:
        raise ValueError(f"{_and(missing)} {'is' if len(missing) == 1 else 'are'} not set: start this with "
                         "torchrun --nproc-per-node N -m hetero_sched.runtime plan.json")
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    except ValueError:
        raise ValueError(f"RANK={env['RANK']!r} and WORLD_SIZE={env['WORLD_SIZE']!r} must be integers") from None
    if not 0 <= rank < world:
        raise ValueError(f"RANK {rank} is outside a world of {world}")
    return rank, world


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def checked_plan(args, world: int):
    """The plan of args.plan, checked as `hetero-sched run` checks it, for a world of `world` processes."""
    from ..planfile import check_run_options, check_runnable, read_plan, step_model_for

    check_run_options(args.max_tokens, args.timeout)
    plan = read_plan(args.plan)
    check_runnable(plan, world, step_model_for(plan, args.table, args.calibration), source=args.plan)
    return plan


def _rank_hint() -> int:
    """This process's rank as torchrun set it (0 when unset or unreadable: the process that speaks)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _say(rank: int, message: str) -> None:
    """Rank 0 says what is wrong. Every rank makes the same checks, so the others wait for torchrun to stop
    them once rank 0 has exited (had they exited first, torchrun would stop rank 0 before it spoke); one
    that is still there after QUIET_RANK_WAIT_S (its check failed alone: a file missing on its node) speaks."""
    if rank != 0:
        time.sleep(QUIET_RANK_WAIT_S)
    where = f"rank {rank}: " if rank != 0 else ""
    print(f"{PROG}: error: {where}{message}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rank = _rank_hint()
    try:
        args = _parser().parse_args(argv)
        rank, world = world_from_environment()
        plan = checked_plan(args, world)
    except (_BadInput, ValueError) as exc:
        _say(rank, str(exc))
        return 2
    except KeyboardInterrupt:
        _say(rank, "interrupted")
        return 130
    return _run(plan, args, rank)


def _run(plan, args, rank: int) -> int:
    """One step on the process group torchrun describes; a failure is one line from each rank it hit."""
    import torch.distributed as dist

    from .launch import demo_step, from_environment

    try:
        rank = from_environment(args.timeout)
        report = demo_step(rank, plan.to_json(), args.max_tokens, args.seed, None)
    except KeyboardInterrupt:
        _say(rank, "interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 — torch raises many types (DistBackendError, RuntimeError, ...)
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        print(f"{PROG}: rank {rank} failed: {lines[-1]}", file=sys.stderr, flush=True)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
