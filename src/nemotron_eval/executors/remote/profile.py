"""An env.toml execution profile, read as the place where a remote head job runs.

Only the keys this layer needs are checked; the rest of the table (container, mounts, gpus_per_node, ...)
belongs to the pipeline and is kept as it is in `RemoteProfile.table`. Every error is one `UserError` line
naming the profile, the key and what would be valid, raised before anything connects or submits.

Paths and names are held to a small character set on purpose: NeMo-Run pastes the job folder, the
identity file, the SSH user and host and its own experiment folder into shell commands without quoting
(`mkdir -p`, `tar -xvzf`, `rsync --rsh='ssh -i ...' ... user@host:dir`, the sbatch script), so a space or a
quote there would split or inject. A local path is checked as NeMo-Run will use it: `~` expanded, made absolute,
symlinks and `..` resolved (`local_shell_path`), and that resolved path is what NeMo-Run gets. A remote path is
checked as written: the remote shell sees those characters only. Our own commands quote everything.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nemotron_eval.executors import remote_names
from nemotron_eval.config.validators import walltime_minutes
from nemotron_eval.config.envtoml import EnvFile, load_env_file, local_user
from nemotron_eval.core.errors import UserError, did_you_mean

EXECUTORS = remote_names()  # the executors a head job can be submitted to
DEFAULT_LOCAL_JOB_DIR = Path.home() / ".nemotron-eval" / "jobs"
TUNNELS = ("ssh", "local")

# What this module reads from a profile; a missing required key is checked against these for typos.
KNOWN_KEYS = (
    "executor", "tunnel", "host", "user", "identity", "port", "remote_job_dir", "account", "partition", "time",
    "head_cpus", "head_mem", "head_partition", "head_time", "venv", "setup",
)  # fmt: skip

_SAFE_PATH = re.compile(r"[A-Za-z0-9_./+@%=-]+")
_SAFE_PATH_HELP = "letters, digits and _ . / + @ % = - (NeMo-Run puts it into shell commands unquoted)"


def unsafe_characters(path: str) -> str:
    """The characters of `path` outside the safe set, for a message ('' when there are none)."""
    return " ".join(repr(c) for c in sorted(set(re.sub(r"[A-Za-z0-9_./+@%=-]", "", path))))


def local_shell_path(value: str | Path) -> tuple[str, str]:
    """A local path as NeMo-Run will paste it into a shell command (`~` expanded, absolute, symlinks and `..`
    resolved), and the characters of it outside the safe set ('' when it may be used)."""
    resolved = os.path.realpath(os.path.expanduser(str(value)))
    return resolved, unsafe_characters(resolved)
_HOST = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_SLURM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_MEM = re.compile(r"\d+[KMGT]?")


@dataclass(frozen=True)
class RemoteProfile:
    """Where and how the head job runs. `port`, `user` and `identity` matter only for tunnel = "ssh"."""

    name: str
    executor: str
    tunnel: str
    remote_job_dir: str
    host: str = "localhost"
    user: str = ""
    port: int = 22
    identity: str | None = None
    account: str | None = None
    partition: str | None = None
    time: str = "04:00:00"
    head_cpus: int = 2
    head_mem: str = "4G"
    head_partition: str | None = None
    head_time: str | None = None
    venv: str | None = None
    setup: tuple[str, ...] = ()
    table: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_ssh(self) -> bool:
        return self.tunnel == "ssh"

    @property
    def destination(self) -> str:
        """`user@host:port` for messages."""
        return f"{self.user}@{self.host}:{self.port}" if self.is_ssh else 'this machine (tunnel = "local")'

    def to_record(self) -> dict[str, Any]:
        """What a run record keeps to reach the cluster again (no table: it may hold unrelated settings)."""
        return {
            "name": self.name, "executor": self.executor, "tunnel": self.tunnel,
            "remote_job_dir": self.remote_job_dir, "host": self.host, "user": self.user, "port": self.port,
            "identity": self.identity, "account": self.account, "partition": self.partition, "time": self.time,
            "head_cpus": self.head_cpus, "head_mem": self.head_mem, "head_partition": self.head_partition,
            "head_time": self.head_time, "venv": self.venv, "setup": list(self.setup),
        }  # fmt: skip


def profile_from_env(name: str, env: EnvFile | None = None) -> RemoteProfile:
    """The named profile of env.toml (with its `extends` chain) as a `RemoteProfile`."""
    env = env if env is not None else load_env_file()
    return parse_profile(name, env.profile(name), where=str(env.path or "env.toml"))


def parse_profile(name: str, table: Mapping[str, Any], where: str = "env.toml") -> RemoteProfile:
    """Validate one profile table. Raises `UserError` (one line) on the first problem."""
    p = _Reader(name, dict(table), where)
    executor = p.choice("executor", EXECUTORS, required=True)
    tunnel = p.choice("tunnel", TUNNELS, default="local")
    if tunnel == "local" and "host" in table:
        raise p.error("host", f'is set but tunnel is {tunnel!r}; add tunnel = "ssh" or remove host')
    # On a login node (tunnel = "local") the job folder may default to one in the home folder, which clusters
    # share with their compute nodes; from a laptop it must be named.
    remote_job_dir = p.path("remote_job_dir", required=tunnel == "ssh", absolute=True, local=tunnel == "local")
    remote_job_dir = remote_job_dir or p.local_default("remote_job_dir", DEFAULT_LOCAL_JOB_DIR)
    host, user, port, identity = "localhost", local_user() or "", 22, None
    if tunnel == "ssh":
        host = p.match("host", _HOST, "a host name or IPv4 address", required=True) or ""
        user = p.match("user", _USER, "a user name") or p.default_user(user)
        port = p.integer("port", 1, 65535) or 22
        identity = p.identity("identity")
    return RemoteProfile(
        name=name, executor=executor, tunnel=tunnel, remote_job_dir=remote_job_dir, host=host, user=user,
        port=port, identity=identity,
        account=p.match("account", _SLURM_NAME, "a Slurm account name"),
        partition=p.match("partition", _SLURM_NAME, "a Slurm partition name"),
        time=p.walltime("time") or "04:00:00",
        head_cpus=p.integer("head_cpus", 1, 1024) or 2,
        head_mem=p.match("head_mem", _MEM, "a Slurm memory size such as 4G or 4000M") or "4G",
        head_partition=p.match("head_partition", _SLURM_NAME, "a Slurm partition name"),
        head_time=p.walltime("head_time"),
        venv=p.path("venv", absolute=True),
        setup=p.lines("setup"),
        table=dict(table),
    )  # fmt: skip


class _Reader:
    """Typed reads of one profile table, each failing with `where: profile 'name': key=value ...`."""

    def __init__(self, name: str, table: dict[str, Any], where: str) -> None:
        self.name, self.table, self.where = name, table, where

    def error(self, key: str, problem: str) -> UserError:
        shown = f"{key}={self.table[key]!r}" if key in self.table else key
        return UserError(f"{self.where}: profile {self.name!r}: {shown} {problem}")

    def missing(self, key: str, hint: str) -> UserError:
        near = [k for k in self.table if k not in KNOWN_KEYS]
        return UserError(f"{self.where}: profile {self.name!r} has no {key!r}{did_you_mean(key, near)}; {hint}")

    def get(self, key: str, required: bool, hint: str) -> Any:
        value = self.table.get(key)
        if value is None or value == "":
            if required:
                raise self.missing(key, hint)
            return None
        return value

    def choice(self, key: str, valid: tuple[str, ...], required: bool = False, default: str | None = None) -> str:
        options = " or ".join(repr(v) for v in valid)
        value = self.get(key, required, f"add {key} = {options}")
        if value is None:
            assert default is not None
            return default
        if value not in valid:
            raise self.error(key, f"is not supported{did_you_mean(str(value), valid)}; use {options}")
        return str(value)

    def match(self, key: str, pattern: re.Pattern[str], what: str, required: bool = False) -> str | None:
        value = self.get(key, required, f'add {key} = "..." ({what})')
        if value is None:
            return None
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise self.error(key, f"is not {what}")
        return value

    def integer(self, key: str, low: int, high: int) -> int | None:
        value = self.get(key, False, "")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(key, f"is not a whole number from {low} to {high}")
        return value

    def walltime(self, key: str) -> str | None:
        value = self.get(key, False, "")
        if value is None:
            return None
        try:
            minutes = walltime_minutes(value, where=key)
        except UserError:
            minutes = 0
        if not isinstance(value, str | int) or minutes <= 0:
            raise self.error(key, "is not a Slurm time limit (use MM, HH:MM:SS or D-HH:MM:SS)")
        return str(value)

    def path(self, key: str, required: bool = False, absolute: bool = False, local: bool = False) -> str | None:
        """A folder NeMo-Run pastes into shell commands; `local`: on this machine, resolved (see local_shell_path)."""
        hint = "add it: an absolute folder on the cluster's shared file system, e.g. /lustre/me/nemotron"
        value = self.get(key, required, hint)
        if value is None:
            return None
        if not isinstance(value, str) or not _SAFE_PATH.fullmatch(value):
            raise self.error(key, f"may only contain {_SAFE_PATH_HELP}")
        if absolute and not value.startswith("/"):
            raise self.error(key, "is not an absolute path (start it with /; ~ is not expanded on the cluster)")
        return self.resolved(key, value) if local else value.rstrip("/") or "/"

    def resolved(self, key: str, value: str) -> str:
        """`value` as a local path resolved, or the error naming what the resolved path holds."""
        path, unsafe = local_shell_path(value)
        if unsafe:
            raise self.error(key, f"resolves to {path!r}, which has {unsafe}; it may only contain {_SAFE_PATH_HELP}")
        return path

    def local_default(self, key: str, default: Path) -> str:
        path, unsafe = local_shell_path(default)
        if unsafe:
            raise UserError(
                f"{self.where}: profile {self.name!r}: the default {key} ({path!r}, in your home folder) has {unsafe}, "
                f"which NeMo-Run would paste into shell commands; set {key} to a folder with only {_SAFE_PATH_HELP}"
            )
        return path

    def default_user(self, user: str) -> str:
        """The local user name (getpass: $LOGNAME, $USER, ...), held to the same rule as a `user` key."""
        if not _USER.fullmatch(user):
            raise UserError(
                f"{self.where}: profile {self.name!r}: the local user name (from $LOGNAME or $USER) is not a user name "
                'NeMo-Run can pass to ssh and rsync; set user = "..." in the profile'
            )
        return user

    def identity(self, key: str) -> str | None:
        value = self.get(key, False, "")
        if value is None:
            return None
        if not isinstance(value, str) or "\0" in value:
            raise self.error(key, "is not a path to a private key file")
        path = Path(value).expanduser()
        if not path.is_file():
            raise self.error(
                key, f"does not exist ({path} is not a file); point it at your SSH private key or remove it to use ssh-agent"
            )
        # NeMo-Run pastes the file's path into `rsync --rsh='ssh -i PATH'`: the path it gets is the resolved one,
        # checked here (a folder with a space or a `$(...)`, also one reached through a symlink, is refused).
        return self.resolved(key, value)

    def lines(self, key: str) -> tuple[str, ...]:
        value = self.get(key, False, "")
        if value is None:
            return ()
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list) and all(isinstance(v, str) and "\0" not in v for v in value):
            return tuple(value)
        raise self.error(key, "is not a shell line or a list of shell lines")
