"""eval.yaml is a NeMo Evaluator Launcher config: the installed launcher's own validation (its dry run) accepts
what the compile chain writes, for NVIDIA's recipe config and for every deployment type; and `run.engine:
launcher` hands eval.yaml to the launcher's run_eval() (tested through its dry run: there is no cluster or
Docker daemon here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import BIN, copy_workflow, make_checkpoint, nemotron, run, snakemake

CONFIG = """
defaults:
  - execution: {execution}
  - deployment: {deployment}
  - _self_
run:
  model: demo:latest
  env: {{host: login01, user: null, account: acct, partition: gpu, time: "01:00:00", remote_job_dir: /lustre/me, mounts: ["/data:/data"]}}
evaluation:
  nemo_evaluator_config:
    config:
      params: {{limit_samples: 5, parallelism: 4, request_timeout: 6000}}
  tasks: [{{name: hellaswag}}, {{name: adlr_mmlu}}]
"""
EXTRA = {"none": ["target.api_endpoint.url=http://llm:8000/v1/completions", "target.api_endpoint.model_id=m"],
         "generic": ["deployment.image=nvcr.io/nvidia/nemo:25.11", "deployment.command=serve --port 8000"]}


@pytest.fixture(autouse=True)
def _launcher_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The launcher keeps an invocation database under $HOME: a throwaway one per test."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("USER", "tester")


def dry_run(eval_cfg: dict) -> str:
    from nemo_evaluator_launcher.api.functional import run_eval

    return run_eval(OmegaConf.create(eval_cfg), dry_run=True)


def test_the_recipe_config_passes(planner) -> None:
    ev = planner("default", env_toml='[cluster]\naccount = "acct"\nmounts = ["/scratch:/scratch"]\n', env_profile="cluster").model("demo_latest").eval
    assert "run" not in ev and "env_vars" not in ev["execution"] and "extra" not in ev["execution"]["mounts"]
    assert ev["execution"]["mounts"]["deployment"] == {"/lustre": "/lustre", "/scratch": "/scratch"}
    assert dry_run(ev)


@pytest.mark.parametrize(("execution", "deployment"), [
    ("local", "local"), ("slurm/default", "local"), ("slurm/default", "vllm"), ("slurm/default", "generic"),
    ("slurm/default", "none"), ("local", "none"),
])
def test_every_deployment_type_passes(planner, tmp_path: Path, execution: str, deployment: str) -> None:
    (tmp_path / "c.yaml").write_text(CONFIG.format(execution=execution, deployment=deployment))
    overrides = EXTRA.get(deployment, [])
    if deployment == "local" and execution == "slurm/default":
        overrides = ["execution.container_runner=none"]
    ev = planner(str(tmp_path / "c.yaml"), overrides).model("demo_latest").eval
    assert ev["deployment"]["type"] == deployment
    assert dry_run(ev)


def test_the_launcher_cli_accepts_the_compiled_file(tmp_path: Path) -> None:
    """The acceptance command, through both CLIs: snakemake writes eval.yaml, nemo-evaluator-launcher checks it."""
    work = copy_workflow(tmp_path)
    assert nemotron(work, "artifacts", "add", "demo", str(make_checkpoint(tmp_path / "ck"))).returncode == 0
    built = snakemake(work, "build/demo_latest/eval.yaml", "--config", "eval_config=default")
    assert built.returncode == 0, built.stderr[-2000:]
    ev = yaml.safe_load((work / "build/demo_latest/eval.yaml").read_text())
    image = Path(ev["deployment"]["image"])
    assert image.is_absolute() and image.suffix == ".sqsh" and image.parent == work / "build/images"
    env = {"HOME": str(tmp_path / "home"), "USER": "tester"}
    checked = run([str(BIN / "nemo-evaluator-launcher"), "run", "--config", "build/demo_latest/eval.yaml",
                   "--config-mode", "raw", "--dry-run"], work, env)
    assert checked.returncode == 0, (checked.stdout + checked.stderr)[-3000:]


def test_engine_launcher_hands_eval_yaml_to_run_eval(tmp_path: Path) -> None:
    work = copy_workflow(tmp_path)
    assert nemotron(work, "artifacts", "add", "demo", str(make_checkpoint(tmp_path / "ck"))).returncode == 0
    env = {"HOME": str(tmp_path / "home"), "USER": "tester"}
    proc = snakemake(work, "build/demo_latest/launcher.json", "--config", "eval_config=default",
                     'overrides=["run.engine=launcher","run.launcher.dry_run=true"]', env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((work / "build/demo_latest/launcher.json").read_text())
    assert record["engine"] == "launcher" and record["dry_run"] is True and record["invocation_id"]
    # The default target follows the engine: the launcher's submission, not results/.
    dry = snakemake(work, "-n", "--config", "eval_config=default",
                    'overrides=["run.engine=launcher","run.launcher.dry_run=true","run.model=demo:latest"]', env=env)
    out = dry.stdout + dry.stderr
    assert dry.returncode == 0 and "build/demo_latest/launcher.json" in out and "evaluate_task" not in out


def test_a_config_the_launcher_refuses_is_said_in_one_line(tmp_path: Path) -> None:
    from nemotron_eval.core.errors import UserError
    from nemotron_eval.pipeline.workflow import submit_to_launcher

    bad = tmp_path / "eval.yaml"
    bad.write_text(yaml.safe_dump({"execution": {"type": "local", "output_dir": str(tmp_path), "env_vars": {"A": "b"}},
                                   "deployment": {"type": "none"}, "evaluation": {"tasks": [{"name": "hellaswag"}]},
                                   "target": {"api_endpoint": {"url": "http://x/v1/completions", "model_id": "m"}}}))
    with pytest.raises(UserError, match=r"eval.yaml: NeMo Evaluator Launcher refused it: 'execution.env_vars' is not supported"):
        submit_to_launcher(bad, tmp_path / "launcher.json", tmp_path / "launcher.log", dry_run=True)
    assert not (tmp_path / "launcher.json").exists()
