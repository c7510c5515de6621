"""Runs: every `nemotron eval` has an id and a folder, `runs/<id>/`, that outlives the shell that started it.

    run.json              what was asked and how it went: command, config, profile, models, tasks, targets,
                          mode (local | run | batch), the Snakemake process (pid) or the remote run id, the
                          job ids Snakemake reported (as its profile's executor reads them), state (running,
                          done, failed, cancelled), exit code, times
    request.yaml          the request Snakemake read (`--config request=...`); values never pass a command line
    <model>/job.yaml      job.yaml and eval.yaml exactly as this run compiled them (build/ keeps only the latest)
    <model>/eval.yaml
    snakemake.log         Snakemake's own output (local runs)

`state()` tells how a run stands now (a local run whose process is gone without saying how it ended was
interrupted); `task_states()` tells, per task, pending / running (requests answered / total) / done (scores) /
failed (the error's last line), from the files the pipeline writes.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nemotron_eval.core import layout
from nemotron_eval.evaluate import progress
from nemotron_eval.core.errors import UserError, did_you_mean
from nemotron_eval.core.io import read_json, write_json_atomic, write_text_atomic

RUNS_DIR = Path("runs")
_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{4}")
FINAL = ("done", "failed", "cancelled")


@dataclass
class Run:
    id: str
    created_at: str
    command: list[str]
    config: str
    mode: str  # local | run (attached, remote) | batch (detached, remote)
    models: list[str]
    tasks: list[str]
    targets: list[str]
    profile: str | None = None  # the env.toml profile of -r/-b
    snakemake_profile: str = "profiles/local"
    state: str = "running"
    pid: int | None = None  # the local Snakemake process
    remote_id: str | None = None  # the NeMo-Run experiment id of a remote head job
    jobs: list[str] = field(default_factory=list)  # of the executor of snakemake_profile
    exit_code: int | None = None
    finished_at: str | None = None
    error: str | None = None

    @property
    def folder(self) -> Path:
        return RUNS_DIR / self.id

    @property
    def request_file(self) -> Path:
        return self.folder / "request.yaml"

    @property
    def log_file(self) -> Path:
        return self.folder / "snakemake.log"

    def save(self) -> None:
        write_json_atomic(self.folder / "run.json", asdict(self))


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def new_id() -> str:
    return f"{dt.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def create(run: Run, request_text: str, snapshots: dict[str, dict[str, str]]) -> Run:
    """Write the run's folder: run.json, request.yaml and each model's job.yaml/eval.yaml snapshot."""
    write_text_atomic(run.request_file, request_text)
    for model, files in snapshots.items():
        for name, text in files.items():
            write_text_atomic(run.folder / model / name, text)
    run.save()
    return run


def load(run_id: str | None = None) -> Run:
    """A run by id (default: the latest); a UserError names the runs there are."""
    ids = all_ids()
    if run_id is None:
        if not ids:
            raise UserError(f"no runs in {RUNS_DIR.resolve()} yet; start one with `nemotron eval`")
        run_id = ids[-1]
    path = RUNS_DIR / run_id / "run.json"
    if not _ID.fullmatch(run_id) or not path.is_file():
        latest = ", ".join(ids[-5:]) or "none"
        raise UserError(f"no run {run_id!r} in {RUNS_DIR.resolve()}{did_you_mean(run_id, ids)}; latest runs: {latest}")
    try:
        data = read_json(path)
        if isinstance(data, dict) and "slurm_jobs" in data:  # a record written before executors had names
            data["jobs"] = data.pop("slurm_jobs")
        return Run(**data)
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: not a run record ({e})") from None


def all_ids() -> list[str]:
    if not RUNS_DIR.is_dir():
        return []
    return sorted(p.name for p in RUNS_DIR.iterdir() if _ID.fullmatch(p.name) and (p / "run.json").is_file())


def _alive(pid: int | None) -> bool:
    from nemotron_eval.deploy.process import alive

    return pid is not None and alive(pid)


def state(run: Run) -> str:
    """How the run stands now: a local run still marked running whose process is gone was interrupted."""
    if run.mode == "local" and run.state == "running" and not _alive(run.pid):
        return "failed"
    if run.remote_id and run.state not in FINAL:
        from nemotron_eval.executors import remote

        try:
            remote_state = remote.status(run.remote_id).state
        except UserError:
            return run.state  # the cluster does not answer now: what was known last
        now_state = {"done": "done", "failed": "failed", "cancelled": "cancelled", "pending": "submitted"}.get(remote_state, "running")
        if now_state in FINAL:  # recorded once: later looks need not reach the cluster
            run.state, run.finished_at = now_state, run.finished_at or now()
            run.save()
        return now_state
    return run.state


def finish(run: Run, exit_code: int, cancelled: bool = False) -> None:
    run.exit_code = exit_code
    run.state = "cancelled" if cancelled else ("done" if exit_code == 0 else "failed")
    run.finished_at = now()
    run.save()


def note_output(run: Run, line: str) -> None:
    """Keep the job ids Snakemake reports as it submits (as its profile's executor reads them)."""
    from nemotron_eval.executors import for_profile

    for job in for_profile(run.snakemake_profile).job_ids(line):
        if job not in run.jobs:
            run.jobs.append(job)
            run.save()


# --- per task ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskState:
    model: str
    task: str
    state: str  # pending | running | done | failed
    detail: str  # scores, progress, or the error's last line


def _fingerprints(run: Run, model: str) -> dict[str, dict[str, Any]]:
    try:
        job = yaml.safe_load((run.folder / model / "job.yaml").read_text())
        return dict(job["run"]["tasks"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return {}


def _error_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    errors = [ln for ln in lines if ln.startswith("nemotron: error:") or "Error" in ln.split(":", 1)[0]]
    return (errors or lines or ["(empty log)"])[-1][:300]


def task_states(run: Run, root: Path = Path(".")) -> list[TaskState]:
    """Per model and task of a run (on this machine: the results and logs under `root`)."""
    overall = state(run)
    out = []
    for model in run.models:
        prints = _fingerprints(run, model)
        for task in run.tasks:
            entry = prints.get(task) or {}
            fp = str(entry.get("fingerprint", ""))
            result = root / layout.RESULT.format(model=model, task=task)
            harness_dir = root / layout.harness_dir(model, task, fp)
            log = root / layout.task_log(model, task)
            done = _result(result, fp)
            if done is not None:
                out.append(TaskState(model, task, "done", done))
            elif overall == "failed" and log.is_file() and log.stat().st_mtime >= _epoch(run.created_at):
                out.append(TaskState(model, task, "failed", _error_line(log)))
            elif harness_dir.is_dir() and overall not in FINAL:
                out.append(TaskState(model, task, "running", progress.read(harness_dir).line()))
            else:
                out.append(TaskState(model, task, "cancelled" if overall == "cancelled" else "pending", ""))
    return out


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def _result(path: Path, fingerprint: str) -> str | None:
    """The scores of a result this run's config produced (same fingerprint), else None."""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if fingerprint and result.get("task_config_sha256") != fingerprint:
        return None
    metrics = result.get("metrics") or {}
    scores = ", ".join(
        f"{name} {m['value']:.4f}" + (f" ±{m['stderr']:.4f}" if m.get("stderr") is not None else "")
        for name, m in metrics.items()
    )
    return f"{scores} (n={result.get('n_samples')})"


def result_files(run: Run, root: Path = Path(".")) -> dict[str, list[Path]]:
    """Per model of a run, the result files of its tasks that its own config produced (same fingerprint)."""
    out = {}
    for model in run.models:
        prints = _fingerprints(run, model)
        found = [(task, root / layout.RESULT.format(model=model, task=task)) for task in run.tasks]
        out[model] = [p for task, p in found if _result(p, str((prints.get(task) or {}).get("fingerprint", ""))) is not None]
    return out
