"""torchrun entry: `torchrun --nproc-per-node 8 -m hetero_sched.runtime plan.json` runs one step of the tiny
model on demo tokens (NCCL when CUDA is there, gloo otherwise) and prints the per-group report on rank 0."""
from __future__ import annotations

import argparse
import json
import sys

import torch.distributed as dist

from .launch import demo_step, from_environment


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hetero_sched.runtime", description=__doc__)
    p.add_argument("plan")
    p.add_argument("--max-tokens", type=int, default=256, help="tokens per demo document (default 256)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    with open(args.plan) as fh:
        text = fh.read()
    rank = from_environment()
    try:
        report = demo_step(rank, text, args.max_tokens, args.seed, None)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
