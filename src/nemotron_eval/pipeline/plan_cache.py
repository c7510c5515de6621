"""One model's compiled plan kept between runs: `.snakemake/nemotron/plans/<model>/<key>.json`.

Composing and compiling a model's configs (two OmegaConf resolutions and three YAML dumps) costs ~50 ms; Snakemake
builds its DAG from the plan of every model it is asked for, in every process it starts, so `snakemake -n` over 200
checkpoints spent most of its time recompiling what had not changed. An entry holds what `Plan.model` computes
(the texts of resolved.yaml, job.yaml and eval.yaml, the per-task table) under a key of everything it is computed
from:

* the merged config's text (the YAML, Hydra defaults, env.toml profile and overrides already applied) and the
  env.toml file's content (its [artifacts] section names the registry);
* the checkpoint as the registry resolves it now (name, version, digest, path): a moved alias is a new key;
* what the compilation reads from this machine: the project folder (absolute paths), the environment variables the
  config may read (`${oc.env:...}`: among the non-secret names of secrets.ENV_READABLE, those it names; hashed),
  which task harnesses are installed here (Snakemake engine: a task's container depends on it);
* the code: the content of every file of this package and the versions of the libraries that shape the output
  (OmegaConf, PyYAML, NeMo Evaluator Launcher, Python).

The resolution of the checkpoint itself is never cached (aliases move): it runs every time, and only what follows
from it is looked up. Only plans that passed every check are kept, so a hit needs none run again; a config that
reads the clock (`${now:...}`) is never kept. A missing, unreadable or foreign entry is recomputed and replaced; a
cache that cannot be written is skipped (logged). Each model keeps its KEEP newest entries, one per key.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from nemotron_eval.core import kept, secrets
from nemotron_eval.core.io import sha256_file

CACHE_DIR = Path(".snakemake") / "nemotron" / "plans"
COMPOSED_DIR = CACHE_DIR.parent / "composed"  # Hydra's compositions (config/hydra_cache.py)
FORMAT = 1  # the entry's layout; a new one is a new key
LIBRARIES = ("omegaconf", "PyYAML", "nemo-evaluator-launcher", "nemo-evaluator")
FIELDS = ("resolved_text", "job_text", "eval_text", "tasks")
KEEP = 4  # entries per model: a model planned under a few configs (local, default, a profile) keeps each

log = logging.getLogger(__name__)


@functools.cache
def code_version(package: Path | None = None) -> str:
    """This package's files and the versions of the libraries in LIBRARIES (core.kept.code_version), with the
    entry's FORMAT: an edited checkout or an upgrade is a new code version."""
    return f"{FORMAT}-{kept.code_version(LIBRARIES, package)}"


def key(*, merged_text: str, env_file: str | None, artifact: Mapping[str, Any], installed: list[bool],
        env_names: Iterable[str], environ: Mapping[str, str] | None = None) -> str:
    """The digest of everything one model's plan is computed from (see the module docstring). `env_names`: the
    environment variables the config may read (only those: SLURM_JOB_ID differs in every job, and a plan that
    does not read it is the same in all of them)."""
    env = environ if environ is not None else os.environ
    env_text = None
    if env_file:
        try:
            env_text = sha256_file(Path(env_file))
        except OSError:
            env_text = "<unreadable>"
    parts = {
        "code": code_version(), "cwd": str(Path.cwd()), "merged": merged_text, "env_toml": env_text,
        "artifact": dict(artifact), "installed": installed,
        "environ": {name: env.get(name) for name in sorted(set(env_names))},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def env_names(merged: Mapping[str, Any], merged_text: str) -> list[str]:
    """The environment variables a merged config may read: those its `${oc.env:...}` calls name (compose.env_reads),
    and every readable name its text mentions at all (a name built by interpolation still appears somewhere)."""
    from nemotron_eval.config.compose import env_reads

    return sorted(set(env_reads(dict(merged))) | {n for n in secrets.ENV_READABLE if n in merged_text})


def cacheable(merged_text: str) -> bool:
    """Whether a config's plan may be kept: not when it reads the clock (Hydra's `${now:...}`), whose value no key
    holds."""
    return "${now:" not in merged_text


def folder_of(wildcard: str) -> Path:
    return CACHE_DIR / wildcard


def path_of(wildcard: str, digest: str) -> Path:
    """One entry per key (a model planned under two configs keeps both), at most KEEP per model."""
    return folder_of(wildcard) / f"{digest[:32]}.json"


def load(wildcard: str, digest: str) -> dict[str, Any] | None:
    """The entry stored under `digest`, or None (none, another key, unreadable, a field missing)."""
    entry = kept.load(path_of(wildcard, digest), digest)
    return entry if entry is not None and all(f in entry for f in FIELDS) else None


def store(wildcard: str, digest: str, fields: Mapping[str, Any]) -> None:
    """Keep a plan's fields under `digest` (atomically), and the model's KEEP newest entries; values that JSON would
    not give back equal are not kept."""
    try:
        kept.store(path_of(wildcard, digest), digest, {f: fields[f] for f in FIELDS}, KEEP)
    except OSError as e:
        log.info("plan cache not written (%s): the next run compiles %s again", e, wildcard)
