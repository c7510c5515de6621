"""env.toml: site settings outside the repo's configs.

Tables `[wandb]` (entity, project) and `[artifacts]` (backend, root) are settings; every other table is
an execution profile (executor, account, partition, time, container, mounts, gpus_per_node, ...), and a
profile may `extends = "other"`. The file is `$NEMOTRON_ENV_FILE`, else the first `env.toml` found walking
up from the working directory.
"""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nemotron_eval.core.errors import UserError, did_you_mean

SETTINGS_TABLES = ("wandb", "artifacts", "cli", "cache")
ENV_VAR = "NEMOTRON_ENV_FILE"
MAX_EXTENDS = 32  # profiles in one `extends` chain; a site has two or three


@dataclass
class EnvFile:
    path: Path | None
    tables: dict[str, Any] = field(default_factory=dict)

    @property
    def profiles(self) -> list[str]:
        return [k for k, v in self.tables.items() if k not in SETTINGS_TABLES and isinstance(v, dict)]

    def settings(self, table: str) -> dict[str, Any]:
        value = self.tables.get(table, {})
        return dict(value) if isinstance(value, dict) else {}

    def profile(self, name: str) -> dict[str, Any]:
        """The profile with its `extends` chain applied (child wins; `mounts` lists concatenate)."""
        return _resolve(self, name)


def local_user() -> str | None:
    """The user name here ($LOGNAME, $USER, ..., else the password database: getpass), or None: a profile's
    default `user`, on the cluster as in its ssh login."""
    try:
        return getpass.getuser() or None
    except (OSError, KeyError):
        return None


def local_host() -> str:
    """This machine's name: a profile's default `host` on a login node (tunnel = "local"); by name, not
    localhost, because a remote run's head job asks it from a compute node."""
    return socket.gethostname() or "localhost"


def find_env_file(start: Path | None = None) -> Path | None:
    if os.environ.get(ENV_VAR):
        path = Path(os.environ[ENV_VAR]).expanduser()
        if not path.is_file():
            raise UserError(f"{ENV_VAR}={path}: no such file; point it at an env.toml or unset it")
        return path
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "env.toml"
        if candidate.is_file():
            return candidate
    return None


def load_env_file(path: Path | None = None, start: Path | None = None) -> EnvFile:
    from nemotron_eval.core.safeload import load_toml

    path = path or find_env_file(start)
    if path is None:
        return EnvFile(None, {})
    tables = load_toml(path, "env.toml")
    check_tables(tables, Path(path))
    return EnvFile(Path(path), tables)


SETTINGS_KEYS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "wandb": {"entity": str, "project": str},
    "artifacts": {"backend": str, "root": str},
}


def check_tables(tables: dict[str, Any], where: Path) -> None:
    """What the pipeline reads from env.toml has the type it needs, and no secret is written in it."""
    from nemotron_eval.config import validators
    from nemotron_eval.core.secrets import BY_NAME, literal_secret

    secret = literal_secret(tables)
    if secret:
        (table, _, key), what = secret[0].partition("."), secret[1]
        raise UserError(f"{where}: [{table}] {key} holds a secret value (not repeated here): {what}; env.toml is no place for it; {BY_NAME}")
    for name, value in tables.items():
        if not isinstance(value, dict):
            if name in SETTINGS_TABLES:
                raise UserError(f"{where}: {name} must be a table [{name}], got {value!r}")
            continue
        for key, kind in SETTINGS_KEYS.get(name, {}).items():
            if key in value and not isinstance(value[key], kind):
                raise UserError(f"{where}: [{name}] {key} = {value[key]!r} must be a string (in double quotes)")
        if name in SETTINGS_TABLES:
            continue
        if "extends" in value and not isinstance(value["extends"], str):
            raise UserError(f"{where}: [{name}] extends = {value['extends']!r} must be the name of another profile, in quotes")
        mounts = value.get("mounts")
        if mounts is not None and (not isinstance(mounts, list) or any(validators.mount_entry(m) for m in mounts)):
            raise UserError(
                f"{where}: [{name}] mounts = {mounts!r} must be a list of {validators.mount_entry(None)}, "
                'e.g. mounts = ["/lustre:/lustre"]'
            )
        for key in ("time", "build_time"):
            if key in value and validators.walltime(value[key]):
                raise UserError(f"{where}: [{name}] {key} = {value[key]!r}: {validators.walltime(value[key])}")


def _resolve(env: EnvFile, name: str) -> dict[str, Any]:
    """The profile's `extends` chain followed iteratively (at most MAX_EXTENDS profiles), then merged from its root
    down: a cycle or a chain hundreds long is one line, never a RecursionError."""
    where = env.path or "env.toml"
    chain: list[str] = []
    while True:
        if name in chain:
            cycle = " -> ".join([*chain, name])
            raise UserError(f"{where}: profile 'extends' cycle: {cycle}; remove one of these 'extends'")
        if name not in env.profiles:
            valid = ", ".join(env.profiles) or "(none defined)"
            known = f" (from profile {chain[-1]!r} extends)" if chain else ""
            raise UserError(f"{where}: profile {name!r}{known} not found{did_you_mean(name, env.profiles)}; profiles: {valid}")
        chain.append(name)
        if len(chain) > MAX_EXTENDS:
            raise UserError(f"{where}: profile {chain[0]!r} extends a chain of more than {MAX_EXTENDS} profiles "
                            f"({' -> '.join(chain[:3])} -> ...); a profile needs a few")
        parent = env.tables[name].get("extends")
        if parent is None:
            break
        name = str(parent)
    merged: dict[str, Any] = {}
    for profile in reversed(chain):  # the root first: each child wins; `mounts` lists concatenate
        own = {k: v for k, v in env.tables[profile].items() if k != "extends"}
        mounts = list(merged.get("mounts", [])) + [m for m in own.get("mounts", []) if m not in merged.get("mounts", [])]
        merged.update(own)
        if "mounts" in merged:
            merged["mounts"] = mounts
    return merged
