"""Remote and detached runs: the pipeline's head process as a small CPU Slurm job, submitted with NeMo-Run.

`nemotron eval --run/--batch PROFILE` on a laptop must not keep the laptop busy for hours: the Snakemake
head process runs on the cluster instead, as a Slurm job that NeMo-Run submits (`SlurmExecutor` with an
`SSHTunnel`, or a `LocalTunnel` on a login node), with the project shipped by a NeMo-Run packager and a
`Script` that sets up the environment and runs one command. Snakemake, started there, submits the GPU
jobs itself. `--batch` returns with the run id; `--run` follows the command's output.

env.toml profile keys read here (the rest of the table is left to the pipeline):

    [my-cluster]
    executor = "slurm"                   # required; the only executor that runs a remote head job
    tunnel = "ssh"                       # "ssh" (from a laptop) or "local" (on a login node; default)
    host = "login.example.org"           # ssh: required
    user = "me"                          # ssh: default the local user name
    identity = "~/.ssh/id_ed25519"       # ssh: optional (default: ssh-agent and ssh's default keys)
    port = 22                            # ssh: optional; passed to NeMo-Run's SSHTunnel and to ssh/rsync
    remote_job_dir = "/lustre/me/nemotron"   # absolute, on the cluster's shared file system (required for ssh;
                                         #   tunnel = "local": default ~/.nemotron-eval/jobs)
    account = "my-account"               # optional Slurm account, partition and time (default 04:00:00)
    partition = "batch"
    time = "04:00:00"
    head_cpus = 2                        # the head job: CPUs (default 2), memory (default 4G),
    head_mem = "4G"                      #   partition and time limit (default: partition and time)
    head_partition = "cpu"               #   (head_time must cover the whole pipeline: the head job
    head_time = "12:00:00"               #   waits for every GPU job it submits)
    venv = "/lustre/me/venvs/nemotron"   # a venv on the cluster with this project installed: its bin/
                                         #   goes first on PATH (head.sh checks bin/python exists)
    setup = ["module load python/3.11"]  # shell lines sourced before the command (site modules, conda,
                                         #   or creating the venv, see below)

The Python environment on the cluster: the head command (Snakemake and this package) needs it. Either point
`venv` at one you installed (`python3.11 -m venv /lustre/me/venvs/nemotron && /lustre/me/venvs/nemotron/bin/pip
install <this project>`), or let `setup` create it on first use; $NEMOTRON_CODE is the shipped project:

    venv = "/lustre/me/venvs/nemotron"
    setup = ['''test -x /lustre/me/venvs/nemotron/bin/nemotron ||
        { python3.11 -m venv /lustre/me/venvs/nemotron && /lustre/me/venvs/nemotron/bin/pip install -q "$NEMOTRON_CODE"; }''']

The setup lines are the user's own shell code from their own env.toml, written to a file and sourced; no
other value ever becomes shell text: the command is an argv list shipped as a NUL-separated file.

On the cluster: <remote_job_dir>/experiments/nemotron-eval/<id>/head/code is the shipped project and the
command's working directory (see `submission` for the rest). Here: NeMo-Run's experiment folder and a run record
in $NEMORUN_HOME (default ~/.nemo_run), see `records`.

Cancelling (`cancel`) stops the GPU jobs too: the head's command gets one SIGINT (`scancel --signal=INT`),
on which Snakemake cancels the jobs it submitted; then the head job cancels itself and Slurm records it as
CANCELLED. A command that is still running after `grace_s` gets a plain scancel (SIGTERM, then SIGKILL). What
the command submitted and did not cancel (killed first; or Snakemake's Slurm executor, which does not always
cancel a job submitted seconds before) is found by its working directory, the run's project folder, and
cancelled last.
The same SIGINT arrives 2 minutes before the head job's time limit (`sbatch --signal=INT@120`), so a head
job that runs out of time does not leave its GPU jobs behind.

tunnel = "ssh" needs, here: OpenSSH's client and rsync (NeMo-Run copies the job folder with rsync), and
the host's key in ~/.ssh/known_hosts (connect once with ssh). On the host: sbatch, squeue, sacct, scancel
and rsync on the PATH of non-interactive SSH commands. `Transport.check` verifies all of it up front.
Secrets are not copied as files. `nemotron eval` puts the W&B key into its environment (from WANDB_API_KEY or
`wandb login`, see exporters.login_for_submission) and names what the head job gets: the exporters' credentials,
HF_TOKEN and the secrets the config names (`secrets.secret_variables`) that are set here. With tunnel =
"local" the head job inherits them through sbatch; over SSH they reach the remote sbatch on the session's
standard input, never on a command line (`carry`).

Public API (submit imports nemo_run, a few seconds, once the input and the cluster have been checked):
    parse_profile(name, table, where) -> RemoteProfile      profile_from_env(name, env=None) -> RemoteProfile
    check(profile)                                           raises UserError if the cluster is unusable
    submit(profile, argv, project_root, files=None, attached=False, out=None) -> Submission
    status(run_id) -> RunStatus      wait(run_id, timeout_s=None) -> RunStatus
    logs(run_id, follow=False, out=None, batch=False) -> str
    cancel(run_id, grace_s=60) -> RunStatus                 fetch(run_id, dest, path="results") -> Path
    list_runs() -> list[RunRecord]                          project_files(root) -> list[str]
Tests: tests/test_remote.py (real local Slurm, real sshd; scripts/ssh-test-deps installs openssh-server).
"""

from __future__ import annotations

from nemotron_eval.executors.remote.control import RunStatus, cancel, fetch, logs, status, wait
from nemotron_eval.executors.remote.profile import RemoteProfile, parse_profile, profile_from_env
from nemotron_eval.executors.remote.records import RunRecord, list_runs
from nemotron_eval.executors.remote.shipping import project_files
from nemotron_eval.executors.remote.submission import Submission, submit
from nemotron_eval.executors.remote.transport import Transport

__all__ = [
    "RemoteProfile", "RunRecord", "RunStatus", "Submission", "Transport", "cancel", "check", "fetch", "list_runs",
    "logs", "parse_profile", "profile_from_env", "project_files", "status", "submit", "wait",
]  # fmt: skip


def check(profile: RemoteProfile) -> None:
    """One UserError line if the profile's cluster cannot take a head job (host, keys, Slurm, rsync)."""
    Transport(profile).check()
