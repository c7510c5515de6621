"""Run records: what a later `status`, `logs`, `cancel` or `fetch` needs to find a submitted head job.

One JSON file per run in `$NEMORUN_HOME/nemotron-eval/runs/<id>.json` (NeMo-Run's home, ~/.nemo_run by
default), written when the submission has succeeded. The id is NeMo-Run's experiment id, so the same run is
also known to `nemo experiment status <id>` when NeMo-Run's experiment folder is local (tunnel = "ssh").
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nemotron_eval.config.validators import PATH_SAFE
from nemotron_eval.core import recordfile
from nemotron_eval.core.errors import UserError, did_you_mean
from nemotron_eval.core.io import write_json_atomic
from nemotron_eval.executors.remote.profile import RemoteProfile, parse_profile

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_JOB_ID = re.compile(r"[0-9]+(?:_[0-9]+)?")  # a Slurm job id (an array task's too)
WHAT = "NeMo-Run run record"


def nemorun_home() -> Path:
    """NeMo-Run's home folder, as NeMo-Run itself reads it."""
    return Path(os.environ.get("NEMORUN_HOME", "~/.nemo_run")).expanduser()


def runs_dir() -> Path:
    return nemorun_home() / "nemotron-eval" / "runs"


@dataclass(frozen=True)
class RunRecord:
    """One submitted head job. Paths under `task_dir` are on the cluster."""

    id: str
    job_id: str
    profile: dict[str, Any]
    task_dir: str  # <remote_job_dir>/experiments/<title>/<id>/<task>: NeMo-Run's job folder
    job_name: str  # the Slurm job name; log files are named after it
    exp_dir: str  # NeMo-Run's experiment folder on this machine (for tunnel = "local": on the cluster)
    argv: list[str]
    submitted_at: str
    shipped_files: int
    shipped_bytes: int

    @property
    def code_dir(self) -> str:
        """The shipped project on the cluster: the command's working directory."""
        return f"{self.task_dir}/code"

    @property
    def control_dir(self) -> str:
        return f"{self.code_dir}/.nemotron-remote"

    def remote_profile(self) -> RemoteProfile:
        table = {k: v for k, v in self.profile.items() if v is not None and k != "name"}
        if table.get("tunnel") != "ssh":
            for key in ("host", "user", "port", "identity"):
                table.pop(key, None)
        return parse_profile(self.profile["name"], table, where=f"run record {self.id}")


def save(record: RunRecord) -> Path:
    path = runs_dir() / f"{record.id}.json"
    write_json_atomic(path, asdict(record))
    return path


def load(run_id: str) -> RunRecord:
    """The record of `run_id`, or a UserError naming the known runs."""
    folder = runs_dir()
    if not _RUN_ID.fullmatch(run_id):
        raise UserError(f"run id {run_id!r} is not a run id (letters, digits, _ . -); see {folder}")
    path = folder / f"{run_id}.json"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
        listing = ", ".join(known[-5:]) if known else "none"
        raise UserError(f"no run {run_id!r} in {folder}{did_you_mean(run_id, known)}; latest runs: {listing}")
    return _read(path)


def _read(path: Path) -> RunRecord:
    """A record, every field type-checked (`core.recordfile`) and its names checked: one line naming the file and
    the field when it was edited or cut short, never a TypeError later."""
    fix = f"restore it, or remove {path} (the run on the cluster is not affected)"
    record = recordfile.load(RunRecord, path, WHAT, fix=fix)
    folder = "a folder path of letters, digits and _ . / ~ @ % + = - without '..'"
    for name, value, pattern, valid in (("id", record.id, _RUN_ID, f"the file's name {path.stem!r}"),
                                        ("job_id", record.job_id, _JOB_ID, "a Slurm job id"),
                                        ("job_name", record.job_name, _RUN_ID, "a Slurm job name (letters, digits, _ . -)"),
                                        ("task_dir", record.task_dir, PATH_SAFE, folder),
                                        ("exp_dir", record.exp_dir, PATH_SAFE, folder)):
        if not pattern.fullmatch(value) or (name == "id" and value != path.stem) or ".." in value.split("/"):
            raise recordfile.problem(path, WHAT, name, value, valid, fix)
    if not isinstance(record.profile.get("name"), str):
        raise recordfile.problem(path, WHAT, "profile", record.profile, "an env.toml profile with its name", fix)
    return record


def list_runs() -> list[RunRecord]:
    """Every recorded run, oldest first."""
    folder = runs_dir()
    paths = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    return [_read(p) for p in paths]
