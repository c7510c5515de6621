"""Glue for the Snakefile: config validation and one-line errors instead of tracebacks (nothing is written)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import jsonschema
import yaml

from nemotron_eval.errors import PREFIX, UserError

T = TypeVar("T")
SCHEMA = Path(__file__).parent / "schemas" / "config.schema.yaml"


def fail(message: str) -> NoReturn:
    sys.stderr.write(f"{PREFIX}{message}\n")
    raise SystemExit(1)


def or_exit(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn`; a UserError becomes one line on stderr and exit status 1 (nothing is written)."""
    try:
        return fn(*args, **kwargs)
    except UserError as e:
        fail(str(e))


def validate_config(config: dict[str, Any]) -> None:
    """Snakemake's `validate` (which also fills schema defaults); its error retold in one line naming the key."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    try:
        validate(config, str(SCHEMA))
        return
    except WorkflowError:
        pass
    schema = yaml.safe_load(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.path))
    if not errors:
        fail("Snakemake config does not match " + str(SCHEMA))
    e = errors[0]
    key = ".".join(str(p) for p in e.path) or "config"
    if e.validator == "additionalProperties":
        valid = ", ".join(schema["properties"])
        fail(f"Snakemake config: {e.message}; valid keys: {valid}")
    if e.validator == "required":
        fail(f"Snakemake config: {e.message} (set it in the profile or with --config)")
    fail(f"Snakemake config key {key!r}: {e.message}")


def evaluation_due(plan: Any, model: str, task: str, workflow: Any) -> bool:
    """Whether the evaluation of a task whose result exists will run in this invocation: only such a job may
    declare the model's deployment (a service) as its input, because Snakemake runs every consumer of a service it
    starts, and one task's changed setting must not rerun the model's other tasks. Leans towards True wherever
    Snakemake might rerun the job: anything forced, no or incomplete metadata for the result, a fingerprint that is
    missing, differs from the plan's or is newer than the result, staged data newer than the result or about to be
    restaged. (When it guesses wrong anyway, the step says so at once: see `workflow.evaluate`.)"""
    import json
    import os

    from nemotron_eval import layout

    settings = workflow.dag_settings
    if settings.forceall or settings.forcetargets or settings.forcerun or settings.target_jobs:
        return True
    result = Path(layout.RESULT.format(model=model, task=task))
    fingerprint = Path(layout.TASK_FINGERPRINT.format(model=model, task=task))
    try:
        recorded = json.loads(fingerprint.read_text())["fingerprint"]
        done_at, fingerprinted_at = result.stat().st_mtime, fingerprint.stat().st_mtime
        # Snakemake's record of the result, keyed by its path (no public API takes a plain path)
        persistence, key = workflow.persistence, str(result)
        if not persistence._read_record(key) or persistence._filter_incomplete_keys([key]):
            return True
    except (OSError, ValueError, KeyError, TypeError, AttributeError, AssertionError):
        return True
    if recorded != plan.evaluation(model, task)["fingerprint"] or fingerprinted_at > done_at:
        return True
    if not plan.task(task).offline:
        return False
    staged = Path(layout.STAGED.format(task=task))
    if not staged.is_dir():
        return True
    staged_at = [p.stat().st_mtime for p in (staged, *staged.rglob("*"))]
    sources = [os.stat(f).st_mtime for f in plan.mirror_files(task) if os.path.exists(f)]
    return max(staged_at) > done_at or max(sources, default=0.0) > min(staged_at)


def hint_after_a_kill(workdir: Path = Path(".")) -> None:
    """A Snakemake killed outright leaves its lock and incomplete markers, and the next plain run stops on them
    with Snakemake's own advice. Say in one line what to add (`nemotron eval` adds both itself)."""
    locks = workdir / ".snakemake" / "locks"
    incomplete = workdir / ".snakemake" / "incomplete"
    given = set(sys.argv)
    stale_lock = locks.is_dir() and any(locks.iterdir()) and "--unlock" not in given
    unfinished = incomplete.is_dir() and any(incomplete.iterdir()) and not given & {"--rerun-incomplete", "--ri"}
    if not (stale_lock or unfinished):
        return
    from nemotron_eval.runs import pid_of_live_snakemake

    if pid_of_live_snakemake(workdir) is not None:
        return  # another Snakemake is running here: its lock is real
    what = " and ".join(x for x, on in (("--unlock once", stale_lock), ("--rerun-incomplete", unfinished)) if on)
    sys.stderr.write(
        f"nemotron: an earlier run was interrupted: add {what} (finished tasks are kept and answered requests "
        "come from the harness's cache; `nemotron eval` does this for you)\n"
    )
