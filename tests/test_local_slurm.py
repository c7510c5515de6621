"""The local single-node Slurm started by ``scripts/local-slurm up`` schedules fake GPUs.

The cluster has 8 fake GPUs (``Gres=gpu:8`` backed by /dev/fakegpu0-7) and accounting through
slurmdbd, so ``sacct`` reports the gres/gpu TRES of finished jobs. The test runner starts the
cluster before pytest; without it these tests are skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

STATE_DIR = Path(os.environ.get("LOCAL_SLURM_DIR", "/tmp/nemotron-local-slurm"))


def _slurm_env() -> dict[str, str]:
    """Environment for Slurm clients.

    `up` links /etc/slurm/slurm.conf to the state folder; SLURM_CONF is only a fallback for the
    case where the link could not be made. It is set only while slurmctld's pid file exists:
    against a stopped controller every client retries for about 10 s before failing.
    """
    env = dict(os.environ)
    conf = STATE_DIR / "etc" / "slurm.conf"
    if (
        "SLURM_CONF" not in env
        and not Path("/etc/slurm/slurm.conf").exists()
        and (STATE_DIR / "run" / "slurmctld.pid").exists()
    ):
        env["SLURM_CONF"] = str(conf)
    return env


def _run(args: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env=_slurm_env(), **kw
    )


def _sinfo_problem() -> str | None:
    """None when `sinfo` answers, else why not."""
    if shutil.which("sinfo") is None:
        return "sinfo is not installed (start the cluster with scripts/local-slurm up)"
    try:
        res = _run(["sinfo", "-h", "-o", "%P %T"], timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 20 s (start the cluster with scripts/local-slurm up)"
    if res.returncode != 0 or not res.stdout.strip():
        err = (res.stderr.strip().splitlines() or ["no output"])[-1]
        return f"sinfo does not answer ({err}); start the cluster with scripts/local-slurm up"
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    problem = _sinfo_problem()
    if problem:
        pytest.skip(problem)


def test_gpu_job_gets_two_devices_and_sacct_records_them(slurm, tmp_path: Path) -> None:
    out = tmp_path / "job.out"
    t0 = time.monotonic()
    res = _run(
        [
            "sbatch", "--parsable", "--gres=gpu:2", "--wait",
            "--job-name=test-local-slurm-gpu", f"--chdir={tmp_path}", f"--output={out}",
            "--wrap", "echo $CUDA_VISIBLE_DEVICES",
        ],
        timeout=120,
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    assert res.returncode == 0, f"sbatch failed: {res.stderr}"
    job_id = res.stdout.strip().splitlines()[-1].split(";")[0]
    assert job_id.isdigit(), res.stdout

    devices = [d for d in out.read_text().strip().split(",") if d]
    assert len(devices) == 2, f"CUDA_VISIBLE_DEVICES was {out.read_text()!r}"
    assert len(set(devices)) == 2

    # The controller hands the finished job to slurmdbd asynchronously: poll briefly.
    alloc = ""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        acct = _run(["sacct", "-j", job_id, "-X", "-o", "AllocTRES", "-P", "-n"])
        assert acct.returncode == 0, f"sacct failed: {acct.stderr}"
        alloc = acct.stdout.strip()
        if "gres/gpu=" in alloc:
            break
        time.sleep(0.5)
    assert "gres/gpu=2" in alloc.split(","), f"AllocTRES of job {job_id}: {alloc!r}"
    print(f"sbatch --wait round trip: {elapsed:.1f} s; AllocTRES: {alloc}")


def test_more_gpus_than_the_node_has_is_refused(slurm, tmp_path: Path) -> None:
    res = _run(
        [
            "sbatch", "--parsable", "--gres=gpu:16", "--job-name=test-local-slurm-too-many",
            f"--chdir={tmp_path}", "--output=/dev/null", "--wrap", "true",
        ],
        timeout=60,
    )  # fmt: skip
    assert res.returncode != 0, f"sbatch accepted gpu:16 (job {res.stdout.strip()})"
    assert "error" in res.stderr.lower(), res.stderr
