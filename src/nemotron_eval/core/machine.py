"""What this machine gives the process: the one place that counts its cores."""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may run on (its affinity: what a Slurm allocation or taskset gives it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
