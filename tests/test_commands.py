"""Deployment command lines: generic/vllm/none/local under pyxis/enroot/apptainer/none, one node and several."""

from __future__ import annotations

import copy
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nemotron_eval.deploy.commands import container_runner_wrap, deployment_command, unescape_dollars
from nemotron_eval.errors import UserError

SQSH = "/shared/build/images/nvcr.io+nvidia+nemo+25.11.nemotron_3_nano.sqsh"
NVIDIA_COMMAND = (
    "bash -c 'export TRITON_CACHE_DIR=/tmp/triton_cache_$$SLURM_NODEID; "
    "python /opt/Export-Deploy/scripts/deploy/nlp/deploy_ray_inframework.py --megatron_checkpoint /checkpoint/ "
    "--num_gpus 8 --tensor_model_parallel_size 2 --expert_model_parallel_size 8 --port 1235 --num_replicas 1'"
)
SHELL_COMMAND = NVIDIA_COMMAND.replace("$$", "$")


def generic_cfg(runner: str = "pyxis", **execution: Any) -> dict[str, Any]:
    """eval.yaml's deployment and execution sections as NVIDIA's recipe compiles them (configs/default.yaml)."""
    cfg: dict[str, Any] = {
        "deployment": {
            "type": "generic", "multiple_instances": True, "image": "nvcr.io/nvidia/nemo:25.11.nemotron_3_nano",
            "checkpoint_path": "/lustre/ckpt/rl/v3", "port": 1235, "served_model_name": "nemo-model",
            "health_check_path": "/v1/health", "readiness_timeout_s": 3600, "command": NVIDIA_COMMAND,
            "endpoints": {"chat": "/v1/chat/completions/", "completions": "/v1/completions/", "health": "/v1/health"},
        },
        "execution": {
            "type": "slurm", "num_nodes": 1, "ntasks_per_node": 1, "gres": "gpu:8", "container_runner": runner,
            "deployment": {"n_tasks": 1},
            "env_vars": {"deployment": {"HF_HOME": "/cache/huggingface", "VLLM_CACHE_ROOT": "/cache/vllm"}},
            "mounts": {"deployment": {"/lustre": "/lustre"}, "evaluation": {"/lustre": "/lustre"}, "mount_home": False,
                       "extra": ["/scratch/data:/data"]},
        },
    }
    cfg["execution"].update(execution)
    return cfg


def vllm_cfg(runner: str = "pyxis", **deployment: Any) -> dict[str, Any]:
    cfg = generic_cfg(runner)
    cfg["deployment"] = {
        "type": "vllm", "multiple_instances": False, "image": "vllm/vllm-openai:latest", "checkpoint_path": "/lustre/ckpt/rl/v3",
        "port": 8000, "served_model_name": "model", "tensor_parallel_size": 8, "pipeline_parallel_size": 1,
        "data_parallel_size": 1, "extra_args": "--max-model-len 8192 --trust-remote-code", "health_check_path": "/health",
        "readiness_timeout_s": 1800, "endpoints": {"completions": "/v1/completions", "health": "/health"}, **deployment,
    }
    return cfg


MOUNTS = "--container-mounts=/lustre/ckpt/rl/v3:/checkpoint,/lustre:/lustre,/scratch/data:/data"
SRUN_1 = ["srun", "--overlap", "--mem=0", "--nodes", "1", "--ntasks", "1", "--ntasks-per-node", "1", "--kill-on-bad-exit=1"]


def test_nvidia_default_generic_under_pyxis() -> None:
    plan = deployment_command(generic_cfg(), image=SQSH, environ={})
    assert plan.argv == [
        *SRUN_1, f"--container-image={SQSH}", MOUNTS, "--container-env=HF_HOME,VLLM_CACHE_ROOT", "--no-container-mount-home",
        "bash", "-c", SHELL_COMMAND,
    ]
    assert "$$" not in plan.argv[-1] and "triton_cache_$SLURM_NODEID;" in plan.argv[-1]
    assert plan.env == {"HF_HOME": "/cache/huggingface", "VLLM_CACHE_ROOT": "/cache/vllm"}
    assert plan.host is None and plan.model_id == "nemo-model" and plan.readiness_timeout_s == 3600
    assert plan.urls("node017") == {
        "url": "http://node017:1235",
        "completions_url": "http://node017:1235/v1/completions/",
        "health_url": "http://node017:1235/v1/health",
    }
    with pytest.raises(ValueError, match="host"):
        plan.urls()


def test_pyxis_without_a_squashed_file_imports_the_registry_image() -> None:
    plan = deployment_command(generic_cfg(), environ={})
    assert "--container-image=nvcr.io#nvidia/nemo:25.11.nemotron_3_nano" in plan.argv


def test_the_shell_sees_the_node_id_once_per_task() -> None:
    """`$$SLURM_NODEID` reaches bash as `$SLURM_NODEID`, expanded by each task's shell, not by the serve step."""
    cfg = generic_cfg("none", type="local")
    cfg["deployment"]["command"] = "bash -c 'export CACHE=/tmp/triton_cache_$$SLURM_NODEID; echo $$CACHE pid-$$$$'"
    plan = deployment_command(cfg, environ={})
    assert plan.argv == ["bash", "-c", "bash -c 'export CACHE=/tmp/triton_cache_$SLURM_NODEID; echo $CACHE pid-$$'"]
    out = subprocess.run(plan.argv, capture_output=True, text=True, env={"SLURM_NODEID": "3", "PATH": "/usr/bin:/bin"}).stdout
    assert out.startswith("/tmp/triton_cache_3 pid-") and out.split("pid-")[1].strip().isdigit()
    assert unescape_dollars("a $$X $$$$ $Y") == "a $X $$ $Y"


def test_generic_under_enroot_and_apptainer_on_one_node() -> None:
    enroot = deployment_command(generic_cfg("enroot", type="slurm"), image=SQSH, environ={"HF_TOKEN": "hf_secret_value"})
    assert enroot.argv[len(SRUN_1):] == [
        "enroot", "start", "--mount", "/lustre/ckpt/rl/v3:/checkpoint", "--mount", "/lustre:/lustre", "--mount", "/scratch/data:/data",
        "--env", "HF_HOME", "--env", "HF_TOKEN", "--env", "VLLM_CACHE_ROOT", SQSH, "bash", "-c", SHELL_COMMAND,
    ]
    assert enroot.argv[:len(SRUN_1)] == SRUN_1  # multiple_instances on Slurm: through srun, even on one node
    apptainer = deployment_command(generic_cfg("apptainer"), environ={})
    assert apptainer.argv[len(SRUN_1):] == [
        "apptainer", "exec", "--nv", "--no-home", "--bind", "/lustre/ckpt/rl/v3:/checkpoint", "--bind", "/lustre:/lustre",
        "--bind", "/scratch/data:/data", "docker://nvcr.io/nvidia/nemo:25.11.nemotron_3_nano", "bash", "-c", SHELL_COMMAND,
    ]


def test_enroot_needs_the_squashed_image() -> None:
    with pytest.raises(UserError, match="squash"):
        deployment_command(generic_cfg("enroot"), environ={})


def test_runner_none_runs_on_the_host_without_mounts() -> None:
    cfg = generic_cfg("none")
    cfg["deployment"]["multiple_instances"] = False
    plan = deployment_command(cfg, environ={})
    assert plan.argv == ["bash", "-c", SHELL_COMMAND]
    local = deployment_command(generic_cfg("none", type="local"), environ={})
    assert local.argv == ["bash", "-c", SHELL_COMMAND] and local.host == "127.0.0.1"
    assert local.urls()["health_url"] == "http://127.0.0.1:1235/v1/health"


@pytest.mark.parametrize("runner", ["pyxis", "enroot", "apptainer", "none"])
def test_several_nodes_span_the_allocation(runner: str) -> None:
    cfg = generic_cfg(runner, num_nodes=2, deployment={"n_tasks": 4})
    plan = deployment_command(cfg, image=SQSH if runner != "apptainer" else None, environ={})
    assert plan.argv[:10] == ["srun", "--overlap", "--mem=0", "--nodes", "2", "--ntasks", "4", "--ntasks-per-node", "2", "--kill-on-bad-exit=1"]
    assert plan.argv[-3:] == ["bash", "-c", SHELL_COMMAND]
    container_flags = [a for a in plan.argv if a.startswith("--container")]
    assert bool(container_flags) == (runner == "pyxis")
    assert plan.host is None  # the first node, resolved by the serve step


def test_n_tasks_must_divide_over_the_nodes() -> None:
    with pytest.raises(UserError, match=r"execution.deployment.n_tasks=3"):
        deployment_command(generic_cfg(num_nodes=2, deployment={"n_tasks": 3}), image=SQSH, environ={})


def test_ntasks_per_node_without_n_tasks() -> None:
    cfg = generic_cfg(num_nodes=2, ntasks_per_node=8)
    del cfg["execution"]["deployment"]
    assert deployment_command(cfg, image=SQSH, environ={}).argv[:10] == [
        "srun", "--overlap", "--mem=0", "--nodes", "2", "--ntasks", "16", "--ntasks-per-node", "8", "--kill-on-bad-exit=1"]


@pytest.mark.parametrize("runner", ["pyxis", "enroot", "apptainer", "none"])
def test_vllm(runner: str) -> None:
    plan = deployment_command(vllm_cfg(runner), image=SQSH if runner in ("pyxis", "enroot") else None, environ={})
    checkpoint = "/lustre/ckpt/rl/v3" if runner == "none" else "/checkpoint"
    assert shlex.split(plan.argv[-1]) == [
        "vllm", "serve", checkpoint, "--tensor-parallel-size", "8", "--pipeline-parallel-size", "1", "--data-parallel-size", "1",
        "--port", "8000", "--served-model-name", "model", "--max-model-len", "8192", "--trust-remote-code",
    ]
    assert plan.argv[-3:-1] == ["bash", "-c"]
    assert plan.urls("gpu01")["completions_url"] == "http://gpu01:8000/v1/completions"
    assert plan.urls("gpu01")["health_url"] == "http://gpu01:8000/health"
    assert plan.readiness_timeout_s == 1800
    if runner == "pyxis":
        assert plan.argv[:len(SRUN_1)] == SRUN_1 and MOUNTS in plan.argv
    if runner == "apptainer":
        assert "docker://vllm/vllm-openai:latest" in plan.argv
    if runner == "none":
        assert plan.argv[0] == "bash"  # one node, multiple_instances false: no srun


def test_vllm_on_several_nodes_is_refused() -> None:
    cfg = vllm_cfg()
    cfg["execution"]["num_nodes"] = 2
    with pytest.raises(UserError, match="deployment.type=vllm runs on one node"):
        deployment_command(cfg, image=SQSH, environ={})


def test_none_publishes_the_existing_endpoint() -> None:
    cfg = {"deployment": {"type": "none", "url": "https://llm.example.com/v1/completions", "served_model_name": "m",
                          "api_key_name": "MY_KEY", "checkpoint_path": "/x"}, "execution": {"container_runner": "pyxis"}}
    plan = deployment_command(cfg)
    assert plan.argv == [] and plan.api_key_name == "MY_KEY" and plan.model_id == "m"
    assert plan.urls() == {"url": "https://llm.example.com", "completions_url": "https://llm.example.com/v1/completions",
                           "health_url": "https://llm.example.com/health"}


def test_local_is_our_cpu_server(tmp_path: Path) -> None:
    cfg = {"deployment": {"type": "local", "checkpoint_path": "/ck", "served_model_name": "smol", "port": 0, "dtype": "bfloat16"},
           "execution": {"type": "local", "container_runner": "none"}}
    plan = deployment_command(cfg, server_endpoint_file=tmp_path / "e.json")
    assert plan.argv[:3] == [sys.executable, "-m", "nemotron_eval.deploy.server"]
    args = plan.argv[3:]
    assert args[args.index("--checkpoint") + 1] == "/ck" and args[args.index("--dtype") + 1] == "bfloat16"
    assert args[args.index("--endpoint-file") + 1] == str(tmp_path / "e.json")
    assert args[args.index("--served-model-name") + 1] == "smol"
    assert plan.model_id == "smol" and plan.host == "127.0.0.1"


def test_secrets_pass_by_name_never_by_value() -> None:
    cfg = generic_cfg()
    cfg["execution"]["env_vars"]["deployment"].update({"NGC_API_KEY": "host:NGC_API_KEY", "WANDB_API_KEY": "$MY_WANDB"})
    environ = {"HF_TOKEN": "hf_abcdefSECRET", "NGC_API_KEY": "ngc_SECRET", "MY_WANDB": "wandb_SECRET"}
    plan = deployment_command(cfg, image=SQSH, environ=environ)
    assert "--container-env=HF_HOME,HF_TOKEN,NGC_API_KEY,VLLM_CACHE_ROOT,WANDB_API_KEY" in plan.argv
    assert not any("SECRET" in part for part in [*plan.argv, *plan.env.values(), repr(plan)])
    assert plan.env_from_host == {"NGC_API_KEY": "NGC_API_KEY", "WANDB_API_KEY": "MY_WANDB"}
    env = plan.process_env(environ)  # only the serve step's process sees the values
    assert env["WANDB_API_KEY"] == "wandb_SECRET" and env["HF_HOME"] == "/cache/huggingface"


def test_a_secret_value_in_the_config_is_refused() -> None:
    cfg = generic_cfg()
    cfg["execution"]["env_vars"]["deployment"]["HF_TOKEN"] = "hf_abcdef"
    with pytest.raises(UserError, match=r"execution.env_vars.deployment.HF_TOKEN: .*host:HF_TOKEN") as e:
        deployment_command(cfg, image=SQSH, environ={})
    assert "hf_abcdef" not in str(e.value)


def test_unknown_runner_names_the_key_and_the_valid_ones() -> None:
    with pytest.raises(UserError, match=r"execution.container_runner='pyxsi'.*pyxis, enroot, apptainer, none.*did you mean 'pyxis'"):
        deployment_command(generic_cfg("pyxsi"), environ={})
    with pytest.raises(UserError, match="execution.container_runner='docker'"):
        container_runner_wrap("docker", "img", "true", {}, [])


def test_pyxis_needs_slurm() -> None:
    with pytest.raises(UserError, match="container_runner=pyxis needs execution.type=slurm"):
        deployment_command(generic_cfg("pyxis", type="local"), environ={})


def test_unknown_deployment_type_and_missing_command() -> None:
    cfg = generic_cfg()
    cfg["deployment"]["type"] = "vlm"
    with pytest.raises(UserError, match=r"deployment.type='vlm'.*did you mean 'vllm'"):
        deployment_command(cfg)
    cfg = copy.deepcopy(generic_cfg())
    cfg["deployment"]["command"] = "???"
    with pytest.raises(UserError, match="deployment.command is required"):
        deployment_command(cfg, image=SQSH)


def test_bad_extra_mount_is_named() -> None:
    cfg = generic_cfg()
    cfg["execution"]["mounts"]["extra"] = ["/data:"]
    with pytest.raises(UserError, match="execution.mounts.extra"):
        deployment_command(cfg, image=SQSH, environ={})
    cfg["execution"]["mounts"]["extra"] = ["/models"]
    assert "--container-mounts=/lustre/ckpt/rl/v3:/checkpoint,/lustre:/lustre,/models:/models" in deployment_command(
        cfg, image=SQSH, environ={}).argv


def test_wrap_directly() -> None:
    assert container_runner_wrap("apptainer", "x.sif", "nvidia-smi", {"/a": "/b"}, ["HF_TOKEN"], gpus=0) == [
        "apptainer", "exec", "--no-home", "--bind", "/a:/b", "x.sif", "bash", "-c", "nvidia-smi"]
    assert container_runner_wrap("pyxis", "x.sqsh", "true", {}, [], mount_home=True) == [
        *SRUN_1, "--container-image=x.sqsh", "--container-mount-home", "bash", "-c", "true"]
    assert container_runner_wrap("none", None, "true", {}, []) == ["bash", "-c", "true"]
