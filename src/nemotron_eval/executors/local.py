"""The local executor: every step runs on this machine, under Snakemake's own scheduler (profiles/local)."""

from __future__ import annotations

from typing import ClassVar

from nemotron_eval.executors.base import Executor, register


@register
class Local(Executor):
    """No resources to ask for, nothing to check, the deployment on this host; pyxis (an srun plugin) is not
    available here."""

    name = "local"
    runners: ClassVar[tuple[str, ...]] = ("enroot", "apptainer", "none")
