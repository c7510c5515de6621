"""Executors: where the pipeline's jobs run, one module each (`local`, `slurm`), registered by name; see
`base` for what an executor knows and how to add one. Every module of this package but `base` is imported
here, so that a new executor's module registers itself."""

from __future__ import annotations

import importlib
import pkgutil

from nemotron_eval.executors.base import (
    Executor, for_execution, for_profile, get, names, profile_executor, register, remote_names, schema_rules,
)  # fmt: skip

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base" and not _module.ispkg:  # remote/ (NeMo-Run) is imported by who uses it
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Executor", "for_execution", "for_profile", "get", "names", "profile_executor", "register", "remote_names",
    "schema_rules",
]  # fmt: skip
