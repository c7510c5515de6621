"""The recipe's cluster path: the profile's container is the deployment's image, output paths are absolute, a Slurm
profile names its account, catalog tasks that cannot run are refused when the plan is made, and the W&B key
reaches the submitted jobs through the environment only (eval.yaml names it)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from nemotron_eval import exporters
from nemotron_eval.config.compose import ComposeRequest, compose
from nemotron_eval.core.errors import UserError
from nemotron_eval.executors import remote

from conftest import BIN, REPO, STUB, error_line, nemotron
from test_remote import base_profile

GPU = """[gpu]
executor = "slurm"
tunnel = "local"
account = "nemotron"
partition = "debug"
container = "nvcr.io/nvidia/nemo:26.02.profile"
"""
WANDB = ["execution.auto_export.destinations=[wandb]", "export.wandb.entity=e", "export.wandb.project=p"]
KEY = "k" * 20 + hashlib.sha256(str(time.time_ns()).encode()).hexdigest()[:24]  # 44 characters: a valid W&B key


def test_the_profile_container_is_the_squashed_deployment_image(planner, tmp_path: Path) -> None:
    ev = planner("default", WANDB, env_toml=GPU, env_profile="gpu").model("demo_latest").eval
    assert ev["deployment"]["image"] == str(tmp_path / "build/images/nvcr.io+nvidia+nemo+26.02.profile.sqsh")
    assert ev["deployment"]["source_image"] == "nvcr.io/nvidia/nemo:26.02.profile"
    assert ev["execution"]["output_dir"] == str(tmp_path / ".nemotron/evaluations")
    assert ev["execution"]["account"] == "nemotron"
    # the key by name where the launcher's export job reads it, from that job's environment
    assert ev["export"]["env_vars"] == {"WANDB_API_KEY": "runtime:WANDB_API_KEY"}


def test_no_credential_mapping_without_the_export(planner) -> None:
    ev = planner("default", ["execution.auto_export.destinations=[]"], env_toml=GPU, env_profile="gpu").model("demo_latest").eval
    assert "env_vars" not in ev["export"]


def test_the_image_is_no_rerun_trigger_but_the_container_is(planner) -> None:
    """Where the profile runs (host, account, output folder) changes no fingerprint; another container does."""
    base = planner("default", env_toml=GPU, env_profile="gpu").model("demo_latest").tasks
    moved = planner("default", ["run.env.host=login2", "run.env.account=other", "run.env.remote_job_dir=/elsewhere"],
                    env_toml=GPU, env_profile="gpu").model("demo_latest").tasks
    other = planner("default", ["run.env.container=nvcr.io/nvidia/nemo:26.03"], env_toml=GPU, env_profile="gpu")
    assert base == moved
    assert other.model("demo_latest").tasks["mmlu"]["fingerprint"] != base["mmlu"]["fingerprint"]


def test_a_slurm_profile_without_an_account_is_one_line(planner) -> None:
    with pytest.raises(UserError) as e:
        planner("default", env_toml=GPU.replace('account = "nemotron"\n', ""), env_profile="gpu")
    assert "env.toml profile 'gpu' has no 'account'" in str(e.value) and "\n" not in str(e.value)


def test_a_filter_adds_a_catalog_task_the_config_does_not_list() -> None:
    cfg = compose(ComposeRequest("local", REPO / "configs", tasks=["gsm8k", "hellaswag"]))
    assert [t["name"] for t in cfg["evaluation"]["tasks"]] == ["hellaswag", "gsm8k"]


@pytest.mark.parametrize(
    ("config", "overrides", "expected"),
    [
        ("local", [], "task 'AIME_2025' cannot run: its harness simple_evals is not installed here and "
                      "execution.container_runner=none starts no harness container"),
        ("default", [], "does not start harness containers (pyxis): run.engine=launcher runs it"),
    ],
)
def test_a_task_whose_harness_is_not_installed_is_refused_by_the_plan(planner, config, overrides, expected) -> None:
    with pytest.raises(UserError) as e:
        planner(config, overrides, tasks=["AIME_2025"])
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_the_launcher_engine_takes_catalog_tasks_to_their_containers(planner) -> None:
    plan = planner("default", ["run.engine=launcher"], tasks=["AIME_2025"])
    assert plan.task_names == ["AIME_2025"]


def test_a_hub_task_with_the_hub_off_is_refused_by_the_plan(planner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"task 'piqa' has no offline data .* HF_HUB_OFFLINE is set"):
        planner("local", tasks=["piqa"])
    monkeypatch.delenv("NEMOTRON_DATA_MIRROR", raising=False)
    with pytest.raises(UserError, match=r"task 'openbookqa' cannot be staged: no data mirror"):
        planner("local", ["data.mirror=null"], tasks=["openbookqa"])


def test_the_front_refuses_a_task_that_cannot_run_and_writes_nothing(workflow: Path) -> None:
    before = sorted(p.relative_to(workflow) for p in workflow.rglob("*"))
    proc = nemotron(workflow, "eval", "-d", "-c", "local", "-t", "AIME_2025")
    assert proc.returncode != 0
    assert "AIME_2025" in error_line(proc) and "simple_evals is not installed" in error_line(proc)
    assert sorted(p.relative_to(workflow) for p in workflow.rglob("*")) == before


# ---------------------------------------------------------------- the W&B key


def _no_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))


def test_the_wandb_login_goes_into_the_environment_the_jobs_inherit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`wandb login` wrote a netrc entry, WANDB_API_KEY is not set: the key wandb reads from it is put into this
    process's environment (whose children, sbatch among them, inherit it); nothing is written. The address of
    the W&B service that reading the login started is not inherited: the jobs outlive this process and its
    service (the export step failed with "Failed to connect to service on socket")."""
    import wandb
    from urllib.parse import urlparse

    _no_login(tmp_path, monkeypatch)
    host = urlparse(wandb.Settings().base_url).hostname
    (tmp_path / "netrc").write_text(f"machine {host}\n  login user\n  password {KEY}\n")
    (tmp_path / "netrc").chmod(0o600)
    auto_export = {"enabled": True, "destinations": ["wandb"]}
    try:
        assert exporters.login_for_submission(auto_export) == ["WANDB_API_KEY"]
        assert os.environ["WANDB_API_KEY"] == KEY
        assert "WANDB_SERVICE" not in os.environ
        assert wandb.setup().settings.base_url == wandb.Settings().base_url  # the host wandb logs in to
        assert exporters.login_for_submission({"enabled": True, "destinations": []}) == []
    finally:
        wandb.teardown()
        os.environ.pop("WANDB_SERVICE", None)


def test_wandb_export_without_a_login_is_one_line_before_anything_is_submitted(workflow: Path, tmp_path: Path) -> None:
    (workflow / "env.toml").write_text(GPU)
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY")}
    proc = subprocess.run(
        [str(BIN / "nemotron"), "eval", "-c", "slurm-local", "-b", "gpu", "-t", "openbookqa", *STUB, *WANDB],
        cwd=workflow, env={**env, "NETRC": str(tmp_path / "netrc")}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert "there is no W&B login here" in error_line(proc) and "nothing was submitted" in error_line(proc)
    assert not (workflow / "runs").exists()


@pytest.mark.slurm
def test_the_key_reaches_the_head_job_through_the_environment_only(
    slurm, runs: list[str], project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nemorun_home: Path,
) -> None:
    """The head job (where Snakemake runs the export step, a local rule) gets the key from sbatch, which inherits
    the submitting process's environment (tunnel = "local"): its sha256 comes back, while no file of the job or
    the project, no process's command line (`ps`) and no log holds the value."""
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    command = ["python", "-c", "import hashlib, os, time; print('key sha256', hashlib.sha256(os.environ['WANDB_API_KEY']"
               ".encode()).hexdigest(), flush=True); time.sleep(4)"]
    sub = remote.submit(remote.parse_profile("local-slurm", base_profile(tmp_path)), command, project_root=project)
    runs.append(sub.id)
    seen_in_argv = []
    while not remote.status(sub.id).terminal:
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if KEY.encode() in cmdline.read_bytes():
                    seen_in_argv.append(cmdline)
            except OSError:
                pass
        time.sleep(0.3)
    assert remote.status(sub.id).state == "done"
    log = remote.logs(sub.id)
    assert f"key sha256 {hashlib.sha256(KEY.encode()).hexdigest()}" in log
    assert not seen_in_argv
    leaks = [p for root in (tmp_path, nemorun_home) for p in root.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert not leaks and KEY not in log + remote.logs(sub.id, batch=True)


@pytest.mark.slurm
def test_a_submission_slurm_refused_says_why_in_status_and_logs(slurm, workflow: Path, tmp_path: Path) -> None:
    """The head job asks for a partition the local Slurm does not have: sbatch refuses it, and the run record
    keeps sbatch's reason, which `nemotron status` and `nemotron logs` print (no log exists)."""
    (workflow / "env.toml").write_text(GPU.replace('"debug"', '"nosuchpartition"') + f'remote_job_dir = "{tmp_path}/jobs"\n')
    env = {"WANDB_MODE": "offline", "NEMORUN_HOME": str(tmp_path / "nemorun")}
    proc = nemotron(workflow, "eval", "-c", "slurm-local", "-b", "gpu", "-t", "openbookqa", *STUB, env=env)
    assert proc.returncode != 0 and "Invalid partition" in error_line(proc)
    (run_id,) = [p.name for p in (workflow / "runs").iterdir()]
    status = nemotron(workflow, "status", run_id, env=env)
    assert f"run {run_id}: failed" in status.stdout and "why:" in status.stdout and "Invalid partition" in status.stdout
    logs = nemotron(workflow, "logs", run_id, env=env)
    assert logs.returncode == 0 and "was not submitted" in logs.stdout and "Invalid partition" in logs.stdout
