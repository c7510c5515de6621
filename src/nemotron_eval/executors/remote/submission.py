"""Submitting the head job through NeMo-Run: packager, executor, script, experiment.

What reaches the cluster, under <remote_job_dir>/experiments/nemotron-eval/<id>/head/:
  code/                       the shipped project (ProjectPackager), the command's working directory
  code/.nemotron-remote/      head.sh, argv (NUL-separated), venv (NUL-terminated), setup.sh
  scripts/head.sh             NeMo-Run's script: `exec bash .nemotron-remote/head.sh`
  log-<job>_<jobid>_0.out     the command's output; sbatch_<job>_<jobid>.out: the batch script's
NeMo-Run pastes Script args and env values into the sbatch script unquoted, so the command and every
profile value travel as files in the package and the Script itself is a fixed line.

nemo_run is imported only once the input is valid and the cluster has answered (it takes seconds), so
bad input fails fast.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from nemotron_eval.core.errors import UserError
from nemotron_eval.executors.remote import carry, control, records
from nemotron_eval.executors.remote.profile import RemoteProfile, local_shell_path
from nemotron_eval.executors.remote.shipping import CONTROL, project_files, write_control
from nemotron_eval.executors.remote.transport import Transport, last_line

log = logging.getLogger(__name__)

TITLE = "nemotron-eval"
TASK = "head"
JOB_NAME = f"{TITLE}.{TASK}"
WALLTIME_SIGNAL = "INT@120"  # SIGINT to the command 2 minutes before the time limit: Snakemake cancels its jobs


@dataclass(frozen=True)
class Submission:
    id: str  # NeMo-Run's experiment id: the run id for status, logs, cancel and fetch
    job_id: str  # the head job's Slurm job id
    record: Path
    seconds: float  # from the start of packaging until Slurm accepted the job
    final: control.RunStatus | None = None  # attached runs: the status they ended with


def submit(
    profile: RemoteProfile,
    argv: Sequence[str],
    project_root: Path,
    files: Sequence[str] | None = None,
    attached: bool = False,
    out: TextIO | None = None,
    check: bool = True,
    environment: Sequence[str] = (),
) -> Submission:
    """Ship `files` of `project_root` (default: `project_files`) and submit the head job running `argv`.

    Detached (default): returns as soon as Slurm has accepted the job. `attached`: then follows the
    command's output into `out` (default stdout) until the job ends; Ctrl-C cancels the run (as `cancel`
    does) and re-raises. The run record is written before either returns. `check=False` skips the
    connection check (`Transport.check`), for callers that have just made it. `environment`: names of variables
    set here that the head job gets (inherited through sbatch on a login node; over SSH, see `carry`).
    """
    if not argv or any(not isinstance(a, str) or "\0" in a for a in argv):
        raise UserError(f"remote command {list(argv)!r}: give a non-empty list of words without NUL characters")
    root = Path(project_root).resolve()
    if not root.is_dir():
        raise UserError(f"project folder {root} does not exist")
    names = list(files) if files is not None else project_files(root)
    bad = [n for n in names if Path(n).is_absolute() or ".." in Path(n).parts or not (root / n).exists()]
    if bad:
        raise UserError(f"files to ship: {bad[0]!r} is not a path inside {root}")
    base_dir = experiments_home(profile)  # checked before anything connects
    environment = list(dict.fromkeys(environment))
    if profile.is_ssh:
        carry.check(environment)
    if check:
        Transport(profile).check()
    result = _launch(profile, list(argv), root, names, base_dir, environment)
    if not attached:
        return result
    try:
        control.logs(result.id, follow=True, out=out or sys.stdout)
    except KeyboardInterrupt:
        log.warning("interrupted: cancelling %s", result.id)
        control.cancel(result.id)
        raise
    return replace(result, final=control.status(result.id))


def experiments_home(profile: RemoteProfile) -> str:
    """The folder NeMo-Run keeps its experiment in: the job folder itself on a login node, else NeMo-Run's home
    ($NEMORUN_HOME, default ~/.nemo_run) resolved and checked, since NeMo-Run pastes it into `mkdir`, `tar` and
    `rsync` commands. One line (naming no environment value) when that path would split or inject."""
    if not profile.is_ssh:
        return profile.remote_job_dir
    home, unsafe = local_shell_path(records.nemorun_home())
    if unsafe:
        raise UserError(
            f"NeMo-Run's folder ($NEMORUN_HOME, default ~/.nemo_run) resolves to a path with {unsafe}, which NeMo-Run "
            "would paste into shell commands; set NEMORUN_HOME to a folder whose path has only letters, digits and "
            "_ . / + @ % = -"
        )
    return home


def _launch(
    profile: RemoteProfile, argv: list[str], root: Path, names: list[str], base_dir: str, environment: list[str]
) -> Submission:
    import invoke.exceptions
    import nemo_run as run

    from nemotron_eval.executors.remote.nemorun_tunnel import CarryingSSHTunnel
    from nemotron_eval.executors.remote.packager import ProjectPackager

    t0 = time.monotonic()
    where = Transport(profile).where()
    shipped_bytes = sum((root / n).stat().st_size for n in names if (root / n).is_file())
    run_id = f"{TITLE}_{time.time_ns()}"
    jobs_root = f"{profile.remote_job_dir}/experiments"
    # base_dir (experiments_home): ssh: rsync copies it to jobs_root; local: it is the job folder, no copy
    tunnel: run.SSHTunnel | run.LocalTunnel  # local: sbatch inherits this process's environment
    if profile.is_ssh:
        # NeMo-Run's own executor builder leaves the port out; it is passed here. The environment goes to
        # the remote sbatch on the session's standard input (carry).
        tunnel = CarryingSSHTunnel(
            host=profile.host, user=profile.user, port=profile.port, identity=profile.identity, job_dir=jobs_root,
            carry=environment,
        )
    else:
        tunnel = run.LocalTunnel(job_dir=jobs_root)
        Path(jobs_root).mkdir(parents=True, exist_ok=True)
    log.info("shipping %d files (%.1f kB) to %s", len(names), shipped_bytes / 1e3, profile.destination)
    with tempfile.TemporaryDirectory(prefix="nemotron-remote-") as control_dir:
        write_control(Path(control_dir), profile, argv)
        executor = run.SlurmExecutor(
            account=profile.account,  # type: ignore[arg-type]  # None: no --account line
            partition=profile.head_partition or profile.partition,
            time=profile.head_time or profile.time,
            nodes=1, ntasks_per_node=1, cpus_per_task=profile.head_cpus, mem=profile.head_mem,
            signal=WALLTIME_SIGNAL, job_name_prefix=f"{TITLE}.", poll_estimated_start_time=False,
            tunnel=tunnel, packager=ProjectPackager(root=str(root), files=names, control=control_dir),
        )  # fmt: skip
        script = run.Script(inline=f"exec bash {CONTROL}/head.sh")
        try:
            # NeMo-Run's local shell helpers (invoke) copy sys.stdin into every command they run (mkdir,
            # tar, sbatch): give them an empty one, so that nothing typed here reaches them.
            stdin, sys.stdin = sys.stdin, open(os.devnull)  # noqa: SIM115
            with run.Experiment(
                TITLE, id=run_id, base_dir=base_dir, log_level="WARN", clean_mode=True, enable_goodbye_message=False
            ) as exp:
                exp.add(script, executor=executor, name=TASK)
                exp.run(detach=True)
                handle = exp.jobs[0].handle
                exp_dir = exp._exp_dir
        except invoke.exceptions.UnexpectedExit as e:
            raise UserError(f"{where}: Slurm refused the head job: {last_line(e.result.stderr or e.result.stdout)}") from None
        except SystemExit:  # NeMo-Run's SSHTunnel exits when it cannot authenticate
            raise UserError(
                f"{where}: NeMo-Run could not log in over SSH (try `ssh -p {profile.port} {profile.user}@{profile.host}`)"
            ) from None
        finally:
            sys.stdin.close()
            sys.stdin = stdin
    job_id = handle.partition("://")[2].split("/")[1] if "://" in handle else ""
    if not job_id.isdigit():
        raise UserError(f"{where}: submitted, but NeMo-Run returned no Slurm job id (handle {handle!r})")
    record = records.RunRecord(
        id=run_id, job_id=job_id, profile=profile.to_record(),
        task_dir=f"{jobs_root}/{TITLE}/{run_id}/{TASK}", job_name=JOB_NAME, exp_dir=str(exp_dir),
        argv=argv, submitted_at=datetime.now(UTC).isoformat(timespec="seconds"),
        shipped_files=len(names), shipped_bytes=shipped_bytes,
    )  # fmt: skip
    path = records.save(record)
    seconds = time.monotonic() - t0
    log.info("submitted %s: Slurm job %s (%.1f s)", run_id, job_id, seconds)
    return Submission(id=run_id, job_id=job_id, record=path, seconds=seconds)
