"""Artifact registries: where `rl:latest` becomes a checkpoint path, a version and a digest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nemotron_eval.artifacts.base import Registry, Resolved, Version
from nemotron_eval.artifacts.local import LocalRegistry
from nemotron_eval.config.envtoml import EnvFile
from nemotron_eval.core.errors import UserError

BACKENDS = ("local", "wandb")


def backend(env: EnvFile) -> str:
    return str(env.settings("artifacts").get("backend", "local"))


def local_registry(env: EnvFile) -> LocalRegistry:
    """The local folder registry: env.toml `[artifacts] root` (relative to env.toml), else ./artifacts."""
    settings = env.settings("artifacts")
    if backend(env) != "local":
        raise UserError(f"{env.path}: [artifacts] backend is {backend(env)!r}, not the local registry")
    root = Path(settings.get("root", "artifacts")).expanduser()
    if not root.is_absolute() and "root" in settings and env.path is not None:
        root = env.path.parent / root
    return LocalRegistry(root)


def registry_from_env(env: EnvFile, wandb_cfg: dict[str, Any] | None = None) -> Registry:
    """The registry env.toml `[artifacts] backend` names (default: the local folder registry)."""
    if backend(env) == "local":
        return local_registry(env)
    if backend(env) == "wandb":
        from nemotron_eval.artifacts.wandb import WandbRegistry

        wandb_settings = {**(wandb_cfg or {}), **{k: v for k, v in env.settings("wandb").items() if v}}
        return WandbRegistry(entity=wandb_settings.get("entity"), project=wandb_settings.get("project"))
    where = env.path or "env.toml"
    raise UserError(f"{where}: [artifacts] backend {backend(env)!r} is not valid; valid: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "LocalRegistry", "Registry", "Resolved", "Version", "backend", "local_registry", "registry_from_env"]
