"""Glue for the Snakefile: config validation and one-line errors instead of tracebacks (nothing is written)."""

from __future__ import annotations

import os
import sys
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import jsonschema
import yaml

from nemotron_eval.pipeline import snakemake_adapter as snakemake
from nemotron_eval.core.errors import PREFIX, UserError

T = TypeVar("T")
SCHEMA = Path(__file__).parents[1] / "schemas" / "config.schema.yaml"
# What the pipeline's reruns need of Snakemake's rerun triggers. profiles/default, the workflow profile Snakemake
# reads for every invocation in this folder (with or without --profile), sets mtime, params and software-env.
# params: each step's params are digests of the plan, so a changed setting reruns what it changes. Not code:
# editing a rule reruns no evaluation. Not input: an evaluation declares its deployment only while it is due
# (`evaluation_due`), so its set of inputs changes without any reason to rerun it.
RERUN_TRIGGERS_NEEDED = frozenset({"mtime", "params"})
RERUN_TRIGGERS_REFUSED = frozenset({"code", "input"})


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
        fail(f"Snakemake config: {e.message}: run with --profile profiles/local (this machine) or --profile "
             "profiles/slurm (a cluster), whose config file sets it, or give it with --config")
    message = e.message
    if len(message) > 200:  # jsonschema repeats the whole value: a 40 KB --config value is not repeated
        shown = repr(e.instance)
        message = f"{shown[:57]}... ({len(shown)} characters) does not match the schema's {e.validator} {e.validator_value!r}"
    fail(f"Snakemake config key {key!r}: {message}")


def stale_result(plan: Any, model: str, task: str) -> bool:
    """Whether a task's result disagrees with what the plan would run: the task fingerprint it records
    (`task_config_sha256`, the one the evaluation ran with) is not the plan's (job.yaml's), or it records none or
    cannot be read. Such a result runs again whatever Snakemake's own checks find: they are skipped for a job
    behind an ancient() input whose producer reruns (a recompile for another reason), and a result copied in
    after its fingerprint changed looks newer than it (rules/common.smk, `evaluation_inputs`)."""
    import json

    from nemotron_eval.core import layout

    result = Path(layout.RESULT.format(model=model, task=task))
    try:
        if not result.is_file():
            return True
        recorded = json.loads(result.read_bytes())["task_config_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return True
    return bool(recorded != plan.evaluation(model, task)["fingerprint"])


def staging_reads(plan: Any, task: str) -> str:
    """What staging a task reads from where the plan stages it (`data.stage.reads`): the stage rule's param, and
    what `evaluation_due` compares with what the staged data was staged from."""
    from nemotron_eval.data import stage

    return stage.reads(task, plan.mirror_for(task))


def evaluation_due(plan: Any, model: str, task: str, workflow: Any) -> bool:
    """Whether the evaluation of a task whose result exists will run in this invocation: only such a job may
    declare the model's deployment (a service) as its input, because Snakemake runs every consumer of a service it
    starts, and one task's changed setting must not rerun the model's other tasks. Leans towards True wherever
    Snakemake might rerun the job: anything forced, no or incomplete metadata for the result, a fingerprint that is
    missing, differs from the plan's or is newer than the result, staged data newer than the result or about to be
    restaged (what staging reads changed: the mirror's file list, a file's size, time or inode). A stale result
    (`stale_result`) is the rule's own question, asked first. (When it guesses wrong anyway, the step says so at
    once: see `workflow.evaluate`.)"""
    import json

    from nemotron_eval.core import layout
    from nemotron_eval.data import stage

    if snakemake.forced(workflow):
        return True
    result = Path(layout.RESULT.format(model=model, task=task))
    fingerprint = Path(layout.TASK_FINGERPRINT.format(model=model, task=task))
    try:
        recorded = json.loads(fingerprint.read_text())["fingerprint"]
        done_at, fingerprinted_at = result.stat().st_mtime, fingerprint.stat().st_mtime
        if not snakemake.completed_record(workflow, str(result)):
            return True
    except (OSError, ValueError, KeyError, TypeError, AttributeError, AssertionError):  # a changed Snakemake
        # internal too (tests/test_snakemake_adapter.py names it): due, the safe side
        return True
    if recorded != plan.evaluation(model, task)["fingerprint"] or fingerprinted_at > done_at:
        return True
    if not plan.task(task).offline:
        return False
    staged = Path(layout.STAGED.format(task=task))
    if not staged.is_dir():
        return True
    try:
        if stage.read_manifest(staged).get("reads") != staging_reads(plan, task):
            return True
    except UserError:  # no or a broken manifest: it is staged again
        return True
    return max(p.stat().st_mtime for p in (staged, *staged.rglob("*"))) > done_at


# the workflows (one per process; by id, a Workflow is not hashable) whose triggers passed
_TRIGGERS_FINE: dict[int, weakref.ref[Any]] = {}


def _triggers_fine(workflow: Any) -> bool:
    known = _TRIGGERS_FINE.get(id(workflow))
    return known is not None and known() is workflow


def check_rerun_triggers(workflow: Any) -> None:
    """Refuse, in one line and before anything runs, a run whose rerun triggers would rerun evaluations for no
    reason or miss a changed setting (`--workflow-profile none` without --profile, or --rerun-triggers)."""
    if _triggers_fine(workflow) or not snakemake.is_main_process(workflow):
        return
    active = snakemake.rerun_triggers(workflow)
    if RERUN_TRIGGERS_NEEDED <= active and not active & RERUN_TRIGGERS_REFUSED:
        # asked once per input function call: thousands of times in a large DAG
        _TRIGGERS_FINE[id(workflow)] = weakref.ref(workflow)
        return
    fail(f"Snakemake's rerun triggers here are {' '.join(sorted(active))}; this pipeline needs "
         f"{' and '.join(sorted(RERUN_TRIGGERS_NEEDED))} and none of {' or '.join(sorted(RERUN_TRIGGERS_REFUSED))}: "
         "run it with --profile profiles/local (or profiles/slurm), without --workflow-profile none or "
         "--rerun-triggers (profiles/default sets them)")


def check_cores(workflow: Any) -> None:
    """Refuse, in one line, a run whose cores cannot hold a deployment and one of its task jobs (a group whose
    members run at once): a plain `snakemake -n` without --profile or --cores, which would fail on the group."""
    if snakemake.is_main_process(workflow) and (snakemake.cores(workflow) or 0) < 2:
        fail(f"this run has {snakemake.cores(workflow) or 'no'} core(s) and a deployment runs together with its task "
             "jobs, one core each: run with --profile profiles/local (or profiles/slurm), or give --cores 2 or more")


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
    if pid_of_live_snakemake(workdir) is not None:
        return  # another Snakemake is running here: its lock is real
    what = " and ".join(x for x, on in (("--unlock once", stale_lock), ("--rerun-incomplete", unfinished)) if on)
    sys.stderr.write(
        f"nemotron: an earlier run was interrupted: add {what} (finished tasks are kept and answered requests "
        "come from the harness's cache; `nemotron eval` does this for you)\n"
    )


def pid_of_live_snakemake(root: Path) -> int | None:
    """A Snakemake process running in `root` (ours or a user's), if any: its lock is not stale."""
    import psutil

    target = str(Path(root).resolve())
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if "snakemake" in cmd and proc.info["cwd"] == target and proc.pid != os.getpid():
                return int(proc.pid)
        except (psutil.Error, TypeError):
            continue
    return None
