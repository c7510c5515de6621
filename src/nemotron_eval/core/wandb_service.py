"""The W&B service's address stays in the process that started it.

wandb starts a service process on first use (`wandb.setup()`, `wandb.Api()`, `wandb.init()`) and writes its
address into WANDB_SERVICE for the children of the process to join. Ours never join it: the jobs a `nemotron`
submits, and the steps a watcher or Snakemake starts, can outlive the process and its service, and joining a
dead one fails ("Failed to connect to service on socket"). So the address is taken out of the environment
before and after wandb is used here; wandb keeps this process's own connection, a child starts its own."""

from __future__ import annotations

import os

VARIABLE = "WANDB_SERVICE"


def drop_token() -> None:
    os.environ.pop(VARIABLE, None)
