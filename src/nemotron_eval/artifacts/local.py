"""The local folder registry: `ROOT/NAME/vN/metadata.json` per version, `ROOT/NAME/aliases.json` per name.

A version references a checkpoint folder by absolute path with a content digest (sha256 over relative
paths and file contents) and a stat fingerprint (sizes + mtimes) that cheaply detects a checkpoint changed
after registration. Checkpoints are never copied.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nemotron_eval.artifacts.base import Resolved, Version
from nemotron_eval.config.validators import checkpoint_path
from nemotron_eval.core import recordfile
from nemotron_eval.core.errors import UserError, did_you_mean
from nemotron_eval.core.io import sha256_tree, stat_fingerprint, write_json_atomic
from nemotron_eval.core.safeload import load_json
from nemotron_eval.core.spec import MAX_ALIAS, ModelSpec, parse_spec

METADATA = "metadata.json"
ALIASES = "aliases.json"


@dataclass(frozen=True)
class VersionRecord:
    """A version's metadata.json as `LocalRegistry.add` writes it; read back with every field type-checked."""

    name: str
    version: str
    path: str  # the checkpoint, absolute
    digest: str
    fingerprint: str
    files: int = 0
    bytes: int = 0
    created_at: str = ""
    lineage: dict[str, Any] = field(default_factory=dict)


class LocalRegistry:
    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- reading -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and (p / ALIASES).exists())

    def versions(self, name: str) -> list[str]:
        folder = self.root / name
        found = [p.name for p in folder.glob("v*") if re.fullmatch(r"v\d+", p.name) and (p / METADATA).exists()]
        return sorted(found, key=lambda v: int(v[1:]))

    def aliases(self, name: str) -> dict[str, str]:
        path = self.root / name / ALIASES
        if not path.exists():
            return {}
        fix = f"restore it, or delete it and move the aliases again with `nemotron artifacts add {name} PATH --alias ...`"
        table = load_json(path, "registry file", fix=fix)
        if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
            raise UserError(f"{path}: not a registry alias table (alias -> version); {fix}")
        return table

    def metadata(self, name: str, version: str) -> dict[str, Any]:
        path = self.root / name / version / METADATA
        fix = f"restore it, or delete {path.parent} and register the checkpoint again"
        meta = load_json(path, "registry file", fix=fix)
        record = recordfile.from_dict(VersionRecord, meta, path, "registry version record", fix=fix)
        for key, value, same in (("name", record.name, name), ("version", record.version, version)):
            if value != same:  # a name from a record is checked as a user's: it names the folder it lies in
                raise recordfile.problem(path, "registry version record", key, value, f"{same!r} (its folder)", fix)
        if not Path(record.path).is_absolute():
            raise recordfile.problem(path, "registry version record", "path", record.path, "an absolute path", fix)
        return asdict(record)

    def history(self, name: str) -> list[Version]:
        out = []
        for v in self.versions(name):
            meta = self.metadata(name, v)
            lineage = meta.get("lineage")
            out.append(Version(name, v, str(meta.get("created_at", "")), dict(lineage) if isinstance(lineage, dict) else {}))
        return out

    def resolve(self, spec: ModelSpec) -> Resolved:
        # one folder's entries, not each one's metadata (the listing below only for the error); the exact name, also
        # on a case-insensitive file system
        if not (self.root / spec.name / ALIASES).exists() or spec.name not in os.listdir(self.root):
            names = self.names()
            have = ", ".join(names) or "none; register one with `nemotron artifacts add NAME PATH`"
            raise UserError(
                f"artifact {spec.spec!r}: no artifact named {spec.name!r} in the local registry {self.root}"
                f"{did_you_mean(spec.name, names)}; artifacts: {have}"
            )
        aliases = self.aliases(spec.name)
        versions = self.versions(spec.name)
        version = spec.alias if spec.is_version else aliases.get(spec.alias)
        if version is not None and not spec.is_version and version not in versions:
            raise UserError(
                f"artifact {spec.spec!r}: alias {spec.alias!r} points to {version}, which is missing from "
                f"{self.root / spec.name} (versions: {', '.join(versions) or 'none'}); move it with "
                f"`nemotron artifacts add {spec.name} PATH --alias {spec.alias}`"
            )
        if version not in versions:
            choices = [c for c in [*versions, *aliases] if c != spec.alias]
            valid = ", ".join([*versions, *aliases]) or "(none)"
            raise UserError(
                f"artifact {spec.spec!r}: {spec.name} has no version or alias {spec.alias!r} in {self.root}"
                f"{did_you_mean(spec.alias, choices)}; valid: {valid}"
            )
        meta = self.metadata(spec.name, version)
        path = Path(meta["path"])
        if not path.exists():
            raise UserError(f"artifact {spec.name}:{version}: its checkpoint {path} no longer exists; register the new location")
        if stat_fingerprint(path) != meta.get("fingerprint"):
            raise UserError(
                f"artifact {spec.name}:{version}: checkpoint {path} changed since it was registered "
                f"(digest {meta['digest'][:12]}); register it again with `nemotron artifacts add {spec.name} {path}`"
            )
        return Resolved(
            spec=spec.spec,
            registry=self.kind,
            name=spec.name,
            version=version,
            digest=meta["digest"],
            path=str(path),
            qualified_name=f"{self.root.resolve()}/{spec.name}:{version}",
        )

    def materialize(self, resolved: Resolved) -> Resolved:
        return resolved

    # -- writing -------------------------------------------------------------------------------
    @contextmanager
    def _locked(self, name: str) -> Iterator[Path]:
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield folder

    def add(
        self,
        name: str,
        path: Path,
        *,
        aliases: list[str] | None = None,
        lineage: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Register `path` as the next version of `name` and move `aliases` (default: latest) to it."""
        from nemotron_eval.artifacts.embedded import EMBEDDED

        parse_spec(f"{name}:latest", where="artifact name")
        if name in EMBEDDED:
            raise UserError(f"artifacts add {name}: {name!r} is an embedded model ({EMBEDDED[name].description}); pick another name")
        path = Path(path).expanduser().resolve()
        if not path.exists():
            raise UserError(f"artifacts add {name}: checkpoint path {path} does not exist")
        problem = checkpoint_path(str(path))
        if problem:
            raise UserError(f"artifacts add {name}: checkpoint path {str(path)!r} is not {problem}")
        root = self.root.expanduser().resolve()
        if root == path or path in root.parents:
            raise UserError(
                f"artifacts add {name}: the registry {self.root} lies inside the checkpoint {path}; registering would "
                "change the checkpoint it records (put the registry elsewhere: --root or env.toml [artifacts] root)"
            )
        if path.is_dir() and not any(p.is_file() for p in path.rglob("*")):
            raise UserError(f"artifacts add {name}: checkpoint folder {path} holds no file")
        aliases = aliases or ["latest"]
        for alias in aliases:
            if len(alias) > MAX_ALIAS:
                raise UserError(f"artifacts add {name}: alias {alias[:20]}...: {len(alias)} characters; at most {MAX_ALIAS}")
            if re.fullmatch(r"v?\d+", alias) or "_" in alias or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", alias):
                raise UserError(f"artifacts add {name}: alias {alias!r} is not valid; use letters, digits, '.', '-' (not vN, not '_')")
        fingerprint = stat_fingerprint(path)
        digest = sha256_tree(path)
        with self._locked(name) as folder:
            existing = self.versions(name)
            same = [v for v in existing if (m := self.metadata(name, v))["path"] == str(path) and m["digest"] == digest]
            if same:  # the same content at the same place: no new version, only the aliases move
                meta = {**self.metadata(name, same[-1]), "fingerprint": fingerprint}  # touched, same bytes
                write_json_atomic(folder / same[-1] / METADATA, meta)
                table = self.aliases(name)
                table.update({alias: same[-1] for alias in aliases})
                write_json_atomic(folder / ALIASES, dict(sorted(table.items())))
                return {**meta, "aliases": sorted(aliases), "reused": True}
            version = f"v{int(existing[-1][1:]) + 1 if existing else 1}"
            files = [p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()]
            meta = asdict(VersionRecord(
                name=name, version=version, path=str(path), digest=digest, fingerprint=fingerprint, files=len(files),
                bytes=sum(p.stat().st_size for p in files), lineage=lineage or {},
                created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            ))  # fmt: skip
            write_json_atomic(folder / version / METADATA, meta)
            table = self.aliases(name)
            table.update({alias: version for alias in aliases})
            write_json_atomic(folder / ALIASES, dict(sorted(table.items())))
        return {**meta, "aliases": sorted(aliases)}

    def listing(self, name: str | None = None) -> list[dict[str, Any]]:
        names = [name] if name else self.names()
        if name and name not in self.names():
            raise UserError(f"artifacts ls: no artifact named {name!r} in {self.root}{did_you_mean(name, self.names())}")
        rows = []
        for n in names:
            by_version: dict[str, list[str]] = {}
            for alias, version in self.aliases(n).items():
                by_version.setdefault(version, []).append(alias)
            for v in self.versions(n):
                meta = self.metadata(n, v)
                rows.append({**meta, "aliases": sorted(by_version.get(v, []))})
        return rows
