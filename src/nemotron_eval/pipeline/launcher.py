"""NeMo Evaluator Launcher as the engine (`run.engine: launcher`): its invocation is one of our runs.

The submit_launcher rule hands eval.yaml to the launcher's `run_eval()` (`workflow.submit_to_launcher`) once the
images eval.yaml names are squashed, and records the invocation id in build/<model>/launcher.json; the run record
(`front.runs`) keeps that id. From then on the launcher's own API answers for it, never its CLI's text:

- `status`: `api.functional.get_status` (one state per task's job: pending, running, success, failed, killed);
- `kill`: `api.functional.kill_job_or_invocation`;
- `fetch_logs` and `collect`: its exporters' `copy_artifacts` (a task folder's logs/ and artifacts/, over ssh
  for Slurm jobs, the way its own exporters fetch them).

`collect` turns each task's artifacts (the harness's results.yml and lm-eval's results_*.json, as the task's
container wrote them) into results/<model>/<task>.json (and its per-item records) through the same
`parse_harness_output` and `build_result` as the Snakemake engine, so the summary, the comparison and the
exporters read both engines' results alike.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nemotron_eval.core import layout
from nemotron_eval.core.errors import UserError
from nemotron_eval.core.io import sha256_bytes

# the launcher's job states (its ExecutionState values) as a run's task states
TASK_STATES = {"pending": "pending", "running": "running", "success": "done", "failed": "failed", "killed": "cancelled"}


@dataclass(frozen=True)
class JobState:
    job_id: str  # the launcher's: <invocation>.<index of the task in eval.yaml's evaluation.tasks>
    task: str  # the task's name in eval.yaml
    state: str  # pending | running | done | failed | cancelled (TASK_STATES), or unknown


@contextmanager
def _said(what: str) -> Iterator[None]:
    """The launcher's own errors (ssh refused, a kill it could not do, ...) as one line naming what was asked."""
    try:
        yield
    except (RuntimeError, ValueError, OSError) as e:
        raise UserError(f"NeMo Evaluator Launcher could not {what}: {(str(e).splitlines() or [type(e).__name__])[0]}") from None


def invocation_of(record: Path) -> str | None:
    """The invocation id build/<model>/launcher.json records (`workflow.submit_to_launcher`); None after a dry run
    (the launcher prepared its scripts and submitted nothing)."""
    try:
        data = json.loads(Path(record).read_text())
        invocation = data["invocation_id"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{record}: no launcher invocation id ({e}); submit again (nemotron eval)") from None
    if data.get("dry_run"):
        return None
    if not isinstance(invocation, str) or not invocation.isalnum():
        raise UserError(f"{record}: invocation_id={invocation!r} is not a launcher invocation id (letters and digits)")
    return invocation


def _jobs(invocation: str) -> dict[str, Any]:
    """The launcher's records of the invocation's jobs (its execution database), copies: its exporters' helpers
    write into what they are given."""
    from nemo_evaluator_launcher.common.execdb import ExecutionDB

    jobs = ExecutionDB().get_jobs(invocation)
    if not jobs:
        raise UserError(f"NeMo Evaluator Launcher knows no invocation {invocation!r} (its database under ~/.nemo-evaluator); "
                        "it was submitted from another account or machine")
    return {job_id: copy.deepcopy(job) for job_id, job in sorted(jobs.items())}


def _task_name(job: Any) -> str:
    index = int(str(job.job_id).rsplit(".", 1)[1])
    return str(job.config["evaluation"]["tasks"][index]["name"])


# The launcher's Slurm executor says "failed" for a job it could not find as much as for one that failed: when its
# query over ssh raises, and when the job is in neither squeue's answer (a failed ssh call there is skipped
# silently) nor sacct's (the accounting database records a job a little after its submission), its state reads
# UNKNOWN and maps to failed. Seen once in a full test run: a job held by --begin read failed right after its
# submission; in a later clean-clone CI run a second read 2 s after still said failed (the test Slurm just started,
# three test workers busy). A job that reads failed is asked about again after each of these waits (12 s in all)
# and counts as failed only if every read says so.
FAILED_CONFIRM_S = (2.0, 4.0, 6.0)


def status(invocation: str) -> list[JobState]:
    """Each task's job as the launcher's executor sees it now (on Slurm: squeue/sacct over its ssh); a job that
    reads failed is read again after each wait of FAILED_CONFIRM_S, and counts as failed only if every read says so."""
    states = _read_status(invocation)
    for wait in FAILED_CONFIRM_S:
        if not any(s.state == "failed" for s in states):
            break
        time.sleep(wait)
        again = {s.job_id: s for s in _read_status(invocation)}
        states = [again.get(s.job_id, s) if s.state == "failed" else s for s in states]
    return states


def _read_status(invocation: str) -> list[JobState]:
    from nemo_evaluator_launcher.api.functional import get_status

    jobs = _jobs(invocation)
    out = []
    with _said(f"tell invocation {invocation}'s state"):
        rows = get_status([invocation])
    for row in rows:
        if row.get("job_id") is None:  # not_found or error: the whole invocation
            raise UserError(f"NeMo Evaluator Launcher cannot tell invocation {invocation}'s state: "
                            f"{row.get('status')} {(row.get('data') or {}).get('error', '')}".rstrip())
        out.append(JobState(row["job_id"], _task_name(jobs[row["job_id"]]), TASK_STATES.get(row["status"], "unknown")))
    return out


def overall(states: list[JobState]) -> str:
    """A run's state from its jobs': running while any runs or waits, else failed, cancelled or done."""
    found = {s.state for s in states}
    if found & {"pending", "running", "unknown"}:
        return "submitted" if found <= {"pending"} else "running"
    for final in ("failed", "cancelled"):
        if final in found:
            return final
    return "done"


def kill(invocation: str) -> list[str]:
    """Cancel every job of the invocation (the launcher's kill_job_or_invocation); returns what could not be
    cancelled (a job that had ended already), one line each."""
    from nemo_evaluator_launcher.api.functional import kill_job_or_invocation

    _jobs(invocation)  # an unknown invocation: one line
    with _said(f"cancel invocation {invocation}"):
        answers = kill_job_or_invocation(invocation)
    return [f"{r['job_id']}: {(r.get('data') or {}).get('error', r['status'])}" for r in answers if r["status"] != "killed"]


def _copy(invocation: str, dest: Path, *, logs: bool, jobs: dict[str, Any] | None = None) -> dict[str, Path]:
    """Per job id, its folder under `dest` with the job's logs/ (`logs`) or artifacts/, as the launcher's
    exporters copy them (ssh for Slurm jobs); `jobs`: the invocation's job records when the caller has them."""
    from nemo_evaluator_launcher.exporters.utils import copy_artifacts

    jobs = list((jobs if jobs is not None else _jobs(invocation)).values())
    with _said(f"copy invocation {invocation}'s {'logs' if logs else 'artifacts'}"):
        copied, failed = copy_artifacts(jobs, Path(dest), copy_local=True, copy_artifacts=not logs,
                                        only_required=False, copy_logs=logs)
    return {job.job_id: Path(job.data["output_dir"]) for job in copied if job.job_id not in failed}


def fetch_logs(invocation: str, dest: Path) -> list[Path]:
    """The jobs' log files (the sbatch output, the deployment's and the evaluation's logs), copied under `dest`."""
    folders = _copy(invocation, dest, logs=True)
    return sorted(p for folder in folders.values() for p in (folder / "logs").glob("*") if p.is_file())


def collect(invocation: str, job_yaml: Path, eval_yaml: Path, fetch_dir: Path, root: Path = Path("."), *,
            done: set[str]) -> list[Path]:
    """results/<model>/<task>.json and .items.jsonl.gz of each task whose job succeeded (`done`: their job ids, from
    `status`), from its artifacts, in the
    Snakemake engine's shape (its fingerprint from job.yaml, so `nemotron status` counts it as this run's); and
    results/<model>/summary.{json,md} once every task has its result."""
    from nemotron_eval.data import tasks
    from nemotron_eval.evaluate import results
    from nemotron_eval.evaluate.output import parse_harness_output
    from nemotron_eval.pipeline.workflow import task_params, write_items

    job, eval_bytes = yaml.safe_load(Path(job_yaml).read_text()), Path(eval_yaml).read_bytes()
    cfg = yaml.safe_load(eval_bytes)
    model = job["run"]["artifacts"]["model"]
    wildcard = Path(job_yaml).parent.name
    by_name = {entry["name"]: (short, entry) for short, entry in job["run"]["tasks"].items()}
    jobs = _jobs(invocation)
    written = []
    for job_id, folder in _copy(invocation, fetch_dir, logs=False, jobs=jobs).items():
        if job_id not in done:
            continue
        name = _task_name(jobs[job_id])
        short, entry = by_name[name]
        artifacts = folder / "artifacts"
        parsed = parse_harness_output(artifacts, tasks.resolve(name))
        out = root / layout.RESULT.format(model=wildcard, task=short)
        parsed["items"] = write_items(artifacts, root / layout.ITEMS.format(model=wildcard, task=short))
        started = dt.datetime.fromtimestamp(jobs[job_id].timestamp, dt.timezone.utc)  # submitted
        finished = dt.datetime.fromtimestamp((artifacts / "results.yml").stat().st_mtime, dt.timezone.utc)
        result = results.build_result(
            task=tasks.resolve(name), parsed=parsed, model=model, config_sha256=sha256_bytes(eval_bytes),
            data={"source": "the task's container (NeMo Evaluator Launcher)"},
            deployment={"type": cfg["deployment"]["type"], "deployment_id": job_id,
                        "model_id": ((cfg.get("target") or {}).get("api_endpoint") or {}).get("model_id")},
            params=task_params(cfg, name, Path(eval_yaml)), started_at=started, finished_at=finished,
            raw=str(artifacts), task_config_sha256=entry["fingerprint"],
        )
        results.write_result(out, result)
        written.append(out)
    every = [root / layout.RESULT.format(model=wildcard, task=short) for short in job["run"]["tasks"]]
    if written and all(p.is_file() for p in every):  # results/<model>/summary.{json,md}, as the summary rule writes
        results.summarize(every, root / f"results/{wildcard}/summary.json", root / f"results/{wildcard}/summary.md")
    return written
