"""How many of a model's tasks run their harness at once against its deployment, and how many start at once.

A harness process costs CPU of its own, most of it while it starts, and memory while it runs (the figures, for
the CPU server: `deploy.local`). On a CPU deployment every core a harness takes is one the model server does not
get, and a server waiting for harnesses that are all starting is idle. So the evaluate step of each task takes
two slots in turn:

* a running slot, one of `run/{model}/slots/<i>.lock`, held until its harness ends: at most R harnesses at once.
  R is `run.tasks_at_once` when set, else what the deployment type says for this machine's cores
  (`deploy.types.Deployment.tasks_at_once`: a GPU deployment all tasks at once);
* a starting slot, one of `run/{model}/starting/<i>.lock`, held from the harness's start until the deployment's
  first answer to it (`Slot.release`; `pipeline.workflow.until_first_answer`): at most S harnesses start
  together, S being `run.tasks_starting_at_once` when set, else the deployment type's
  (`Deployment.harnesses_starting_at_once`). Later tasks start while earlier ones keep the server busy. A task
  that starts while its deployment still loads the model (`listening`: the CPU server takes requests then and
  answers them once loaded) takes no starting slot: nothing computes yet (`workflow.starting_limit`).

Waiting tasks take free slots in the config's order (`rank`; a marker in `<slots>/queue/` held while waiting): a
long task listed first starts first and the short ones fill in around it, instead of the longest running alone
at the end. The locks are the kernel's (flock): a killed task's slot and place are free at once, nothing is left
to clean up.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from nemotron_eval.core.errors import UserError


class Slot:
    """A slot held (`number`; None: no limit, nothing held) until `release()` or the end of its block."""

    def __init__(self, number: int | None, fd: int | None) -> None:
        self.number, self._fd = number, fd
        self._lock = threading.Lock()

    def release(self) -> None:
        """Free the slot now (any thread, any number of times)."""
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def task_slot(folder: Path, limit: int | None, *, gone: Callable[[], str | None], poll_s: float = 0.5,
              waiting: Callable[[], None] = lambda: None, rank: int = 0, settle_s: float = 0.0) -> Iterator[Slot]:
    """Hold one of `limit` slots in `folder` while the block runs or until it is released (None: no limit,
    nothing is locked). Waiting tasks take free slots in the order of their `rank` (the task's place in the
    config), each after `settle_s` (time for tasks started together to queue). `gone()` says why waiting is
    pointless (the deployment stopped) and ends the wait with that reason; `waiting()` is called once when the
    task has to wait."""
    if limit is None:
        yield Slot(None, None)
        return
    queue = folder / "queue"
    queue.mkdir(parents=True, exist_ok=True)
    mine = os.open(queue / f"{rank}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(mine, fcntl.LOCK_SH)  # in the queue (shared: tasks of the same rank queue together)
        time.sleep(settle_s)
        fd, i = _take(folder, limit, rank, gone, poll_s, waiting)
    finally:
        os.close(mine)  # out of the queue, whether a slot was taken or not
    slot = Slot(i, fd)
    try:
        yield slot
    finally:
        slot.release()


def _ahead(queue: Path, rank: int) -> bool:
    """Whether a task of a lower rank waits in `queue` (holds its marker)."""
    for marker in queue.glob("*.lock"):
        if not marker.stem.isdigit() or int(marker.stem) >= rank:
            continue
        try:
            fd = os.open(marker, os.O_RDONLY)  # flock needs no write access
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
    return False


def _take(folder: Path, limit: int, rank: int, gone: Callable[[], str | None], poll_s: float,
          waiting: Callable[[], None]) -> tuple[int, int]:
    """The locked file descriptor and number of a free slot, once no task of a lower rank waits."""
    said = False
    while True:
        for i in range(limit if not _ahead(folder / "queue", rank) else 0):
            fd = os.open(folder / f"{i}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return fd, i
        reason = gone()
        if reason:
            raise UserError(f"stopped while waiting for a task slot: {reason}")
        if not said:
            waiting()
            said = True
        time.sleep(poll_s)
