"""Artifact registries: where `rl:latest` becomes a checkpoint path, a version and a digest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nemotron_eval.artifacts.base import Registry, Resolved
from nemotron_eval.config.envtoml import EnvFile
from nemotron_eval.errors import UserError

BACKENDS = ("local", "wandb")


def registry_from_env(env: EnvFile, wandb_cfg: dict[str, Any] | None = None) -> Registry:
    """The registry env.toml `[artifacts] backend` names (default: the local folder registry)."""
    settings = env.settings("artifacts")
    backend = settings.get("backend", "local")
    if backend == "local":
        from nemotron_eval.artifacts.local import LocalRegistry

        root = Path(settings.get("root", "artifacts")).expanduser()
        if not root.is_absolute() and "root" in settings and env.path is not None:
            root = env.path.parent / root
        return LocalRegistry(root)
    if backend == "wandb":
        from nemotron_eval.artifacts.wandb import WandbRegistry

        wandb_settings = {**(wandb_cfg or {}), **{k: v for k, v in env.settings("wandb").items() if v}}
        return WandbRegistry(entity=wandb_settings.get("entity"), project=wandb_settings.get("project"))
    where = env.path or "env.toml"
    raise UserError(f"{where}: [artifacts] backend {backend!r} is not valid; valid: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Registry", "Resolved", "registry_from_env"]
