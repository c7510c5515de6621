"""The front door: `nemotron eval` with the recipe's options, run records, and a run's life after submission.

Real parts only: the snakemake CLI under the command, the real harness (slow tests; the local runs against the
stub deployment, deploy.stub: a run's life is their point, not the model's numbers), the local Slurm of
scripts/local-slurm with a head job submitted through NeMo-Run (tunnel = "local", and "ssh" through the
throwaway sshd of conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import pwd
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from conftest import (
    BIN, SHARED_BENCHMARKS, STUB, copy_workflow, error_line, register_stub, run, wait_for,
)

MIRROR = Path(os.environ.get("NEMOTRON_DATA_MIRROR") or SHARED_BENCHMARKS)
LIMIT = "evaluation.nemo_evaluator_config.config.params.limit_samples"
needs_mirror = pytest.mark.skipif(not (MIRROR / "SOURCES.md").is_file(), reason=f"no benchmark mirror at {MIRROR}")


def nemotron(cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return run([str(BIN / "nemotron"), *args], cwd, {"NEMOTRON_DATA_MIRROR": str(MIRROR), **(env or {})}, timeout=timeout)


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder, and a NeMo-Run home of its own (run records of remote runs)."""
    monkeypatch.setenv("NEMORUN_HOME", str(tmp_path / "nemorun"))
    return copy_workflow(tmp_path)


def test_help_looks_like_the_recipe(work: Path) -> None:
    for args in (("nano3", "eval", "--help"), ("eval", "--help")):
        out = nemotron(work, *args).stdout
        for flag in ("-c NAME|PATH, --config", "-r PROFILE, --run", "-b PROFILE, --batch", "-d, --dry-run",
                     "-t NAME, --task", "--force-squash"):
            assert flag in out, (flag, out)
        assert out.index("options:") < out.index("Artifact Overrides:") and "run.model=NAME:ALIAS" in out


def test_dry_run_prints_eval_yaml_and_writes_nothing(work: Path) -> None:
    proc = nemotron(work, "eval", "-c", "local", "-d", "-t", "hellaswag")
    assert proc.returncode == 0, proc.stderr[-2000:]
    ev = yaml.safe_load(proc.stdout)
    assert ev["evaluation"]["tasks"] == [{"name": "hellaswag"}] and "run" not in ev and "${" not in proc.stdout
    assert "evaluate_task" in proc.stderr and "reason" in proc.stderr.lower()  # the jobs that would run, and why
    assert not any((work / d).exists() for d in ("build", "results", "runs"))


BAD = [
    ("-r with -b", ["eval", "-r", "a", "-b", "b"], None, "-b/--batch: not allowed with argument -r/--run"),
    ("unknown profile", ["eval", "-b", "clustr"], '[cluster]\nexecutor = "slurm"\n',
     "profile 'clustr' not found (did you mean 'cluster'?); profiles: cluster"),
    ("no executor", ["eval", "-b", "cluster"], '[cluster]\naccount = "a"\n', "has no 'executor'"),
    ("host does not answer", ["eval", "-c", "local", "-b", "far"],
     '[far]\nexecutor = "slurm"\ntunnel = "ssh"\nhost = "10.255.255.1"\nremote_job_dir = "/lustre/me"\n', "10.255.255.1"),
    ("missing identity", ["eval", "-c", "local", "-b", "far"],
     '[far]\nexecutor = "slurm"\ntunnel = "ssh"\nhost = "127.0.0.1"\nidentity = "/no/such/key"\nremote_job_dir = "/x"\n',
     "does not exist"),
    ("unknown task", ["eval", "-t", "hellaswg"], None, "task filter: 'hellaswg' is not in the config's evaluation.tasks or the launcher's catalog (did you mean 'hellaswag'?)"),
    ("override without =", ["eval", "run.model"], None, "override 'run.model': expected KEY=VALUE"),
]


@pytest.mark.parametrize(("what", "args", "env_toml", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_and_submits_nothing(work: Path, what: str, args: list[str], env_toml: str | None, expected: str) -> None:
    if env_toml is not None:
        (work / "env.toml").write_text(env_toml)
    started = time.monotonic()
    proc = nemotron(work, *args, timeout=60)
    assert proc.returncode != 0
    assert expected in error_line(proc)
    assert time.monotonic() - started < 20  # a host that does not answer: within 15 s
    assert not (work / "runs").exists() and not (work / "build").exists()


@pytest.mark.slow
@needs_mirror
def test_a_local_run_has_an_id_a_record_and_a_status(work: Path) -> None:
    """`nemotron eval` on this host: a run id, its record and copies, `runs`, `status`, `logs`, and the same targets
    as snakemake's. Against the stub deployment: the run's record and status are the point, not the model's numbers
    (the real model's runs are test_e2e_local's and test_faults' five-task run)."""
    register_stub(work)
    proc = nemotron(work, "eval", "-c", "local", "-t", "openbookqa", f"{LIMIT}=3", *STUB)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((work / "results/stub_latest/openbookqa.json").read_text())
    assert result["n_samples"] == 3
    [run_id] = os.listdir(work / "runs")
    folder = work / "runs" / run_id
    record = json.loads((folder / "run.json").read_text())
    assert record["state"] == "done" and record["exit_code"] == 0 and record["tasks"] == ["openbookqa"]
    # the run's own copies of what it compiled, and the request Snakemake read
    assert (folder / "stub_latest/eval.yaml").read_bytes() == (work / "build/stub_latest/eval.yaml").read_bytes()
    assert yaml.safe_load((folder / "request.yaml").read_text())["tasks"] == ["openbookqa"]
    assert "evaluate_task" in (folder / "snakemake.log").read_text()
    runs = nemotron(work, "runs").stdout.splitlines()
    assert runs[1].split()[0] == run_id and runs[1].split()[-1] == "done"
    status = nemotron(work, "status", run_id).stdout
    assert "openbookqa" in status and "done" in status and "acc" in status and "(n=3)" in status
    logs = nemotron(work, "logs", run_id, "--task", "openbookqa")
    assert logs.returncode == 0 and "openbookqa: acc" in logs.stdout
    # the same targets as snakemake: nothing left to do
    overrides = json.dumps([f"{LIMIT}=3", *STUB])  # in the command's order: later ones win
    again = run([str(BIN / "snakemake"), "--profile", "profiles/local", "--config",
                 f"overrides={overrides}", "tasks=[openbookqa]", "--", "results/stub_latest/openbookqa.json"], work)
    assert "Nothing to be done" in again.stdout + again.stderr


def our_processes(work: Path) -> list[str]:
    """Deployments, harnesses and steps still running for this project."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if proc.info["cwd"] and str(work) in proc.info["cwd"] or str(work) in cmd:
                if any(k in cmd for k in ("nemotron_eval.deploy.server", "nemotron_eval.deploy.stub", "nemotron-step",
                                          "lm-eval", "run_eval")):
                    found.append(cmd[:160])
        except psutil.Error:
            continue
    return found


@pytest.mark.slow
@needs_mirror
@pytest.mark.parametrize("sigint", [signal.SIG_DFL, signal.SIG_IGN], ids=["from a terminal", "started with SIGINT ignored"])
def test_kill_cancels_a_local_run_and_leaves_no_server(work: Path, sigint: Any) -> None:
    """`nemotron kill` of a local run in the middle of its task: cancelled, its record says so, and no deployment,
    step or harness is left. Against the stub deployment: the run's life is the point, not the model's numbers;
    each request takes 0.5 s (deployment.latency_ms) so that the task is still running when it is killed. Also for
    a run started where SIGINT is ignored (`nemotron eval &` in a script): Snakemake must not inherit that."""
    register_stub(work)
    proc = subprocess.Popen([str(BIN / "nemotron"), "eval", "-c", "local", "-t", "openbookqa", f"{LIMIT}=200", *STUB,
                             "deployment.latency_ms=500"], cwd=work,
                            env={**os.environ, "NEMOTRON_DATA_MIRROR": str(MIRROR)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    try:
        run_id = wait_for(lambda: (os.listdir(work / "runs") or [None])[0] if (work / "runs").is_dir() else None, 60)
        running = wait_for(lambda: "requests" in (s := nemotron(work, "status", run_id).stdout) and s, 300, 3)
        assert "running" in running and "/800 requests" in running  # the harness's own counters
        killed = nemotron(work, "kill", run_id)
        assert killed.returncode == 0 and "cancelled" in killed.stdout
        wait_for(lambda: not our_processes(work), 30)
        assert json.loads((work / "runs" / run_id / "run.json").read_text())["state"] == "cancelled"
        assert proc.wait(timeout=60) != 0
    finally:
        if proc.poll() is None:
            proc.kill()


def slurm_profile_toml(**extra: str) -> str:
    lines = ['executor = "slurm"', 'account = "nemotron"', 'partition = "debug"', *[f'{k} = "{v}"' for k, v in extra.items()]]
    return "[local-cluster]\n" + "\n".join(lines) + "\n"


def sacct(job: str) -> str:
    return subprocess.run(["sacct", "-j", job, "-X", "-n", "-P", "-o", "JobID,JobName,AllocTRES,State"],
                          capture_output=True, text=True).stdout


@pytest.mark.slurm
@pytest.mark.slow
@needs_mirror
def test_batch_on_the_local_cluster_then_status_fetch_and_kill(work: Path, slurm: None, tmp_path: Path) -> None:
    """The acceptance flow: -b returns a run id within 60 s; the head job runs Snakemake on the cluster, which
    submits the deployment/evaluation group job; status says done; fetch brings the result; a second run is
    killed with both its jobs. Against the stub deployment: the submission, the jobs and the records are the point
    (test_e2e_slurm runs the real model on this Slurm)."""
    register_stub(work)
    (work / "env.toml").write_text(slurm_profile_toml(tunnel="local", remote_job_dir=str(tmp_path / "cluster")))
    started = time.monotonic()
    proc = nemotron(work, "eval", "-c", "slurm-local", "-b", "local-cluster", "-t", "openbookqa", f"{LIMIT}=2", *STUB)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.monotonic() - started < 60
    run_id = proc.stdout.strip().splitlines()[-1]
    record = json.loads((work / "runs" / run_id / "run.json").read_text())
    assert record["remote_id"] and record["mode"] == "batch"
    final = wait_for(lambda: (line := nemotron(work, "status", run_id).stdout.splitlines()[0]).split()[-1] in
                     ("done", "failed", "cancelled") and line, 600, 5)
    assert final.endswith("done"), nemotron(work, "logs", run_id).stdout[-3000:]
    heads = [line for line in subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,JobName,AllocTRES,State"],
                                             capture_output=True, text=True).stdout.splitlines()]
    assert any("nemotron-eval.head" in h and "COMPLETED" in h for h in heads)
    assert any("gres/gpu=2" in h and "COMPLETED" in h for h in heads)  # the group job the head submitted
    assert nemotron(work, "fetch", run_id).returncode == 0
    assert json.loads((work / "results/stub_latest/openbookqa.json").read_text())["n_samples"] == 2
    assert "(n=2)" in nemotron(work, "status", run_id).stdout

    second = nemotron(work, "eval", "-c", "slurm-local", "-b", "local-cluster", "-t", "openbookqa", f"{LIMIT}=300",
                      *STUB, "deployment.latency_ms=500")
    second_id = second.stdout.strip().splitlines()[-1]
    remote_id = json.loads((work / "runs" / second_id / "run.json").read_text())["remote_id"]

    def group_job_running() -> str | None:
        out = subprocess.run(["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True).stdout
        return next((line.split()[0] for line in out.splitlines() if "nemotron-eval.head" not in line and "RUNNING" in line), None)

    group = wait_for(group_job_running, 300, 3)
    killed = nemotron(work, "kill", second_id)
    assert killed.returncode == 0 and "cancelled" in killed.stdout
    wait_for(lambda: "CANCELLED" in sacct(group), 120, 3)
    head = json.loads((Path(os.environ["NEMORUN_HOME"]) / "nemotron-eval/runs" / f"{remote_id}.json").read_text())["job_id"]
    wait_for(lambda: "CANCELLED" in sacct(head), 120, 3)


@pytest.mark.slurm
@pytest.mark.slow
@needs_mirror
def test_batch_through_ssh(work: Path, slurm: None, sshd: dict[str, Any], tmp_path: Path) -> None:
    """The same submission from a "laptop": through a real sshd on this machine (tunnel = "ssh"), against the stub
    deployment (the tunnel is the point)."""
    from conftest import REPO

    register_stub(work)
    user = pwd.getpwuid(os.getuid()).pw_name
    (work / "env.toml").write_text(slurm_profile_toml(
        tunnel="ssh", host="127.0.0.1", user=user, identity=sshd["identity"], remote_job_dir=str(tmp_path / "cluster"),
        venv=str(REPO / ".venv")).replace('venv = ', f'port = {sshd["port"]}\nvenv = '))
    # An SSH session does not carry this shell's environment: the data mirror on the cluster is said in the config.
    proc = nemotron(work, "eval", "-c", "slurm-local", "-b", "local-cluster", "-t", "openbookqa", f"{LIMIT}=2",
                    f"data.mirror={MIRROR}", *STUB)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = proc.stdout.strip().splitlines()[-1]
    final = wait_for(lambda: (line := nemotron(work, "status", run_id).stdout.splitlines()[0]).split()[-1] in
                     ("done", "failed", "cancelled") and line, 600, 5)
    assert final.endswith("done"), nemotron(work, "logs", run_id).stdout[-3000:]
    assert nemotron(work, "fetch", run_id).returncode == 0
    assert json.loads((work / "results/stub_latest/openbookqa.json").read_text())["n_samples"] == 2
