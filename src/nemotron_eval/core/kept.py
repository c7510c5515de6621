"""JSON entries kept between runs under a digest of what they are computed from (the plan cache,
pipeline/plan_cache.py; Hydra's compositions, config/hydra_cache.py): the code's version, reading an entry back,
writing one and keeping a folder's newest few.

An entry is a JSON object whose "key" is the full digest; one read back under another key, unreadable or not an
object is None (computed again by the caller and replaced). An entry that JSON would not give back equal is not
written; a write is atomic and follows the umask.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from nemotron_eval.core.io import sha256_tree, write_text_atomic

PACKAGE = Path(__file__).resolve().parents[1]

log = logging.getLogger(__name__)


@functools.cache
def _own_tree() -> str:
    return sha256_tree(PACKAGE, skip=("__pycache__",))


def code_version(libraries: tuple[str, ...], package: Path | None = None) -> str:
    """sha256 over Python's version, every file of the package (path and content; this one unless `package`) and
    the installed versions of `libraries`: an edited checkout or an upgrade is a new code version."""
    tree = _own_tree() if package is None else sha256_tree(package, skip=("__pycache__",))
    h = hashlib.sha256(f"{sys.version} {tree}\0".encode())
    for name in libraries:
        try:
            h.update(f"{name}={metadata.version(name)}\0".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{name}=-\0".encode())
    return h.hexdigest()


def load(path: Path, digest: str) -> dict[str, Any] | None:
    """The entry at `path` when it was written under `digest`, else None (none, another key, unreadable)."""
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) and entry.get("key") == digest else None


def store(path: Path, digest: str, fields: dict[str, Any], keep: int) -> None:
    """Write `fields` under `digest` at `path` (atomically) and keep the `keep` newest entries of its folder; a value
    JSON would not give back equal is not written. OSError when the entry cannot be written (the caller says
    what that costs); entries another process removes meanwhile are skipped."""
    entry = {"key": digest, **fields}
    text = json.dumps(entry)
    if json.loads(text) != entry:
        return
    write_text_atomic(path, text)
    ages: list[tuple[float, Path]] = []
    for other in path.parent.glob("*.json"):
        try:
            ages.append((other.stat().st_mtime, other))
        except OSError:
            continue
    for _, older in sorted(ages, reverse=True)[keep:]:
        try:
            older.unlink(missing_ok=True)
        except OSError as e:
            log.info("old entry %s not removed (%s)", older, e)
