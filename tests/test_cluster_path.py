"""The recipe's cluster path: the profile's container is the deployment's image, output paths are absolute, a Slurm
profile names its account, catalog tasks that cannot run are refused when the plan is made, and the W&B key
reaches the submitted jobs through the environment only (eval.yaml names it)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from nemotron_eval import exporters
from nemotron_eval.config.compose import ComposeRequest, compose
from nemotron_eval.core.errors import UserError
from nemotron_eval.core.secrets import secret_variables
from nemotron_eval.executors import remote
from nemotron_eval.executors.remote import carry

from conftest import BIN, REPO, STUB, error_line, nemotron
from test_remote import base_profile, ssh_profile

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


def test_the_launcher_logs_in_as_the_profile_says_or_as_this_user_on_this_machine(planner, monkeypatch: pytest.MonkeyPatch) -> None:
    """The launcher submits with `ssh USERNAME@HOSTNAME sbatch ...`: a profile without `user` is the local user
    (not the text "None"), one on a login node (tunnel = "local") through this machine by name (a remote run's
    head job asks it from a compute node), an ssh profile through its host as its user."""
    monkeypatch.setenv("LOGNAME", "someone")
    local = planner("default", env_toml=GPU, env_profile="gpu").model("demo_latest").eval["execution"]
    assert (local["username"], local["hostname"]) == ("someone", socket.gethostname())
    ssh = GPU.replace('tunnel = "local"', 'tunnel = "ssh"\nhost = "login.example.org"\nuser = "me"')
    remote_ = planner("default", env_toml=ssh, env_profile="gpu").model("demo_latest").eval["execution"]
    assert (remote_["username"], remote_["hostname"]) == ("me", "login.example.org")


def test_a_slurm_profile_without_an_account_is_one_line(planner) -> None:
    with pytest.raises(UserError) as e:
        planner("default", env_toml=GPU.replace('account = "nemotron"\n', ""), env_profile="gpu")
    assert "env.toml profile 'gpu' has no 'account'" in str(e.value) and "\n" not in str(e.value)


def test_a_filter_adds_a_catalog_task_the_config_does_not_list() -> None:
    cfg = compose(ComposeRequest("local", REPO / "configs", tasks=["gsm8k", "hellaswag"]))
    assert [t["name"] for t in cfg["evaluation"]["tasks"]] == ["hellaswag", "gsm8k"]


def test_a_task_whose_harness_is_not_installed_and_no_runner_is_refused_by_the_plan(planner) -> None:
    with pytest.raises(UserError) as e:
        planner("local", tasks=["AIME_2025"])
    assert str(e.value) == ("task 'AIME_2025' cannot run: its harness simple_evals is not installed here and "
                            "execution.container_runner=none starts no harness container")


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
    # an address inherited from a process that has ended (a watcher's earlier run, a test worker) is not joined
    monkeypatch.setenv("WANDB_SERVICE", f"3-{os.getpid()}-unix-{tmp_path}/gone/socket")
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


def command_lines_with_the_key_until_the_end(run_id: str) -> list[Path]:
    """Every process command line (`ps`) that held KEY while the run went on."""
    seen = []
    while not remote.status(run_id).terminal:
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if KEY.encode() in cmdline.read_bytes():
                    seen.append(cmdline)
            except OSError:
                pass
        time.sleep(0.3)
    return seen


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
    seen_in_argv = command_lines_with_the_key_until_the_end(sub.id)
    assert remote.status(sub.id).state == "done"
    log = remote.logs(sub.id)
    assert f"key sha256 {hashlib.sha256(KEY.encode()).hexdigest()}" in log
    assert not seen_in_argv
    leaks = [p for root in (tmp_path, nemorun_home) for p in root.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert not leaks and KEY not in log + remote.logs(sub.id, batch=True)


@pytest.mark.slurm
def test_the_key_reaches_the_head_job_over_ssh_through_the_session_input_only(
    slurm, sshd, runs: list[str], project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nemorun_home: Path,
) -> None:
    """tunnel = "ssh" through a real sshd on localhost: the remote sbatch runs in the SSH session's environment,
    which has none of ours; the key travels on the session's standard input (`carry`) and its sha256 comes back
    from the head job, while no command line, no file on either side (NeMo-Run's experiment folder, the rsynced
    job folder, sshd's log) and no log holds the value. A second variable with spaces and quotes arrives as is."""
    odd = "a b 'c' \\d $e"
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setenv("NEMOTRON_TEST_ODD", odd)
    command = ["python", "-c", "import hashlib, os, time; print('key sha256', hashlib.sha256(os.environ['WANDB_API_KEY']"
               ".encode()).hexdigest(), 'odd', repr(os.environ['NEMOTRON_TEST_ODD']), flush=True); time.sleep(4)"]
    profile = ssh_profile(tmp_path, sshd)
    sub = remote.submit(profile, command, project_root=project, environment=["WANDB_API_KEY", "NEMOTRON_TEST_ODD"])
    runs.append(sub.id)
    seen_in_argv = command_lines_with_the_key_until_the_end(sub.id)
    log = remote.logs(sub.id)
    assert remote.status(sub.id).state == "done", log
    assert f"key sha256 {hashlib.sha256(KEY.encode()).hexdigest()} odd {odd!r}" in log
    assert not seen_in_argv
    places = (tmp_path, nemorun_home, sshd["log"].parent)
    leaks = [p for root in places for p in root.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert not leaks and KEY not in log + remote.logs(sub.id, batch=True)


def test_what_cannot_travel_on_the_session_input_is_one_line_naming_no_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", KEY[:20] + "\n" + KEY[20:])
    for names, expected in ((["WANDB_API_KEY"], "WANDB_API_KEY has a line break in its value here"),
                            (["NEMOTRON_TEST_UNSET"], "NEMOTRON_TEST_UNSET is to be passed to the head job but is not set"),
                            (["A;rm -rf ~"], "environment variable name 'A;rm -rf ~' for the head job")):
        with pytest.raises(UserError) as e:
            carry.check(names)
        assert str(e.value).startswith(expected) and KEY[:20] not in str(e.value) and "\n" not in str(e.value)


def test_the_program_reads_each_value_whole_from_its_input() -> None:
    """`carry.wrap`'s program, run by a real sh: values with spaces, quotes, backslashes and $ arrive unchanged,
    and the command line holds the names only."""
    values = {"NEMOTRON_A": "  two  spaces ", "NEMOTRON_B": "back\\slash 'q' \"qq\" $HOME `id`"}
    line = carry.wrap("env", list(values))
    assert not any(v in line for v in values.values())
    proc = subprocess.run(["sh", "-c", line], input="".join(f"{v}\n" for v in values.values()),
                          capture_output=True, text=True, timeout=30, env={"PATH": os.environ["PATH"]})
    got = dict(entry.split("=", 1) for entry in proc.stdout.splitlines() if entry.startswith("NEMOTRON_"))
    assert got == values


def test_the_secrets_a_config_names_are_the_ones_a_remote_head_job_gets() -> None:
    """By name: the endpoint's key, and env_vars entries whose variable or name looks secret; not the facts of
    where jobs run (HF_HOME from a laptop would be wrong on the cluster)."""
    config = {
        "target": {"api_endpoint": {"api_key_name": "NGC_API_KEY"}},
        "deployment": {"env_vars": {"HF_TOKEN": "host:HF_TOKEN", "MODE": "lit:fast", "JUDGE": "host:JUDGE_KEY"}},
        "evaluation": {"tasks": [{"name": "t", "envVars": {"CACHE": "runtime:HF_HOME", "MY_SECRET": "host:SOME_VALUE"}}]},
        "export": {"wandb": {"entity": "e"}},
    }
    assert secret_variables(config) == ["HF_TOKEN", "WANDB_API_KEY", "NGC_API_KEY", "JUDGE_KEY", "SOME_VALUE"]


def test_a_key_that_cannot_travel_over_ssh_is_one_line_before_anything_is_written(workflow: Path, tmp_path: Path) -> None:
    """Refused before the run is recorded or the host is asked (the host here answers nothing)."""
    profile = GPU.replace('tunnel = "local"', f'tunnel = "ssh"\nhost = "127.0.0.1"\nport = 9\nremote_job_dir = "{tmp_path}/jobs"')
    (workflow / "env.toml").write_text(profile)
    env = {"WANDB_API_KEY": KEY[:20] + "\n" + KEY[20:], "NEMORUN_HOME": str(tmp_path / "nemorun")}
    proc = nemotron(workflow, "eval", "-c", "slurm-local", "-b", "gpu", "-t", "openbookqa", *STUB, *WANDB, env=env)
    assert proc.returncode != 0 and error_line(proc).startswith("nemotron: error: WANDB_API_KEY has a line break"), proc.stderr
    assert KEY[:20] not in proc.stderr + proc.stdout
    assert not (workflow / "runs").exists()


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
