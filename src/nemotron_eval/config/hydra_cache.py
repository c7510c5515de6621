"""Hydra's composition of a config's defaults tree, kept between processes: `<folder>/<key>.json`.

Composing through Hydra (its import and its config loader) is the largest part of planning a run that the plan
cache (pipeline/plan_cache.py) does not already keep: every Snakemake process composes once before it builds its
DAG (a dry run, a preview, each job a cluster submits). What Hydra returns depends only on the files it can read
and the group choices passed, so an entry is kept under a key of:

* the primary config's path, the configs folder, and the group choices (`deployment=vllm`);
* the path and content of every YAML file under the configs folder (a new, edited or deleted option is a new
  key), which is where the primary lives when an entry is kept at all: a primary elsewhere (its folder is
  searched too, and could be any folder) is composed every time;
* the code that composes: this package's files, Python, hydra-core and OmegaConf. With Hydra plugins
  installed nothing is kept (a search-path plugin adds folders no key holds), nor is a config whose defaults lists
  hold an interpolation (`- deployment: ${oc.env:DEPLOY}`: Hydra resolves it from the environment).

An entry is written only once the plan has passed every check (`Kept.keep`): bad input writes nothing. An entry
that is missing, unreadable or foreign is composed again and replaced; a folder that cannot be written is
skipped. A composition that fails is never kept (its error is said every time), nor one holding a literal
secret (compose refuses it; no copy of it reaches a file). KEEP entries are kept.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable
from importlib import util
from pathlib import Path
from typing import Any

from nemotron_eval.core import kept
from nemotron_eval.core.secrets import literal_secret

KEEP = 16  # configs composed in one project (local, default, each deployment choice) each keep theirs
LIBRARIES = ("hydra-core", "omegaconf")
MAX_FILES = 2000  # YAML files under a configs folder whose composition is kept; a larger folder is composed each time

log = logging.getLogger(__name__)


@functools.cache
def _code() -> str | None:
    """The code's version (core.kept.code_version: this package, Python, hydra-core, OmegaConf); None (nothing
    kept) when Hydra plugins are installed: a search-path plugin adds folders (`pkg://` configs) no key holds."""
    if util.find_spec("hydra_plugins") is not None:
        return None
    return kept.code_version(LIBRARIES)


def key(primary: Path, configs_dir: Path, choices: list[str]) -> str | None:
    """The digest of everything Hydra's result is computed from, or None when it is not kept (a primary outside
    the configs folder, a folder too large or unreadable, Hydra plugins installed). Folders linked into the
    configs folder are followed, as Hydra follows them."""
    folder = configs_dir.resolve()
    code = _code()
    if primary.resolve().parent != folder or code is None:
        return None
    h = hashlib.sha256(json.dumps([code, str(primary.resolve()), str(folder), choices]).encode())
    count = 0
    seen: set[tuple[int, int]] = set()
    try:
        for root, dirs, files in os.walk(folder, followlinks=True):
            here = os.stat(root)
            if (here.st_dev, here.st_ino) in seen:  # a link back up the tree: walked once
                dirs.clear()
                continue
            seen.add((here.st_dev, here.st_ino))
            dirs.sort()
            for name in sorted(files):
                if not name.endswith((".yaml", ".yml")):
                    continue
                count += 1
                if count > MAX_FILES:
                    return None
                path = Path(root, name)
                h.update(f"\0{path.relative_to(folder)}\0".encode())
                h.update(hashlib.sha256(path.read_bytes()).digest())
    except OSError:
        return None
    return h.hexdigest()


class Kept:
    """Hydra's compositions read from `folder`, and the one composed here written there only when `keep()` is
    called: the plan calls it once the config has passed every check (bad input writes nothing). With
    `keep=False` (a dry run) entries are read and none written."""

    def __init__(self, folder: Path, *, keep: bool = True) -> None:
        self.folder = folder
        self.writes = keep
        self._pending: tuple[Path, str, dict[str, Any]] | None = None  # (entry's path, its key, Hydra's result)

    def __call__(self, primary: Path, configs_dir: Path, choices: list[str],
                 compose: Callable[[], dict[str, Any]], *, dynamic: bool = False) -> dict[str, Any]:
        """`compose()` (Hydra's result, a plain dict), or the entry kept under its key. `dynamic`: the defaults
        lists hold an interpolation (`- deployment: ${oc.env:DEPLOY}`), which Hydra resolves from outside the
        files: composed every time."""
        digest = None if dynamic else key(primary, configs_dir, choices)
        if digest is None:
            return compose()
        path = self.folder / f"{digest[:32]}.json"
        entry = kept.load(path, digest)
        if entry is not None and isinstance(entry.get("cfg"), dict):
            return entry["cfg"]
        cfg = compose()
        # not kept: a literal secret (compose refuses it; no copy reaches a file), or a file changed while Hydra
        # read them (the key taken again differs)
        if self.writes and literal_secret(cfg) is None and key(primary, configs_dir, choices) == digest:
            self._pending = (path, digest, copy.deepcopy(cfg))  # as Hydra made it: compose goes on to change cfg
        return cfg

    def keep(self) -> None:
        """Write the composition made here, if any (once), and keep the folder's KEEP newest entries."""
        if self._pending is None:
            return
        path, digest, cfg = self._pending
        self._pending = None
        try:
            kept.store(path, digest, {"cfg": cfg}, KEEP)
        except OSError as e:
            log.info("composition not kept (%s): the next run composes it again", e)
