"""Run a plan in PyTorch (optional extra `torch`): rank views, process groups, a tensor-, context- and
pipeline-parallel TinyLlama and one gradient-exact step. The planner core never imports this package."""
from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("hetero_sched.runtime needs PyTorch: pip install 'hetero-sched[torch]'") from exc

from .model import TinyConfig, TinyLlama, reference_loss
from .parallel import RankGroups, StepGrads, init_groups, run_step
from .view import RankView, pipeline_schedule, rank_plan, zigzag_chunks

__all__ = ["RankGroups", "RankView", "StepGrads", "TinyConfig", "TinyLlama", "init_groups",
           "pipeline_schedule", "rank_plan", "reference_loss", "run_step", "zigzag_chunks"]
