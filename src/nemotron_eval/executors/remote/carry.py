"""Secrets to a head job submitted over SSH, through the environment only.

With tunnel = "local", sbatch inherits the submitting process's environment and the head job inherits sbatch's
(Slurm's default `--export=ALL`), so a key set here (`WANDB_API_KEY`, or put there from `wandb login`) reaches the
head job and every job Snakemake submits from it. Over SSH the remote sbatch runs in the SSH session's
environment, which has none of ours, and there is no portable way to set a variable for it: OpenSSH's SendEnv
needs the server's AcceptEnv, and a value on the remote command line would show in `ps` and the shell's history.

So the values travel on the session's standard input: NeMo-Run's `sbatch ...` command is prefixed with a fixed
`sh -c` program that reads one line per variable (`IFS= read -r NAME`), exports it, and execs sbatch. The
command line names the variables, never their values; nothing is written on either side (Slurm keeps a batch
job's environment with the job, as for any sbatch). Only the variable names travel with the tunnel object,
which NeMo-Run serialises into its experiment folder; the values are read from the environment at sbatch time.
The session runs without a pty and without echo. NeMo-Run's `pre_command` (not set here) would run before the
program and could read the input first.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Sequence

from nemotron_eval.core.errors import UserError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def present(names: Iterable[str], *, ssh: bool) -> list[str]:
    """`names` that are set here, each once; over SSH each checked to travel (`check`)."""
    found = [n for n in dict.fromkeys(names) if n in os.environ]
    if ssh:
        check(found)
    return found


def check(names: Sequence[str]) -> None:
    """One UserError line (naming the variable, never its value) if a name cannot be carried: not a shell
    variable name, unset here, or a value of more than one line."""
    env = os.environ
    for name in names:
        if not _NAME.fullmatch(name):
            raise UserError(f"environment variable name {name!r} for the head job: use letters, digits and _ only")
        if name not in env:
            raise UserError(f"{name} is to be passed to the head job but is not set here")
        if "\n" in env[name] or "\r" in env[name]:
            raise UserError(f"{name} has a line break in its value here (not repeated); a key is one line: set it again")


def wrap(command: str, names: Sequence[str]) -> str:
    """`command` (a remote shell command line) run by a fixed `sh -c` program that first reads `names` from
    standard input, one line each, and exports them."""
    reads = " && ".join(f"IFS= read -r {n}" for n in names)
    program = f"{reads} && export {' '.join(names)} && " + 'exec "$@"'
    return f"sh -c {shlex.quote(program)} sh {command}"


def stdin_text(names: Sequence[str]) -> str:
    """What `wrap`'s program reads: the values of `names` here, one line each (`check` first)."""
    check(names)
    return "".join(f"{os.environ[n]}\n" for n in names)
