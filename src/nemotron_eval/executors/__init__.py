"""Executors: where the pipeline's jobs run, one module each (`local`, `slurm`), registered by name; see
`base` for what an executor knows and how to add one."""

from __future__ import annotations

from nemotron_eval.executors import local, slurm  # each registers itself
from nemotron_eval.executors.base import (
    Executor, for_execution, for_profile, get, names, profile_executor, register, remote_names,
)  # fmt: skip

__all__ = [
    "Executor", "for_execution", "for_profile", "get", "local", "names", "profile_executor", "register",
    "remote_names", "slurm",
]  # fmt: skip
