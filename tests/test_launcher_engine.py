"""`run.engine: launcher` end to end through NeMo Evaluator Launcher's real Slurm executor on the local Slurm:
the images eval.yaml names are squashed first; `nemotron eval` records the launcher's invocation as a run;
`nemotron status`, `logs` and `kill` answer through the launcher's API (get_status, its copy of the job logs,
kill_job_or_invocation); a job that succeeded comes back as results/<model>/<task>.json in the Snakemake
engine's shape.

What cannot be real here, and why: the launcher's jobs start the deployment and the evaluation with
`srun --container-image` (pyxis), and pyxis/enroot are not installed on this machine, so no task's container
runs here. Its launcher always reaches the cluster by `ssh USER@HOST` (no port option): the tests give it the
session's throwaway sshd (conftest `sshd`) under a host alias in the passwd home's ~/.ssh/config, removed
afterwards. The deployment is `none` (an endpoint: no model is needed, and nothing is squashed for it); the
squashing is shown on the plan of the recipe config, whose generic deployment runs an image.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nemotron_eval.data.tasks import resolve
from nemotron_eval.evaluate.output import parse_harness_output

from conftest import REPO, copy_workflow, make_checkpoint, nemotron, slurm_problem, snakemake, wait_for

FIXTURE = REPO / "tests/fixtures/harness/openbookqa"  # what the harness wrote for openbookqa (results.yml, lm-eval's json)

CONFIG = """
defaults:
  - deployment: none
  - _self_
run:
  model: demo:latest
  engine: launcher
  env: {{host: {host}, user: {user}, account: nemotron, partition: debug, time: "00:05:00", remote_job_dir: {remote}, mounts: []}}
execution:
  type: slurm
  hostname: ${{run.env.host}}
  username: ${{run.env.user}}
  account: ${{run.env.account}}
  partition: ${{run.env.partition}}
  walltime: ${{run.env.time}}
  output_dir: ${{run.env.remote_job_dir}}/evaluations
  num_nodes: 1
  num_instances: 1
  ntasks_per_node: 1
  gres: gpu:1
  subproject: nemotron-test
  container_runner: pyxis
  sbatch_extra_flags: {extra}
  deployment: {{n_tasks: 1}}
  auto_export: {{enabled: false, destinations: []}}
  mounts: {{deployment: {{}}, evaluation: {{}}, mount_home: false}}
target:
  api_endpoint: {{url: "http://127.0.0.1:9/v1/completions", model_id: demo}}
evaluation:
  nemo_evaluator_config:
    config:
      params: {{limit_samples: 3, parallelism: 1}}
  tasks: [{{name: openbookqa}}]
"""


@pytest.fixture
def cluster(sshd: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The local Slurm behind the session's sshd, as the launcher reaches a login node: `ssh root@<alias>`."""
    problem = slurm_problem()
    if problem:
        pytest.fail(problem)  # the launcher engine's point is the real executor: no Slurm is a failure, not a skip
    alias = f"nemotron-launcher-test-{sshd['port']}"
    config = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".ssh" / "config"
    block = (f"\nHost {alias}\n  HostName 127.0.0.1\n  Port {sshd['port']}\n  IdentityFile {sshd['identity']}\n"
             "  IdentitiesOnly yes\n  BatchMode yes\n")
    before = config.read_text() if config.exists() else None
    config.parent.mkdir(mode=0o700, exist_ok=True)
    config.write_text((before or "") + block)
    os.chmod(config, 0o600)
    # the launcher's invocation database: this test's own; a short path (its ssh control sockets live under it)
    home = Path(tempfile.mkdtemp(prefix="nel-", dir="/tmp"))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USER", pwd.getpwuid(os.getuid()).pw_name)
    try:
        yield {"host": alias, "user": pwd.getpwuid(os.getuid()).pw_name}
    finally:
        shutil.rmtree(home, ignore_errors=True)
        if before is None:
            config.unlink()
        else:
            config.write_text(before)


def project(tmp_path: Path, cluster: dict[str, str], extra: str = "{}") -> tuple[Path, dict[str, str]]:
    work = copy_workflow(tmp_path)
    assert nemotron(work, "artifacts", "add", "demo", str(make_checkpoint(tmp_path / "ck"))).returncode == 0
    (work / "launch.yaml").write_text(CONFIG.format(**cluster, remote=tmp_path / "cluster", extra=extra))
    return work, {"HOME": os.environ["HOME"], "USER": cluster["user"], "NEMO_EVALUATOR_TELEMETRY_LEVEL": "0"}


def run_record(work: Path) -> dict[str, Any]:
    (folder,) = (work / "runs").iterdir()
    return json.loads((folder / "run.json").read_text())


def slurm_state(job: str) -> str:
    out = subprocess.run(["sacct", "-j", job, "-X", "-n", "-P", "-o", "State"], capture_output=True, text=True).stdout
    return out.strip().split(" ")[0] if out.strip() else ""


def launcher_jobs(invocation: str) -> list[dict[str, Any]]:
    """The launcher's records of an invocation's jobs, read from its database file under this test's $HOME (its
    module fixes the path when first imported, in this process possibly under another test's $HOME)."""
    db = Path(os.environ["HOME"]) / ".nemo-evaluator" / "exec-db" / "exec.v1.jsonl"
    records = [json.loads(line) for line in db.read_text().splitlines() if line.strip()]
    return [r for r in records if r["invocation_id"] == invocation]


@pytest.mark.parametrize(("jobs", "run_state"), [
    (["pending", "pending"], "submitted"), (["pending", "running"], "running"), (["failed", "running"], "running"),
    (["done", "failed"], "failed"), (["cancelled", "done"], "cancelled"), (["done", "done"], "done"),
    (["unknown", "done"], "running"),
])
def test_a_launcher_runs_state_follows_its_jobs(jobs: list[str], run_state: str) -> None:
    from nemotron_eval.pipeline.launcher import JobState, overall

    assert overall([JobState(f"abc.{i}", "t", s) for i, s in enumerate(jobs)]) == run_state


@pytest.mark.parametrize(("reads", "states"), [
    ([["failed", "pending"], ["pending", "pending"]], ["pending", "pending"]),  # a query that failed once
    ([["failed", "pending"], ["failed", "pending"], ["failed", "pending"], ["running", "pending"]],
     ["running", "pending"]),  # failed three times, then read right
    ([["failed", "done"]] * 4, ["failed", "done"]),  # failed every time: failed
    ([["running", "done"]], ["running", "done"]),  # nothing failed: read once
])
def test_a_job_counts_as_failed_only_when_a_second_read_agrees(reads: list[list[str]], states: list[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The launcher's Slurm executor says "failed" whenever its squeue/sacct query raises; the real transient
    (an ssh query failing under load) cannot be made to happen on demand, so the launcher's get_status is
    replaced by a list of answers here."""
    from nemo_evaluator_launcher.api import functional

    from nemotron_eval.pipeline import launcher

    answers = iter(reads)
    monkeypatch.setattr(functional, "get_status", lambda ids: [
        {"job_id": f"{ids[0]}.{i}", "status": {"done": "success"}.get(s, s)} for i, s in enumerate(next(answers))])
    monkeypatch.setattr(launcher, "_jobs", lambda inv: {f"{inv}.{i}": None for i in range(2)})
    monkeypatch.setattr(launcher, "_task_name", lambda job: "t")
    monkeypatch.setattr(launcher, "FAILED_CONFIRM_S", (0.0, 0.0, 0.0))
    assert [s.state for s in launcher.status("abc")] == states
    assert next(answers, None) is None  # every answer was asked for, no more


def test_the_images_eval_yaml_names_are_squashed_before_the_launcher_gets_it(tmp_path: Path) -> None:
    work = copy_workflow(tmp_path)
    assert nemotron(work, "artifacts", "add", "demo", str(make_checkpoint(tmp_path / "ck"))).returncode == 0
    proc = snakemake(work, "-n", "build/demo_latest/launcher.json", "--config", "eval_config=default",
                     'overrides=["run.engine=launcher"]', env={"HOME": str(tmp_path / "home"), "USER": "tester"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert out.index("rule squash_image:") < out.index("rule submit_launcher:")
    assert "build/images/nvcr.io+nvidia+nemo+25.11.nemotron_3_nano.sqsh" in out and "evaluate_task" not in out


@pytest.mark.slurm
def test_an_invocation_is_a_run_status_logs_and_kill_through_the_launcher(tmp_path: Path, cluster: dict[str, str]) -> None:
    # held an hour by Slurm (--begin), so that the kill finds it waiting
    work, env = project(tmp_path, cluster, extra="{begin: now+3600}")
    proc = nemotron(work, "eval", "-c", "launch.yaml", env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    record = run_record(work)
    invocation = record["invocations"]["demo_latest"]
    assert record["state"] == "submitted" and invocation, record
    (job,) = launcher_jobs(invocation)
    slurm_job = job["data"]["slurm_job_id"]
    assert slurm_state(slurm_job) == "PENDING"
    status = nemotron(work, "status", env=env)
    assert status.returncode == 0, status.stderr
    assert f"run {record['id']}: submitted" in status.stdout
    assert "openbookqa" in status.stdout and "pending" in status.stdout and f"launcher job {invocation}.0" in status.stdout
    logs = nemotron(work, "logs", record["id"], env=env)
    assert logs.returncode == 0 and f"invocation {invocation}" in logs.stdout, logs.stdout + logs.stderr
    killed = nemotron(work, "kill", record["id"], env=env)
    assert killed.returncode == 0, killed.stderr
    assert wait_for(lambda: slurm_state(slurm_job) == "CANCELLED", 30)
    assert run_record(work)["state"] == "cancelled"
    after = nemotron(work, "status", env=env)
    assert f"run {record['id']}: cancelled" in after.stdout, after.stdout


@pytest.mark.slurm
def test_a_failed_job_says_why_and_a_succeeded_one_comes_back_as_results(tmp_path: Path, cluster: dict[str, str]) -> None:
    """The job runs and fails where the container would start (no pyxis here): status and logs say so. Then the
    same job folder as a successful task's container leaves it (the harness's own output for openbookqa in
    artifacts/, the Slurm job of a `true`): collected through the launcher's status and copy, in our shape."""
    work, env = project(tmp_path, cluster)
    submitted = nemotron(work, "eval", "-c", "launch.yaml", env=env)  # exit 1 if the job failed by its last look
    record = run_record(work)
    assert record["invocations"], submitted.stderr[-3000:]
    invocation = record["invocations"]["demo_latest"]
    (job,) = launcher_jobs(invocation)
    assert wait_for(lambda: slurm_state(job["data"]["slurm_job_id"]) in ("FAILED", "COMPLETED"), 60) and \
        slurm_state(job["data"]["slurm_job_id"]) == "FAILED"
    status = nemotron(work, "status", env=env)
    assert f"run {record['id']}: failed" in status.stdout and "failed" in status.stdout.split("openbookqa", 1)[1]
    logs = nemotron(work, "logs", record["id"], env=env)
    assert "container-image" in logs.stdout, logs.stdout[-3000:]  # srun refused pyxis's option: the reason shows

    # The task again, succeeding: its folder holds what the container writes, and its latest Slurm job (the
    # launcher's autoresume lists each of a task's jobs in .slurm_job_id.list, the last one counts) ended well.
    folder = Path(job["data"]["remote_rundir_path"])
    shutil.copytree(FIXTURE, folder / "artifacts", dirs_exist_ok=True)
    ok = subprocess.run(["sbatch", "--parsable", "-p", "debug", "-o", "/dev/null", "--wrap", "true"],
                        capture_output=True, text=True, check=True).stdout.strip()
    assert wait_for(lambda: slurm_state(ok) == "COMPLETED", 60)
    with open(folder / ".slurm_job_id.list", "a") as f:
        f.write(f"{ok}\n")
    data = run_record(work)
    data.update(state="submitted", finished_at=None)
    (work / "runs" / record["id"] / "run.json").write_text(json.dumps(data))
    status = nemotron(work, "status", env=env)
    assert f"run {record['id']}: done" in status.stdout, status.stdout + status.stderr
    result = json.loads((work / "results/demo_latest/openbookqa.json").read_text())
    ours = json.loads((REPO / "tests/fixtures/results/smollm2_latest/openbookqa.json").read_text())
    # the Snakemake engine's shape (build_result's: every field a result of that engine has, the same schema)
    assert set(ours) <= set(result) and result["schema_version"] == ours["schema_version"]
    fingerprint = yaml.safe_load((work / "runs" / record["id"] / "demo_latest/job.yaml").read_text())["run"]["tasks"]["openbookqa"]["fingerprint"]
    assert result["task_config_sha256"] == fingerprint and result["deployment"]["id"] == f"{invocation}.0"
    harness = parse_harness_output(FIXTURE, resolve("openbookqa"))  # what the Snakemake engine reads from it
    assert result["metrics"] == harness["metrics"] and result["n_samples"] == harness["n_samples"] > 0
    summary = json.loads((work / "results/demo_latest/summary.json").read_text())
    assert summary["tasks"]["openbookqa"]["metrics"] == result["metrics"]
