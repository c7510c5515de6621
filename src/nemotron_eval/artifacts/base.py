"""What every registry answers: a spec resolved to a version, a digest and a path."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

from nemotron_eval.core.spec import ModelSpec


@dataclass(frozen=True)
class Resolved:
    """A checkpoint as it was resolved: recorded in resolved.yaml under `run.artifacts.model`."""

    spec: str  # what was asked: rl:latest
    registry: str  # local | wandb | explicit
    name: str
    version: str | None  # v3
    digest: str | None  # content digest recorded by the registry
    path: str  # the checkpoint folder the deployment reads
    qualified_name: str | None = None  # e.g. entity/project/rl:v3 for W&B

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Version:
    """One version of an artifact as its registry lists it (`Registry.history`): what orders a training curve."""

    name: str
    version: str  # v3
    created_at: str  # ISO 8601, as the registry recorded it
    lineage: dict[str, Any]  # provenance (a `step` key orders the curve when every version has one)


class Registry(Protocol):
    kind: str

    def history(self, name: str) -> list[Version]:
        """Every version of `name`, oldest first; [] when there is none yet (a watcher waits for the first)."""
        ...

    def resolve(self, spec: ModelSpec) -> Resolved:
        """Resolve cheaply (called at every invocation, since aliases move)."""
        ...

    def materialize(self, resolved: Resolved) -> Resolved:
        """Make the checkpoint available locally (e.g. download); the local registry returns it as is."""
        ...
