"""Deployment types (local, generic, vllm, none) under the container runners, planned from eval.yaml as the
compile chain really writes it (the plan that the rules write byte for byte), never from a hand-written shape.

pyxis, enroot and apptainer cannot run here: their command lines are checked exactly, as text."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from nemotron_eval.deploy import types
from nemotron_eval.executors.runners import container_runner_wrap, unescape_dollars
from nemotron_eval.core.errors import UserError

from conftest import nemotron, snakemake

SHELL_COMMAND = (
    "bash -c 'export TRITON_CACHE_DIR=/tmp/triton_cache_$SLURM_NODEID; "
    "python /opt/Export-Deploy/scripts/deploy/nlp/deploy_ray_inframework.py --megatron_checkpoint /checkpoint/ "
    "--num_gpus 8 --tensor_model_parallel_size 2 --expert_model_parallel_size 8 --port 1235 --num_replicas 1'"
)
SRUN_1 = ["srun", "--overlap", "--mem=0", "--nodes", "1", "--ntasks", "1", "--ntasks-per-node", "1", "--kill-on-bad-exit=1"]
PROFILE = '[cluster]\naccount = "acct"\npartition = "gpu"\nmounts = ["/scratch/data:/data"]\n'


def runtime(tmp_path: Path, environ: dict[str, str] | None = None) -> types.Runtime:
    return types.Runtime(run_dir=tmp_path / "run", deployment_id="d-1", environ=environ or {})


def plan_of(eval_cfg: dict[str, Any], tmp_path: Path, environ: dict[str, str] | None = None) -> types.DeploymentPlan:
    return types.get(eval_cfg["deployment"]["type"]).plan(eval_cfg, runtime(tmp_path, environ))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Any]]]:
    """eval.yaml of NVIDIA's recipe config (configs/default.yaml) for pyxis, enroot and apptainer, each built by
    the snakemake CLI in its own working directory with an env.toml profile that adds a mount."""
    from conftest import copy_workflow, make_checkpoint

    out = {}
    for runner in ("pyxis", "enroot", "apptainer"):
        work = copy_workflow(tmp_path_factory.mktemp(runner))
        (work / "env.toml").write_text(PROFILE)
        ck = make_checkpoint(work.parent / "ckpt")
        assert nemotron(work, "artifacts", "add", "rl", str(ck)).returncode == 0
        proc = snakemake(work, "build/rl_latest/eval.yaml", "--config", "eval_config=default", "env_profile=cluster",
                         f'overrides=["execution.container_runner={runner}"]')
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[runner] = (work, yaml.safe_load((work / "build/rl_latest/eval.yaml").read_text()))
    return out


def test_pyxis_starts_the_absolute_squashed_image(compiled, tmp_path: Path) -> None:
    work, cfg = compiled["pyxis"]
    sqsh = work / "build/images/nvcr.io+nvidia+nemo+25.11.nemotron_3_nano.sqsh"
    assert cfg["deployment"]["image"] == str(sqsh) and Path(cfg["deployment"]["image"]).is_absolute()
    assert cfg["deployment"]["source_image"] == "nvcr.io/nvidia/nemo:25.11.nemotron_3_nano"
    ck = work.parent / "ckpt"
    plan = plan_of(cfg, tmp_path)
    assert plan.argv == [
        *SRUN_1, f"--container-image={sqsh}", f"--container-mounts={ck}:/checkpoint,/lustre:/lustre,/scratch/data:/data",
        "--container-env=HF_HOME,VLLM_CACHE_ROOT", "--no-container-mount-home", "bash", "-c", SHELL_COMMAND,
    ]
    assert plan.env == {"HF_HOME": "/cache/huggingface", "VLLM_CACHE_ROOT": "/cache/vllm"}
    assert plan.host is None and plan.model_id == "nemo-model" and plan.readiness_timeout_s == 3600
    assert plan.urls("node017") == {"url": "http://node017:1235", "completions_url": "http://node017:1235/v1/completions",
                                    "health_url": "http://node017:1235/v1/health"}
    with pytest.raises(ValueError, match="host"):
        plan.urls()


def test_enroot_starts_the_same_file(compiled, tmp_path: Path) -> None:
    work, cfg = compiled["enroot"]
    sqsh = work / "build/images/nvcr.io+nvidia+nemo+25.11.nemotron_3_nano.sqsh"
    ck = work.parent / "ckpt"
    plan = plan_of(cfg, tmp_path, {"HF_TOKEN": "hf_secret_value"})
    assert plan.argv == [
        *SRUN_1, "enroot", "start", "--mount", f"{ck}:/checkpoint", "--mount", "/lustre:/lustre", "--mount", "/scratch/data:/data",
        "--env", "HF_HOME", "--env", "HF_TOKEN", "--env", "VLLM_CACHE_ROOT", str(sqsh), "bash", "-c", SHELL_COMMAND,
    ]
    assert "hf_secret_value" not in repr(plan)


def test_apptainer_pulls_the_registry_image(compiled, tmp_path: Path) -> None:
    work, cfg = compiled["apptainer"]
    assert cfg["deployment"]["image"] == "nvcr.io/nvidia/nemo:25.11.nemotron_3_nano" and "source_image" not in cfg["deployment"]
    ck = work.parent / "ckpt"
    assert plan_of(cfg, tmp_path).argv == [
        *SRUN_1, "apptainer", "exec", "--nv", "--no-home", "--bind", f"{ck}:/checkpoint", "--bind", "/lustre:/lustre",
        "--bind", "/scratch/data:/data", "docker://nvcr.io/nvidia/nemo:25.11.nemotron_3_nano", "bash", "-c", SHELL_COMMAND,
    ]


def test_the_shell_sees_the_node_id_once_per_task(planner, tmp_path: Path) -> None:
    """`$$SLURM_NODEID` reaches bash as `$SLURM_NODEID`, expanded by each task's shell, not by the serve step."""
    cfg = planner("default", ["execution.type=local", "execution.container_runner=none",
                              "deployment.command=bash -c 'export CACHE=/tmp/triton_cache_$$SLURM_NODEID; echo $$CACHE pid-$$$$'"]
                  ).model("demo_latest").eval
    plan = plan_of(cfg, tmp_path)
    assert plan.argv == ["bash", "-c", "bash -c 'export CACHE=/tmp/triton_cache_$SLURM_NODEID; echo $CACHE pid-$$'"]
    out = subprocess.run(plan.argv, capture_output=True, text=True, env={"SLURM_NODEID": "3", "PATH": "/usr/bin:/bin"}).stdout
    assert out.startswith("/tmp/triton_cache_3 pid-") and out.split("pid-")[1].strip().isdigit()
    assert unescape_dollars("a $$X $$$$ $Y") == "a $X $$ $Y"


@pytest.mark.parametrize("runner", ["pyxis", "enroot", "apptainer", "none"])
def test_several_nodes_span_the_allocation(planner, tmp_path: Path, runner: str) -> None:
    cfg = planner("default", [f"execution.container_runner={runner}", "execution.num_nodes=2",
                              "execution.deployment.n_tasks=4"]).model("demo_latest").eval
    plan = plan_of(cfg, tmp_path)
    assert plan.argv[:10] == ["srun", "--overlap", "--mem=0", "--nodes", "2", "--ntasks", "4", "--ntasks-per-node", "2", "--kill-on-bad-exit=1"]
    assert plan.argv[-3:] == ["bash", "-c", SHELL_COMMAND]
    assert bool([a for a in plan.argv if a.startswith("--container")]) == (runner == "pyxis")
    assert plan.host is None  # the first node, resolved by the serve step


def test_instances_and_tasks_per_node(planner, tmp_path: Path) -> None:
    """Refused when the plan is made, before any model is compiled; a hand-edited eval.yaml still is, when served."""
    with pytest.raises(UserError, match=r"execution.num_instances=2: this pipeline starts one deployment per model"):
        planner("default", ["execution.num_instances=2"])
    with pytest.raises(UserError, match=r"execution.deployment.n_tasks=3"):
        planner("default", ["execution.num_nodes=2", "execution.deployment.n_tasks=3"])
    with pytest.raises(UserError, match=r"execution.num_instances=0: a whole number >= 1"):  # refused by the plan's schema
        planner("default", ["execution.num_instances=0"])
    edited = planner("default").model("demo_latest").eval
    edited["execution"]["num_instances"] = 2
    with pytest.raises(UserError, match=r"execution.num_instances=2: this pipeline starts one deployment per model"):
        plan_of(edited, tmp_path)


VLLM_CONFIG = """
defaults:
  - execution: slurm/default
  - deployment: vllm
  - _self_
run:
  model: demo:latest
  env: {host: null, user: null, account: acct, partition: gpu, time: "01:00:00", remote_job_dir: /lustre/me, mounts: []}
evaluation:
  tasks: [{name: hellaswag}]
"""


@pytest.mark.parametrize("runner", ["pyxis", "apptainer", "none"])
def test_vllm_command_is_the_config_template(planner, tmp_path: Path, runner: str) -> None:
    (tmp_path / "vllm.yaml").write_text(VLLM_CONFIG)
    overrides = [f"execution.container_runner={runner}", "deployment.extra_args=--max-model-len 8192"]
    if runner == "none":
        overrides.append("deployment.hf_model_handle=${deployment.checkpoint_path}")
    p = planner(str(tmp_path / "vllm.yaml"), overrides)
    cfg = p.model("demo_latest").eval
    plan = plan_of(cfg, tmp_path)
    model = str(tmp_path / "ckpt/demo") if runner == "none" else "/checkpoint"
    assert plan.argv[-1].split() == [
        "vllm", "serve", model, "--tensor-parallel-size=8", "--pipeline-parallel-size=1", "--data-parallel-size=1",
        "--port", "8000", "--trust-remote-code", "--served-model-name", "model", "--gpu-memory-utilization", "0.95",
        "--max-model-len", "8192",
    ]
    assert plan.urls("gpu01")["completions_url"] == "http://gpu01:8000/v1/completions"
    if runner == "pyxis":
        assert cfg["deployment"]["image"].endswith("/build/images/docker.io+vllm+vllm-openai+latest.sqsh")
    if runner == "apptainer":
        assert "docker://vllm/vllm-openai:latest" in plan.argv
    assert plan.argv[:len(SRUN_1)] == SRUN_1  # on Slurm, a job step of its own


def test_vllm_on_several_nodes_is_refused(planner, tmp_path: Path) -> None:
    (tmp_path / "vllm.yaml").write_text(VLLM_CONFIG)
    with pytest.raises(UserError, match="deployment.type=vllm runs on one node; execution.num_nodes=2"):
        planner(str(tmp_path / "vllm.yaml"), ["execution.num_nodes=2"])


def test_none_is_the_existing_endpoint(planner, tmp_path: Path) -> None:
    (tmp_path / "none.yaml").write_text(VLLM_CONFIG.replace("deployment: vllm", "deployment: none"))
    cfg = planner(str(tmp_path / "none.yaml"), ["target.api_endpoint.url=https://llm.example.com/v1/completions",
                                                "target.api_endpoint.model_id=m", "target.api_endpoint.api_key_name=MY_KEY"]
                  ).model("demo_latest").eval
    plan = plan_of(cfg, tmp_path)
    assert plan.argv == [] and plan.api_key_name == "MY_KEY" and plan.model_id == "m"
    assert plan.urls() == {"url": "https://llm.example.com", "completions_url": "https://llm.example.com/v1/completions",
                           "health_url": "https://llm.example.com/health"}


def test_local_is_our_cpu_server(planner, tmp_path: Path) -> None:
    cfg = planner("local", ["deployment.dtype=bfloat16"]).model("demo_latest").eval  # compiling reads no checkpoint
    rt = runtime(tmp_path)
    plan = types.get("local").plan(cfg, rt)
    assert plan.argv[:3] == [sys.executable, "-m", "nemotron_eval.deploy.server"]
    args = plan.argv[3:]
    assert args[args.index("--checkpoint") + 1] == str(tmp_path / "ckpt/demo")
    assert args[args.index("--dtype") + 1] == "bfloat16"
    assert args[args.index("--endpoint-file") + 1] == str(rt.server_endpoint_file)
    assert args[args.index("--served-model-name") + 1] == "demo:latest"
    assert plan.model_id == "demo:latest" and plan.host == "127.0.0.1"


def test_secrets_pass_by_name_never_by_value(planner, tmp_path: Path) -> None:
    cfg = planner("default", ["+deployment.env_vars.NGC_API_KEY=host:NGC_API_KEY",
                              "+deployment.env_vars.WANDB_API_KEY=host:MY_WANDB"]).model("demo_latest").eval
    environ = {"HF_TOKEN": "hf_abcdefSECRET", "NGC_API_KEY": "ngc_SECRET", "MY_WANDB": "wandb_SECRET"}
    plan = plan_of(cfg, tmp_path, environ)
    assert "--container-env=HF_HOME,HF_TOKEN,NGC_API_KEY,VLLM_CACHE_ROOT,WANDB_API_KEY" in plan.argv
    assert not any("SECRET" in part for part in [*plan.argv, *plan.env.values(), repr(plan)])
    assert plan.env_from_host == {"NGC_API_KEY": "NGC_API_KEY", "WANDB_API_KEY": "MY_WANDB"}
    env = plan.process_env(environ)  # only the serve step's process sees the values
    assert env["WANDB_API_KEY"] == "wandb_SECRET" and env["HF_HOME"] == "/cache/huggingface"


def test_an_env_var_without_a_prefix_is_refused(planner, tmp_path: Path) -> None:
    """Refused when the plan is made (the launcher's own parser, in the schema), not when the deployment starts."""
    with pytest.raises(UserError, match=r"deployment.env_vars.FOO='bar': Env var value 'bar' must have an explicit prefix"):
        planner("default", ["+deployment.env_vars.FOO=bar"])


def test_unknown_runner_and_type(planner, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"execution.container_runner='pyxsi'.*did you mean 'pyxis'"):
        planner("default", ["execution.container_runner=pyxsi"])
    with pytest.raises(UserError, match=r"execution.container_runner='docker'"):
        container_runner_wrap("docker", "img", "true", {}, [])
    with pytest.raises(UserError, match=r"^deployment.type='vlm': unknown; valid: local, generic, vllm, none, stub \(did you mean 'vllm'\?\)$"):
        planner("default", ["deployment.type=vlm"])
    with pytest.raises(UserError, match=r"deployment.type='vlm'.*did you mean 'vllm'"):
        types.get("vlm")


def test_pyxis_needs_slurm_and_enroot_a_squashed_file(planner, tmp_path: Path) -> None:
    """Refused by the plan; eval.yaml edited by hand into the same, by the serve step's plan."""
    with pytest.raises(UserError, match="container_runner=pyxis needs execution.type=slurm"):
        planner("default", ["execution.type=local"])
    with pytest.raises(UserError, match=r"container_runner=enroot starts a squashed image; deployment.image=nvcr.io/nvidia/nemo"):
        planner("default", ["execution.type=local", "execution.container_runner=enroot"])  # nothing squashes it here
    on_slurm = planner("default", ["execution.container_runner=enroot"]).model("demo_latest").eval  # squashed first
    assert on_slurm["deployment"]["image"].endswith(".sqsh")
    cfg = planner("default").model("demo_latest").eval
    cfg["execution"]["type"] = "local"
    with pytest.raises(UserError, match="container_runner=pyxis needs execution.type=slurm"):
        plan_of(cfg, tmp_path)
    cfg = planner("default", ["execution.container_runner=enroot"]).model("demo_latest").eval
    cfg["deployment"]["image"] = "nvcr.io/nvidia/nemo:25.11"
    with pytest.raises(UserError, match="enroot starts a squashed image"):
        plan_of(cfg, tmp_path)


def test_wrap_directly() -> None:
    assert container_runner_wrap("apptainer", "x.sif", "nvidia-smi", {"/a": "/b"}, ["HF_TOKEN"], gpus=0) == [
        "apptainer", "exec", "--no-home", "--bind", "/a:/b", "x.sif", "bash", "-c", "nvidia-smi"]
    assert container_runner_wrap("pyxis", "x.sqsh", "true", {}, [], mount_home=True) == [
        *SRUN_1, "--container-image=x.sqsh", "--container-mount-home", "bash", "-c", "true"]
    assert container_runner_wrap("none", None, "true", {}, []) == ["bash", "-c", "true"]


PLAN_TIME = [
    # (what, config, overrides, the one line's start): configs that could only fail once their deployment starts
    ("local: several instances", "local", ["+execution.num_instances=2"],
     "execution.num_instances=2: this pipeline starts one deployment per model"),
    ("local: several nodes", "local", ["execution.num_nodes=2"],
     "execution.num_nodes=2: the local deployment is one CPU server on one node; valid: 1"),
    ("local: a container runner", "local", ["execution.container_runner=apptainer"],
     "execution.container_runner=apptainer: the local deployment runs this project's CPU server on the host"),
    ("local: pyxis", "local", ["execution.container_runner=pyxis"], "execution.container_runner=pyxis: the local deployment"),
    ("local: no command", "local", ["deployment.command=''"], "deployment.command is required for deployment.type=local"),
    ("generic: no image", "default", ["deployment.image=null"], "deployment.image is required for deployment.type=generic"),
    ("none: no endpoint", "default", ["deployment.type=none"], "deployment.type=none needs target.api_endpoint.url"),
]


@pytest.mark.parametrize(("what", "config", "overrides", "expected"), PLAN_TIME, ids=[p[0] for p in PLAN_TIME])
def test_refused_when_the_plan_is_made(planner, what: str, config: str, overrides: list[str], expected: str) -> None:
    """Each deployment type's check runs when the Plan is made, before any model is resolved or file written."""
    with pytest.raises(UserError) as e:
        planner(config, overrides)
    assert str(e.value).startswith(expected) and "\n" not in str(e.value)
    assert not Path("build").exists()


def test_a_task_the_local_server_cannot_serve_is_refused_per_evaluation(planner) -> None:
    """Known per evaluation: a chat task, then a checkpoint without config, tokenizer or weights (this one)."""
    with pytest.raises(UserError, match="task 'ifeval' needs a chat endpoint"):
        planner("local", ["evaluation.tasks=[{name: ifeval}]"]).evaluation("demo_latest", "ifeval")
    with pytest.raises(UserError, match=r"checkpoint .*ckpt/demo: no config \(config.json\)"):
        planner("local").evaluation("demo_latest", "hellaswag")
    assert planner("default").evaluation("demo_latest", "hellaswag")["name"] == "hellaswag"  # a vllm image reads it


def test_each_type_brings_its_rules_and_settings_that_do_not_score() -> None:
    """The registry names every type; each has a config group file; the local type closes its section."""
    configs = Path(__file__).parent.parent / "configs" / "deployment"
    for kind in types.TYPES:
        assert (configs / f"{kind}.yaml").is_file(), kind
        assert types.get(kind).name == kind and types.get(kind) is types.get(kind)
    assert types.get("local").closed["deployment"][1] == types.get("local").keys and types.get("vllm").closed == {}
    assert "served_model_name" in types.get("vllm").not_scoring and "served_model_name" not in types.get("none").not_scoring


def test_the_cli_refuses_before_anything_runs(tmp_path: Path) -> None:
    """`nemotron eval -d execution.num_instances=2` (the local deployment, whose execution has no such key) and
    `+execution.num_instances=2` (adding it): one line naming the key, nothing written."""
    from conftest import copy_workflow, error_line

    work = copy_workflow(tmp_path)
    for override, expected in (
        ("execution.num_instances=2", "unknown key 'execution.num_instances'"),
        ("+execution.num_instances=2", "execution.num_instances=2: this pipeline starts one deployment per model"),
    ):
        proc = nemotron(work, "eval", "-d", override)
        assert proc.returncode != 0 and expected in error_line(proc)
        assert not any((work / d).exists() for d in ("build", "results", "runs"))
