"""Artifact registries: where `rl:latest` becomes a checkpoint path, a version and a digest."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from nemotron_eval.artifacts.base import Registry, Resolved, Version
from nemotron_eval.artifacts.local import LocalRegistry
from nemotron_eval.config.envtoml import EnvFile
from nemotron_eval.core.errors import UserError
from nemotron_eval.core.spec import ModelSpec, VersionSet, parse_models, version_number

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


def expand_models(value: Any, registry: Callable[[], Registry], where: str = "run.model") -> list[ModelSpec]:
    """The models `run.model` names, in order, each once: its specs as written, its version sets (`sft:v2..v5`,
    `sft:*`) as the versions the registry lists now. `registry` is called only when a version set needs it. A
    set naming a version the registry lacks, or none at all, is one line naming the set and the versions there are."""
    out: list[ModelSpec] = []
    for item in parse_models(value, where):
        if isinstance(item, VersionSet):
            out.extend(_versions_of(item, registry(), where))
        else:
            out.append(item)
    return list(dict.fromkeys(out))


def _versions_of(vs: VersionSet, registry: Registry, where: str) -> list[ModelSpec]:
    have = [v.version for v in registry.history(vs.name)]
    numbers = {n: v for v in have if (n := version_number(v)) is not None}
    listed = ", ".join(have) or "none"
    if not numbers:
        raise UserError(f"{where}: {vs.text!r}: {vs.name} has no versions in the {registry.kind} registry; "
                        f"register one with `nemotron artifacts add {vs.name} PATH`")
    for end in (vs.first, vs.last):
        if end is not None and end not in numbers:
            raise UserError(f"{where}: {vs.text!r}: {vs.name} has no v{end} in the {registry.kind} registry; "
                            f"its versions: {listed}")
    lo, hi = (vs.first, vs.last) if vs.first is not None else (min(numbers), max(numbers))
    return [ModelSpec(vs.name, numbers[n]) for n in sorted(numbers) if lo <= n <= hi]  # type: ignore[operator]


__all__ = ["BACKENDS", "expand_models", "LocalRegistry", "Registry", "Resolved", "Version", "backend", "local_registry", "registry_from_env"]
