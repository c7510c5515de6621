"""The slurm executor: what the deployment job asks Slurm for, and the refusals that happen before anything is
submitted."""

from __future__ import annotations

import pytest

from nemotron_eval import executors
from nemotron_eval.executors.slurm import check_account, check_gpus, gpus_per_node, walltime_minutes
from nemotron_eval.core.errors import UserError


@pytest.mark.parametrize(("text", "minutes"), [("30", 30), ("04:00:00", 240), ("00:30:01", 31), ("1-00:00:00", 1440), ("10:30", 11)])
def test_walltime(text: str, minutes: int) -> None:
    assert walltime_minutes(text) == minutes


def test_walltime_and_gres_errors() -> None:
    with pytest.raises(UserError, match="execution.walltime: 'soon' is not a Slurm time"):
        walltime_minutes("soon")
    assert gpus_per_node("gpu:8") == 8 and gpus_per_node("gpu:h100:4") == 4 and gpus_per_node(None) == 0
    with pytest.raises(UserError, match="execution.gres: 'tpu:8' is not a GPU request"):
        gpus_per_node("tpu:8")


def test_recipe_config_asks_for_its_execution_section(planner, tmp_path) -> None:
    plan = planner("default", env_toml='[cluster]\naccount = "acct"\npartition = "gpu"\ntime = "02:00:00"\n', env_profile="cluster")
    assert plan.deploy_resources == {"nodes": 1, "runtime": 120, "gres": "gpu:8", "slurm_partition": "gpu", "slurm_account": "acct"}
    image = plan.images["nvcr.io+nvidia+nemo+25.11.nemotron_3_nano"]
    assert image.reference == "nvcr.io/nvidia/nemo:25.11.nemotron_3_nano"
    assert image.path == tmp_path / "build/images/nvcr.io+nvidia+nemo+25.11.nemotron_3_nano.sqsh"
    # the plan's image and the one compile writes into eval.yaml are the same file
    assert plan.model("demo_latest").eval["deployment"]["image"] == str(image.path)
    local = planner("local")
    assert local.deploy_resources == {} and local.images == {}


def test_unknown_container_runner() -> None:
    with pytest.raises(UserError, match="execution.container_runner='docker': unknown runner; valid: pyxis, enroot, apptainer, none"):
        executors.get("slurm").deployment_resources({"type": "slurm", "container_runner": "docker"})


def test_account_required_only_where_the_cluster_enforces_it() -> None:
    check_account(None, "cluster", None)
    check_account("acct", "cluster", "associations,limits")
    with pytest.raises(UserError, match=r"env.toml profile 'cluster' has no 'account', and this cluster requires one \(AccountingStorageEnforce=associations"):
        check_account(None, "cluster", "associations,limits")


def test_gpu_request_larger_than_any_node() -> None:
    check_gpus("gpu:8", "batch", ["gpu:8(S:0-1)", "gpu:4"])
    with pytest.raises(UserError, match=r"execution.gres=gpu:16: no node of partition 'batch' has more than gpu:8 \(sinfo\)"):
        check_gpus("gpu:16", "batch", ["gpu:8(S:0-1)", "gpu:4"])


def test_squash_job_resources_come_from_the_env_profile() -> None:
    squash_resources = executors.get("slurm").squash_resources
    assert squash_resources({}) == {"runtime": 60}
    assert squash_resources({"build_partition": "cpu", "build_time": "00:20:00"}) == {"runtime": 20, "slurm_partition": "cpu"}
