"""The W&B service's address stays in the process that started it.

wandb starts a service process on first use (`wandb.setup()`, `wandb.Api()`, `wandb.init()`) and writes its
address into WANDB_SERVICE for the children of the process to join. Ours never join it: the jobs a `nemotron`
submits, and the steps a watcher or Snakemake starts, can outlive the process and its service, and joining a
dead one fails ("Failed to connect to service on socket"), and a Slurm job on another node cannot reach the
socket at all. So every use of wandb here is `private()`: the address is taken out of the environment before
(one inherited from a process that has ended is not joined) and after (none is passed on); wandb keeps this
process's own connection, a child starts its own. wandb.Api() may start its service only at its first request:
requests are private too."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

VARIABLE = "WANDB_SERVICE"


def drop_token() -> None:
    os.environ.pop(VARIABLE, None)


@contextmanager
def private() -> Iterator[None]:
    """No W&B service address in the environment before the block nor after it (however it ends)."""
    drop_token()
    try:
        yield
    finally:
        drop_token()
