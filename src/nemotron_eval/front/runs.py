"""Runs: every `nemotron eval` has an id and a folder, `runs/<id>/`, that outlives the shell that started it.

    run.json              what was asked and how it went: command, config, profile, models, tasks, targets,
                          mode (local | run | batch), the Snakemake process (pid) or the remote run id, the
                          job ids Snakemake reported (as its profile's executor reads them), state (running,
                          submitted, done, failed, cancelled), exit code, times; with `run.engine: launcher`,
                          each model's NeMo Evaluator Launcher invocation id (`pipeline.launcher`: its API
                          tells the state, cancels, fetches logs and results)
    request.yaml          the request Snakemake read (`--config request=...`); values never pass a command line
    <model>/job.yaml      job.yaml and eval.yaml exactly as this run compiled them (build/ keeps only the latest)
    <model>/eval.yaml
    snakemake.log         Snakemake's own output (local runs)

`state()` tells how a run stands now (a local run whose process is gone without saying how it ended was
interrupted). A process is the run's only while it is the one recorded: its PID and its start (`pid_started`,
`deploy.process.started`); a PID since taken by another process is not the run's, so the run reads as ended and
`nemotron kill` signals nothing. run.json is read trusting nothing: every field is type-checked
(`core.recordfile`), names that become paths (models, tasks) are checked as a user's are; a bad record is one
line naming the file and the field. `task_states()` tells, per task, pending / running (requests answered / total) / done (scores) /
failed (the error's last line), from the files the pipeline writes.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nemotron_eval.core import layout, recordfile
from nemotron_eval.core.errors import UserError, did_you_mean
from nemotron_eval.core.io import write_json_atomic, write_text_atomic
from nemotron_eval.core.safeload import load_json
from nemotron_eval.core.spec import parse_wildcard
from nemotron_eval.evaluate import progress

RUNS_DIR = Path("runs")
_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{4}")
FINAL = ("done", "failed", "cancelled")
STATES = ("running", "submitted", *FINAL)
MODES = ("local", "run", "batch")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")  # a task, a remote run id: one file name, never a path
_JOB = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+-]{0,99}")  # an executor's job id: an argument, never an option
_PROFILE = re.compile(r"profiles/[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_TARGET = re.compile(r"(?!.*(?:^|/)\.\.(?:/|$))[A-Za-z0-9_][A-Za-z0-9_./-]{0,299}")  # a file here: no option, no ..
WHAT = "run record"


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
    pid: int | None = None  # the local run's supervisor process (it runs Snakemake)
    pid_started: str | None = None  # who that process is (deploy.process.started): a reused PID is not ours
    remote_id: str | None = None  # the NeMo-Run experiment id of a remote head job
    invocations: dict[str, str] = field(default_factory=dict)  # per model, NeMo Evaluator Launcher's invocation id
    jobs: list[str] = field(default_factory=list)  # of the executor of snakemake_profile
    environment: list[str] = field(default_factory=list)  # a remote run: names (never values) the head job got from here
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
    if not is_run_id(run_id) or not path.is_file():
        latest = ", ".join(ids[-5:]) or "none"
        raise UserError(f"no run {run_id!r} in {RUNS_DIR.resolve()}{did_you_mean(run_id, ids)}; latest runs: {latest}")
    fix = f"restore it, or remove the folder {path.parent}"
    data = load_json(path, WHAT, fix=fix)
    if isinstance(data, dict) and "slurm_jobs" in data:  # a record written before executors had names
        data["jobs"] = data.pop("slurm_jobs")
    run = recordfile.from_dict(Run, data, path, WHAT, fix=fix)
    _check(run, path, fix)
    return run


def _check(run: Run, path: Path, fix: str) -> None:
    """What the field types cannot say: the values a run can have, and names that become paths checked as a
    user's are (a model `../../etc` would make `logs` print a file outside the project)."""

    def bad(name: str, value: Any, valid: str) -> UserError:
        return recordfile.problem(path, WHAT, name, value, valid, fix)

    if run.id != path.parent.name:
        raise bad("id", run.id, f"its folder's name {path.parent.name!r}")
    if run.state not in STATES:
        raise bad("state", run.state, f"one of {', '.join(STATES)}")
    if run.mode not in MODES:
        raise bad("mode", run.mode, f"one of {', '.join(MODES)}")
    for model in run.models:
        try:
            parse_wildcard(model)
        except UserError:
            raise bad("models", model, "a model's folder name (NAME_ALIAS, e.g. rl_latest)") from None
    for name, values, pattern, valid in (
        ("tasks", run.tasks, _NAME, "a task's name (letters, digits, _ . -)"),
        ("jobs", run.jobs, _JOB, "a job id (letters, digits, _ . : + -)"),
        ("targets", run.targets, _TARGET, "a file of this project (a relative path without '..')"),
        ("remote_id", [run.remote_id] if run.remote_id is not None else [], _NAME, "a run id (letters, digits, _ . -)"),
        ("invocations", list(run.invocations.values()), _NAME, "an invocation id (letters, digits)"),
        ("snakemake_profile", [run.snakemake_profile], _PROFILE, "a profile of this project (profiles/NAME)"),
    ):
        for value in values:
            if not pattern.fullmatch(value):
                raise bad(name, value, valid)
    for model in run.invocations:
        if model not in run.models:
            raise bad("invocations", model, f"one of the run's models ({', '.join(run.models)})")
    if run.pid is not None and run.pid < 1:
        raise bad("pid", run.pid, "a process id (a whole number >= 1) or null")
    for name, stamp in (("created_at", run.created_at), ("finished_at", run.finished_at)):
        try:
            if stamp is not None:
                dt.datetime.fromisoformat(stamp)
        except ValueError:
            raise bad(name, stamp, "a date and time (ISO 8601)") from None


def is_run_id(value: str) -> bool:
    """A run id as `new_id` makes them (the name of its folder under runs/)."""
    return bool(_ID.fullmatch(value))


def all_ids() -> list[str]:
    if not RUNS_DIR.is_dir():
        return []
    return sorted(p.name for p in RUNS_DIR.iterdir() if is_run_id(p.name) and (p / "run.json").is_file())


def is_live(run: Run) -> bool:
    """Whether the run's own process (its PID and its start, not a process that took the PID since) runs."""
    from nemotron_eval.deploy.process import is_ours

    return is_ours(run.pid, run.pid_started)


def live() -> list[Run]:
    """The local runs of this project whose own process runs now (unreadable records are left out)."""
    found = []
    for run_id in all_ids():
        try:
            run = load(run_id)
        except UserError:
            continue
        if run.mode == "local" and run.state == "running" and is_live(run):
            found.append(run)
    return found


def state(run: Run, jobs: dict[str, list[Any]] | None = None) -> str:
    """How the run stands now: a local run still marked running whose process is gone was interrupted. `jobs`: a
    launcher run's `launcher_jobs` when the caller has asked them already."""
    if run.mode == "local" and run.state == "running" and not is_live(run):
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
            if now_state == "failed" and not run.error:
                run.error = _head_reason(run.remote_id)
            run.save()
        return now_state
    if run.invocations and run.state not in FINAL:
        return _launcher_state(run, launcher_jobs(run) if jobs is None else jobs)
    return run.state


def _launcher_state(run: Run, jobs: dict[str, list[Any]]) -> str:
    """A launcher run's state from its jobs (`launcher_jobs`); once they ended, those that succeeded have their
    results collected into results/ (once: the state is then recorded)."""
    from nemotron_eval.pipeline import launcher

    if not jobs:
        return run.state  # the launcher cannot tell now: what was known last
    now_state = launcher.overall([s for states in jobs.values() for s in states])
    if now_state in ("done", "failed"):
        try:
            for model, inv in run.invocations.items():
                launcher.collect(inv, run.folder / model / "job.yaml", run.folder / model / "eval.yaml",
                                 run.folder / "fetched" / model, done={s.job_id for s in jobs[model] if s.state == "done"})
        except UserError as e:
            now_state, run.error = "failed", str(e).splitlines()[0]
    if now_state in FINAL:
        run.state, run.finished_at = now_state, run.finished_at or now()
        run.save()
    return now_state


def kill_launcher(run: Run) -> str:
    """Cancel a launcher run's jobs through the launcher's API and record it; jobs already ended are said."""
    from nemotron_eval.pipeline import launcher

    for line in [line for inv in run.invocations.values() for line in launcher.kill(inv)]:
        print(f"nemotron: not cancelled: {line}", file=sys.stderr)
    run.state, run.finished_at = "cancelled", run.finished_at or now()
    run.save()
    return run.state


def launcher_logs(run: Run) -> list[Path]:
    """A launcher run's job logs, fetched anew (through the launcher's own copy) into runs/<id>/logs/launcher/."""
    from nemotron_eval.pipeline import launcher

    try:
        return [f for model, inv in run.invocations.items()
                for f in launcher.fetch_logs(inv, run.folder / "logs" / "launcher" / model)]
    except UserError as e:
        print(f"nemotron: {e}", file=sys.stderr)
        return []


def finish(run: Run, exit_code: int, cancelled: bool = False) -> None:
    """Record how the run's Snakemake ended. With the launcher engine, a Snakemake that submitted leaves the run
    `submitted`, with each model's launcher invocation id (build/<model>/launcher.json): the launcher runs it from
    there."""
    run.exit_code = exit_code
    run.state = "cancelled" if cancelled else ("done" if exit_code == 0 else "failed")
    records = [Path(t) for t in run.targets if Path(t).name == "launcher.json"]
    if run.state == "done" and records:
        from nemotron_eval.pipeline import launcher

        found = {record.parent.name: launcher.invocation_of(record) for record in records}
        run.invocations = {model: inv for model, inv in found.items() if inv}  # none after a launcher dry run
        run.state = "submitted" if run.invocations else "done"
    run.finished_at = None if run.state == "submitted" else now()
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


def _head_reason(remote_id: str) -> str | None:
    """Why a remote run failed, from its head job's output: the last `nemotron: error:` line, or the line after
    Snakemake's `...Error in file ...` (a step's one-line error), else the last line that mentions an error."""
    from nemotron_eval.executors import remote

    try:
        lines = [ln.strip() for ln in remote.logs(remote_id).splitlines() if ln.strip()]
    except UserError:
        return None
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("nemotron: error:"):
            return lines[i][:300]
        if re.match(r"\w*Error in file ", lines[i]) and i + 1 < len(lines):
            return lines[i + 1][:300]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return errors[-1][:300] if errors else None


def _error_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    errors = [ln for ln in lines if ln.startswith("nemotron: error:") or "Error" in ln.split(":", 1)[0]]
    return (errors or lines or ["(empty log)"])[-1][:300]


def task_states(run: Run, root: Path = Path("."), jobs: dict[str, list[Any]] | None = None) -> list[TaskState]:
    """Per model and task of a run (on this machine: the results and logs under `root`); `jobs`: a launcher run's
    `launcher_jobs` when the caller has asked them already (they are asked once per command)."""
    jobs = launcher_jobs(run) if jobs is None else jobs
    overall = state(run, jobs)
    by_task = {(model, job.task): job for model, states in jobs.items() for job in states}
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
            elif (model, entry.get("name")) in by_task:
                job = by_task[model, entry.get("name")]
                out.append(TaskState(model, task, job.state, f"launcher job {job.job_id}"))
            elif overall == "failed" and log.is_file() and log.stat().st_mtime >= _epoch(run.created_at):
                out.append(TaskState(model, task, "failed", _error_line(log)))
            elif harness_dir.is_dir() and overall not in FINAL:
                out.append(TaskState(model, task, "running", progress.read(harness_dir).line()))
            else:
                out.append(TaskState(model, task, "cancelled" if overall == "cancelled" else "pending", ""))
    return out


def launcher_jobs(run: Run) -> dict[str, list[Any]]:
    """Per model, its launcher jobs' states now (one question per invocation); empty when the run is not a launcher
    run, is done (its results are here), or the launcher cannot tell now."""
    from nemotron_eval.pipeline import launcher

    if not run.invocations or run.state == "done":
        return {}
    try:
        return {model: launcher.status(inv) for model, inv in run.invocations.items()}
    except UserError:
        return {}


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
