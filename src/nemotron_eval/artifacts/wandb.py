"""W&B artifacts as the registry: `wandb.Api().artifact("entity/project/name:alias")`.

As in NVIDIA's recipe, a model artifact usually *references* a checkpoint on shared storage: its path is
taken from the artifact's metadata (`absolute_path`, `path` or `checkpoint_path`); otherwise the artifact's
files are downloaded and the download folder is the checkpoint.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nemotron_eval.artifacts.base import Resolved, Version
from nemotron_eval.core import wandb_service
from nemotron_eval.core.errors import UserError
from nemotron_eval.core.spec import ModelSpec, version_number

PATH_KEYS = ("absolute_path", "path", "checkpoint_path")


def _default_api() -> Any:
    try:
        import wandb
    except ImportError:
        raise UserError("[artifacts] backend = 'wandb' needs the wandb package: pip install wandb") from None
    with wandb_service.private():
        return wandb.Api()


class WandbRegistry:
    kind = "wandb"

    def __init__(
        self,
        entity: str | None,
        project: str | None,
        api_factory: Callable[[], Any] = _default_api,
        download_root: Path | None = None,
    ) -> None:
        self.entity = entity
        self.project = project
        self._api_factory = api_factory
        self._api: Any = None
        self.download_root = download_root or Path("artifacts") / "wandb"

    def _client(self) -> Any:
        if self._api is None:
            self._api = self._api_factory()
        return self._api

    def _artifact(self, ref: str) -> Any:
        try:
            with wandb_service.private():  # the client may start its service at its first request
                return self._client().artifact(ref)
        except Exception as e:  # wandb raises CommError/ValueError; its first line says what is missing
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"artifact {ref!r}: not found in W&B: {first}") from None

    def ref(self, spec: ModelSpec) -> str:
        if not self.project:
            raise UserError("W&B artifacts need a project: set [wandb] project in env.toml or run.wandb.project")
        prefix = f"{self.entity}/{self.project}" if self.entity else self.project
        return f"{prefix}/{spec.name}:{spec.alias}"

    def history(self, name: str) -> list[Version]:
        """The collection's versions (`Api.artifacts(type, entity/project/name)`, its type read from `name:latest`),
        oldest first; the artifact's metadata is its lineage (NVIDIA's recipe records the step there)."""
        latest = self.ref(ModelSpec(name, "latest"))
        try:
            kind = self._artifact(latest).type
        except UserError as e:  # no version yet: wandb says the artifact (membership) is not found; anything
            if re.search(r": artifact( membership)? \S+ not found", str(e)):  # else (a wrong project, refused
                return []  # credentials) is not "no version yet"
            raise
        with wandb_service.private():
            found = self._client().artifacts(kind, latest.rpartition(":")[0])
            out = [Version(name, str(a.version), str(getattr(a, "created_at", "") or ""), dict(getattr(a, "metadata", None) or {}))
                   for a in found]
        return sorted(out, key=lambda v: version_number(v.version) or 0)

    def resolve(self, spec: ModelSpec) -> Resolved:
        ref = self.ref(spec)
        art = self._artifact(ref)
        metadata = dict(getattr(art, "metadata", None) or {})
        version = str(art.version)
        reference = next((str(metadata[k]) for k in PATH_KEYS if metadata.get(k)), "")
        return Resolved(
            spec=spec.spec,
            registry=self.kind,
            name=spec.name,
            version=version,
            digest=str(art.digest),
            path=reference or str(self.download_folder(spec.name, version)),  # filled by materialize()
            qualified_name=str(getattr(art, "qualified_name", ref)),
        )

    def download_folder(self, name: str, version: str) -> Path:
        return (self.download_root / f"{name}-{version}").resolve()

    def materialize(self, resolved: Resolved) -> Resolved:
        """Download the artifact's files into its folder unless it references a checkpoint or is there already."""
        target = Path(resolved.path)
        if target != self.download_folder(resolved.name, str(resolved.version)):
            return resolved  # a reference to shared storage
        if target.is_dir() and any(target.iterdir()):
            return resolved
        art = self._artifact(resolved.qualified_name or f"{self.project}/{resolved.name}:{resolved.version}")
        with wandb_service.private():
            art.download(root=str(target))
        return resolved
