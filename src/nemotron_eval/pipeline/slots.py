"""How many of a model's tasks run their harness at once against its deployment.

Each harness process costs CPU of its own (importing lm-eval, loading and formatting its task: ~10 s of a core),
and on a CPU deployment every core it takes is one the model server does not get. So the evaluate step of each
task takes one of N slots before it starts its harness: an exclusive lock on one of `run/{model}/slots/<i>.lock`.
The locks are the kernel's (flock): a killed task's slot is free at once, nothing is left to clean up.

N is `run.tasks_at_once` when set, else what the deployment type says for this machine's cores (a GPU deployment:
all tasks at once; the CPU server: see `deploy.local.Local.tasks_at_once`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from nemotron_eval.core.errors import UserError


def available_cores() -> int:
    """The cores this process may run on (its affinity: what a Slurm allocation or taskset gives it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def task_slot(folder: Path, limit: int | None, *, gone: Callable[[], str | None], poll_s: float = 0.5,
              waiting: Callable[[], None] = lambda: None) -> Iterator[int | None]:
    """Hold one of `limit` slots in `folder` while the block runs (None: no limit, nothing is locked); yields
    its number. `gone()` says why waiting is pointless (the deployment stopped) and ends the wait with that
    reason; `waiting()` is called once when every slot is taken."""
    if limit is None:
        yield None
        return
    folder.mkdir(parents=True, exist_ok=True)
    said = False
    while True:
        for i in range(limit):
            fd = os.open(folder / f"{i}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield i
            finally:
                os.close(fd)  # closing releases the lock
            return
        reason = gone()
        if reason:
            raise UserError(f"stopped while waiting for a task slot: {reason}")
        if not said:
            waiting()
            said = True
        time.sleep(poll_s)
