"""Status, logs, cancel and fetch for a submitted head job, from its run record.

These talk to Slurm directly (`squeue`, `sacct`, `scancel`) through the profile's transport instead of
NeMo-Run's Experiment API: NeMo-Run's cancel is a plain `scancel` (SIGTERM, on which Snakemake waits for
its jobs instead of cancelling them), and its status hides query errors behind the last known state.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TextIO

from nemotron_eval.core.errors import UserError
from nemotron_eval.executors.remote import records
from nemotron_eval.executors.remote.transport import Transport

log = logging.getLogger(__name__)

# Slurm job states (squeue %T / sacct State) by what they mean for a run.
_STATES = {
    "pending": ("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED", "STOPPED"),
    "running": ("RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING"),
    "done": ("COMPLETED",),
    "cancelled": ("CANCELLED",),
    "failed": ("FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT"),
}  # fmt: skip
TERMINAL = frozenset({"done", "cancelled", "failed"})


@dataclass(frozen=True)
class RunStatus:
    id: str
    job_id: str
    state: str  # pending | running | done | failed | cancelled | unknown
    slurm_state: str  # as Slurm reports it, e.g. "CANCELLED by 0"; "" when Slurm knows no such job
    exit_code: str = ""  # sacct's ExitCode, e.g. "0:0"

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


def _meaning(slurm_state: str) -> str:
    word = slurm_state.split()[0].rstrip("+") if slurm_state.strip() else ""
    return next((state for state, words in _STATES.items() if word in words), "unknown")


def status(run_id: str) -> RunStatus:
    """The head job's state: squeue while the controller still lists the job, then sacct."""
    rec = records.load(run_id)
    probe = [
        "sh", "-c",
        'squeue -h -j "$1" -o %T 2>/dev/null; echo "--sacct--"; sacct -n -P -X -j "$1" -o State,ExitCode 2>&1',
        "sh", rec.job_id,
    ]  # fmt: skip
    proc = Transport(rec.remote_profile()).run(probe, timeout=60)
    live, _, history = proc.stdout.partition("--sacct--")
    live_state = next((line.strip() for line in live.splitlines() if line.strip()), "")
    rows = [line.split("|") for line in history.splitlines() if "|" in line]
    acct_state, exit_code = (rows[-1][0].strip(), rows[-1][1].strip()) if rows else ("", "")
    if "--sacct--" not in proc.stdout:
        raise UserError(f"run {run_id}: cannot query Slurm: {(proc.stderr or proc.stdout).strip()[-300:]}")
    # The controller's view while it lists the job; sacct once that is final (squeue may still say COMPLETING).
    slurm_state = live_state if live_state and _meaning(acct_state) not in TERMINAL else acct_state or live_state
    return RunStatus(rec.id, rec.job_id, _meaning(slurm_state), slurm_state, exit_code)


def wait(run_id: str, timeout_s: float | None = None, poll_s: float = 2.0,
         on_poll: Callable[[RunStatus], None] | None = None) -> RunStatus:  # fmt: skip
    """Poll `status` until the run is finished (or `timeout_s` passed: then the last status)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        st = status(run_id)
        if on_poll:
            on_poll(st)
        if st.terminal or (deadline is not None and time.monotonic() >= deadline):
            return st
        time.sleep(poll_s)


def _read_log(transport: Transport, rec: records.RunRecord, offset: int, batch: bool) -> bytes:
    """Bytes of the newest log file of the job from `offset` on (b"" while it does not exist)."""
    pattern = f"sbatch_{rec.job_name}_{rec.job_id}.out" if batch else f"log-{rec.job_name}_{rec.job_id}_*.out"
    script = 'f=$(cd "$1" 2>/dev/null && ls -1v $2 2>/dev/null | tail -n 1); [ -n "$f" ] && tail -c +"$3" "$1/$f"; exit 0'
    proc = transport.run_bytes(["sh", "-c", script, "sh", rec.task_dir, pattern, str(offset + 1)], timeout=120)
    return proc.stdout


def logs(run_id: str, follow: bool = False, out: TextIO | None = None, poll_s: float = 2.0, batch: bool = False) -> str:
    """The head command's output (`batch`: the sbatch script's own trace instead).

    With `follow`, keep reading until the run has finished, writing each new piece to `out` as it comes.
    Returns all text read.
    """
    rec = records.load(run_id)
    transport = Transport(rec.remote_profile())
    chunks: list[bytes] = []
    offset = 0
    while True:
        finished = status(run_id).terminal if follow else True
        data = _read_log(transport, rec, offset, batch)
        if data:
            chunks.append(data)
            offset += len(data)
            if out is not None:
                out.write(data.decode(errors="replace"))
                out.flush()
        if finished and not data:
            return b"".join(chunks).decode(errors="replace")
        if not data:
            time.sleep(poll_s)


SETTLE_S = 15.0  # how long a cancel lets the jobs the head's command cancelled end before it cancels what is left


def cancel(run_id: str, grace_s: float = 60.0, poll_s: float = 1.0) -> RunStatus:
    """Stop the head job so that the jobs its command submitted stop too; returns the final status.

    A running head job gets `scancel --signal=INT` after a marker file is written: its command (Snakemake)
    receives one SIGINT and cancels the jobs it submitted, then head.sh cancels its own job (CANCELLED).
    A pending job is simply cancelled. If the job has not ended after `grace_s`, a plain `scancel` follows.
    Whatever the command submitted and did not cancel itself (it was killed first, or it ended without
    cancelling) is cancelled last: every job of the run's project folder on the cluster still queued or running
    SETTLE_S after the head ended.
    """
    rec = records.load(run_id)
    transport = Transport(rec.remote_profile())
    st = status(run_id)
    if not st.terminal:
        transport.run(["touch", f"{rec.control_dir}/cancel-requested"], check=True)
        if st.state == "pending":
            transport.run(["scancel", rec.job_id], check=True)
        else:
            transport.run(["scancel", "--signal=INT", rec.job_id])  # fails harmlessly when no step runs yet
        st = wait(run_id, timeout_s=grace_s, poll_s=poll_s)
        if not st.terminal:
            transport.run(["scancel", rec.job_id], check=True)
            st = wait(run_id, timeout_s=60, poll_s=poll_s)
    left = submitted_jobs(rec, transport)
    settle = time.monotonic() + SETTLE_S  # a job Snakemake has just cancelled is listed as running a little longer
    while left and time.monotonic() < settle:
        time.sleep(poll_s)
        left = [job for job in submitted_jobs(rec, transport) if job in left]
    if left:
        log.warning("run %s: cancelling %d job(s) its command submitted and left: %s", run_id, len(left), " ".join(left))
        transport.run(["scancel", *left])
    return st


def submitted_jobs(rec: records.RunRecord, transport: Transport) -> list[str]:
    """Ids of the queued or running jobs, other than the head, whose working directory is the run's project
    folder on the cluster: what its Snakemake submitted (the Slurm executor submits from its working directory,
    the folder with symlinks resolved: both spellings count). Empty, with a warning, when squeue cannot tell."""
    probe = ["sh", "-c", 'cd "$1" 2>/dev/null && pwd -P; echo "--squeue--"; squeue --me -h -o "%i|%T|%Z"', "sh", rec.code_dir]
    proc = transport.run(probe, timeout=60)
    folders_out, marker, listing = proc.stdout.partition("--squeue--")
    if not marker or proc.returncode != 0:
        log.warning("run %s: cannot list the jobs its command submitted: %s", rec.id,
                    (proc.stderr or proc.stdout).strip()[-300:] or f"exit {proc.returncode}")
        return []
    folders = {rec.code_dir.rstrip("/"), *(line.strip().rstrip("/") for line in folders_out.splitlines() if line.strip())}
    rows = [line.strip().split("|", 2) for line in listing.splitlines() if line.count("|") >= 2]
    return [job for job, state, workdir in rows  # waiting or running; one already ending (COMPLETING, SIGNALING) is not left
            if job != rec.job_id and (_meaning(state) == "pending" or state == "RUNNING") and workdir.rstrip("/") in folders]


def fetch(run_id: str, dest: Path, path: str = "results") -> Path:
    """Copy `path` (relative to the shipped project on the cluster) to `dest` here, replacing it whole.

    The copy lands in a temporary sibling of `dest` first, so an interrupted fetch leaves `dest` as it was.
    """
    rel = PurePosixPath(path)
    if rel.is_absolute() or ".." in rel.parts or not str(rel).strip("./"):
        raise UserError(f"fetch path {path!r}: give a path inside the run's project folder, e.g. results")
    rec = records.load(run_id)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", dir=dest.parent) as tmp:
        staged = Path(tmp) / "copy"
        Transport(rec.remote_profile()).fetch(f"{rec.code_dir}/{rel}", staged)
        old = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.old"
        if dest.exists() or dest.is_symlink():
            dest.rename(old)
        staged.rename(dest)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink(missing_ok=True)
    return dest
