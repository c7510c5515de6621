"""What reruns need of Snakemake comes from the workflow profile (profiles/default, read by every snakemake run in
the project's folder), so a plain `snakemake` plans as `--profile profiles/local` does; a run without it, or without
a config, is refused in one line naming the profile to add, before anything runs. Real snakemake, dry runs, the
stub deployment's checkpoint (no model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import BIN, REPO, copy_workflow, error_line, run
from nemotron_eval.artifacts import LocalRegistry
from nemotron_eval.deploy.stub import write_checkpoint

SHARED = {"rerun-triggers": ["mtime", "params", "software-env"], "printshellcmds": True, "show-failed-logs": True}
CONFIG = ["eval_config=local", 'overrides=["deployment=stub","run.model=stub:latest"]', 'tasks=["openbookqa"]']
TARGET = "results/stub_latest/openbookqa.json"


def test_every_profile_gets_what_reruns_need_from_the_workflow_profile_alone() -> None:
    default = yaml.safe_load((REPO / "profiles/default/config.yaml").read_text())
    assert default == SHARED  # only settings every run needs: the workflow profile's values win over --profile's
    for profile in ("local", "slurm", "slurm-local"):
        own = yaml.safe_load((REPO / "profiles" / profile / "config.v8+.yaml").read_text())
        assert not set(own) & set(SHARED), f"profiles/{profile} repeats {set(own) & set(SHARED)}"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = copy_workflow(tmp_path_factory.mktemp("profiles"))
    (work / "env.toml").write_text("")
    LocalRegistry(work / "artifacts").add("stub", write_checkpoint(work / "ckpt"))
    return work


def snakemake(work: Path, *args: str):
    return run([str(BIN / "snakemake"), *args], work, env={"NEMOTRON_ENV_FILE": str(work / "env.toml")})


def test_plain_snakemake_plans_as_the_local_profile_does(work: Path) -> None:
    plain = snakemake(work, "-n", "--cores", "8", TARGET, "--config", *CONFIG)
    profiled = snakemake(work, "-n", "--profile", "profiles/local", TARGET, "--config", *CONFIG)
    assert plain.returncode == 0 and profiled.returncode == 0, plain.stderr[-2000:] + profiled.stderr[-2000:]
    jobs = [p.stdout.split("Job stats:")[1].split("total")[0] for p in (plain, profiled)]
    assert jobs[0] == jobs[1] and "evaluate_task" in jobs[0] and "serve_model" in jobs[0]


def test_without_the_workflow_profile_it_is_refused_in_one_line(work: Path) -> None:
    proc = snakemake(work, "-n", "--workflow-profile", "none", TARGET, "--config", *CONFIG)
    line = error_line(proc)
    assert proc.returncode == 1 and "rerun triggers" in line and "--profile profiles/local" in line, line
    assert "Job stats" not in proc.stdout
    proc = snakemake(work, "-n", "--profile", "profiles/local", TARGET, "--rerun-triggers", "mtime", "--config", *CONFIG)
    assert proc.returncode == 1 and "needs mtime and params" in error_line(proc)


def test_without_a_config_or_cores_it_says_which_profile_to_add(work: Path) -> None:
    proc = snakemake(work, "-n", TARGET)
    line = error_line(proc)
    assert proc.returncode == 1 and "'eval_config'" in line and "--profile profiles/local" in line, line
    proc = snakemake(work, "-n", TARGET, "--config", *CONFIG)  # a dry run's one core cannot hold the group
    line = error_line(proc)
    assert proc.returncode == 1 and "1 core(s)" in line and "--profile profiles/local" in line, line
