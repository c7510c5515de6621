"""env.toml: site settings outside the repo's configs.

Tables `[wandb]` (entity, project) and `[artifacts]` (backend, root) are settings; every other table is
an execution profile (executor, account, partition, time, container, mounts, gpus_per_node, ...), and a
profile may `extends = "other"`. The file is `$NEMOTRON_ENV_FILE`, else the first `env.toml` found walking
up from the working directory.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nemotron_eval.errors import UserError, did_you_mean

SETTINGS_TABLES = ("wandb", "artifacts", "cli", "cache")
ENV_VAR = "NEMOTRON_ENV_FILE"


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
        return _resolve(self, name, [])


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
    path = path or find_env_file(start)
    if path is None:
        return EnvFile(None, {})
    try:
        with open(path, "rb") as f:
            return EnvFile(Path(path), tomllib.load(f))
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: malformed TOML: {e}") from None


def _resolve(env: EnvFile, name: str, chain: list[str]) -> dict[str, Any]:
    where = env.path or "env.toml"
    if name in chain:
        cycle = " -> ".join([*chain, name])
        raise UserError(f"{where}: profile 'extends' cycle: {cycle}; remove one of these 'extends'")
    if name not in env.profiles:
        valid = ", ".join(env.profiles) or "(none defined)"
        known = f" (from profile {chain[-1]!r} extends)" if chain else ""
        raise UserError(f"{where}: profile {name!r}{known} not found{did_you_mean(name, env.profiles)}; profiles: {valid}")
    own = dict(env.tables[name])
    parent_name = own.pop("extends", None)
    if parent_name is None:
        return own
    parent = _resolve(env, str(parent_name), [*chain, name])
    merged = {**parent, **own}
    if "mounts" in parent and "mounts" in own:
        merged["mounts"] = list(parent["mounts"]) + [m for m in own["mounts"] if m not in parent["mounts"]]
    return merged
