"""Locate data files shipped inside the package (hetero_sched.models)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def model_data_path(gpu: str, filename: str) -> Path:
    """Path of hetero_sched/models/<gpu>/<filename> in the installed package."""
    path = Path(str(resources.files("hetero_sched.models").joinpath(gpu, filename)))
    if not path.is_file():
        raise ValueError(f"no data file {filename!r} for GPU {gpu!r} in the installed package")
    return path


def shipped_table_by_sha(gpu: str, sha256: str | None) -> Path | None:
    """The shipped profiled table whose SHA-256 is `sha256`, if any."""
    from .latency.base import file_sha256

    folder = Path(str(resources.files("hetero_sched.models").joinpath(gpu)))
    for path in sorted(folder.glob("*.csv")):
        if not path.name.startswith("nccl_") and file_sha256(path) == sha256:
            return path
    return None


def plan_schema() -> dict:
    """The published JSON Schema of plan files (schema_version 1)."""
    import json

    return json.loads(resources.files("hetero_sched").joinpath("schema/plan.schema.json").read_text())
