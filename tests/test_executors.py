"""The executor registry: `execution.type` names a registered executor, each with its config group file and
Snakemake profile; what each knows (resources, checks, wrapping, the deployment's host, job ids, status and
cancellation). The slurm executor's own arithmetic is tests/test_executor_slurm.py's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from nemotron_eval import executors
from nemotron_eval.front import runs
from nemotron_eval.deploy import types
from nemotron_eval.core.errors import UserError

from conftest import REPO, slurm_problem, wait_for

SUBMITTED = "Job 3 has been submitted with SLURM jobid 4711 (log: .snakemake/slurm_logs/rule_serve/4711.log)."


def test_registered_executors_and_an_unknown_one() -> None:
    assert executors.names() == ("local", "slurm")
    assert executors.for_execution({}).name == "local"
    with pytest.raises(UserError, match=r"^execution.type='lepton': not an executor; registered: local, slurm$"):
        executors.get("lepton")
    with pytest.raises(UserError, match=r"did you mean 'slurm'"):
        executors.get("slurn")


def test_the_config_refuses_an_unregistered_executor_in_one_line(planner) -> None:
    with pytest.raises(UserError) as e:
        planner("local", ["execution.type=lepton"], env_toml="")
    assert "execution.type" in str(e.value) and "registered: local, slurm" in str(e.value) and "\n" not in str(e.value)


def test_each_executor_has_its_config_group_file_and_profile() -> None:
    """Adding an executor = its module, configs/execution/<name>(.yaml|/), profiles/<name>/."""
    group = REPO / "configs" / "execution"
    for name in executors.names():
        files = [group / f"{name}.yaml"] if (group / f"{name}.yaml").is_file() else sorted((group / name).glob("*.yaml"))
        assert files, f"no configs/execution/{name}.yaml or configs/execution/{name}/"
        for f in files:
            assert yaml.safe_load(f.read_text())["type"] == name, f
        assert (REPO / executors.get(name).profile / "config.v8+.yaml").is_file()
    for f in group.rglob("*.yaml"):
        executors.get(yaml.safe_load(f.read_text())["type"])  # every option names a registered executor
    for profile in (REPO / "profiles").glob("*/config.v8+.yaml"):  # an executor's profile (not the workflow's)
        snakemake_executor = yaml.safe_load(profile.read_text()).get("executor", "local")
        assert executors.profile_executor(profile.parent.name) == snakemake_executor, profile  # picked by name


def test_snakemake_profile_for_a_config() -> None:
    slurm, local = executors.get("slurm"), executors.get("local")
    assert slurm.snakemake_profile("slurm-local", REPO) == "profiles/slurm-local"
    assert slurm.snakemake_profile("default", REPO) == "profiles/slurm"
    assert slurm.snakemake_profile("/elsewhere/my-config.yaml", REPO) == "profiles/slurm"
    assert local.snakemake_profile("slurm-local", REPO) == "profiles/local"
    assert executors.for_profile("profiles/slurm-local").name == "slurm"
    assert executors.for_profile("profiles/local").name == "local"


def test_resources_by_executor() -> None:
    execution = {"type": "slurm", "num_nodes": 2, "walltime": "01:00:00", "gres": "gpu:4", "partition": "gpu"}
    assert executors.get("slurm").deployment_resources(execution) == {
        "nodes": 2, "runtime": 60, "gres": "gpu:4", "slurm_partition": "gpu"}
    assert executors.get("local").deployment_resources({**execution, "type": "local"}) == {}
    assert executors.get("local").squash_resources({"build_partition": "cpu"}) == {}
    assert executors.get("slurm").squash_resources({"build_partition": "cpu"}) == {"runtime": 60, "slurm_partition": "cpu"}


def _generic_plan(planner, tmp_path: Path, executor: str, runner: str) -> types.DeploymentPlan:
    cfg = planner("default", [f"execution.container_runner={runner}"], env_toml="").model("demo_latest").eval
    cfg["execution"]["type"] = executor
    return types.get("generic").plan(cfg, types.Runtime(run_dir=tmp_path, deployment_id="d", environ={}))


def test_wrapping_and_host_by_executor(planner, tmp_path: Path) -> None:
    on_slurm = _generic_plan(planner, tmp_path, "slurm", "apptainer")
    assert on_slurm.argv[0] == "srun" and "apptainer" in on_slurm.argv  # a job step of its own
    assert on_slurm.host is None and on_slurm.executor == "slurm"  # the allocation's first node, at run time
    here = _generic_plan(planner, tmp_path, "local", "apptainer")
    assert here.argv[0] == "apptainer" and here.host == "127.0.0.1"
    assert executors.get("slurm").deployment_host({"SLURMD_NODENAME": "gpu07"}) == "gpu07"
    assert executors.get("local").deployment_host({"SLURMD_NODENAME": "gpu07"}) == "127.0.0.1"
    with pytest.raises(UserError, match=r"^execution.container_runner=pyxis needs execution.type=slurm; "
                                        r"execution.type='local' can use: enroot, apptainer, none$"):
        _generic_plan(planner, tmp_path, "local", "pyxis")


def test_job_ids_in_a_runs_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert executors.get("slurm").job_ids(SUBMITTED) == ["4711"]
    assert executors.get("local").job_ids(SUBMITTED) == []
    monkeypatch.chdir(tmp_path)
    run = runs.Run(id=runs.new_id(), created_at=runs.now(), command=["nemotron"], config="slurm-local", mode="local",
                   models=[], tasks=[], targets=[], snakemake_profile="profiles/slurm-local")
    for line in (SUBMITTED, "unrelated", SUBMITTED.replace("4711", "4712"), SUBMITTED):
        runs.note_output(run, line)
    assert runs.load(run.id).jobs == ["4711", "4712"]
    # a record written before the executors had names keeps its Slurm job ids
    record = run.folder / "run.json"
    record.write_text(record.read_text().replace('"jobs"', '"slurm_jobs"'))
    assert runs.load(run.id).jobs == ["4711", "4712"]


@pytest.mark.slurm
def test_slurm_job_status_and_cancel(tmp_path: Path) -> None:
    """The real local Slurm (scripts/local-slurm up): a queued job's state, then cancelled."""
    problem = slurm_problem()
    if problem:
        pytest.skip(problem)
    slurm = executors.get("slurm")
    job = subprocess.run(["sbatch", "--parsable", "--job-name=executor-test", "--time=2",
                          f"--output={tmp_path / 'slurm-%j.out'}", "--wrap", "sleep 120"],
                         capture_output=True, text=True, check=True, timeout=30).stdout.strip().split(";")[0]
    try:
        assert slurm.job_ids(SUBMITTED.replace("4711", job)) == [job]
        state = wait_for(lambda: slurm.job_states([job]).get(job), 60, 1)
        assert state in ("PENDING", "RUNNING"), state
        slurm.cancel([job])
        assert wait_for(lambda: slurm.job_states([job]).get(job, "").startswith("CANCELLED"), 60, 1)
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)
