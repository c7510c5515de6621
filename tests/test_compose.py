"""Composition: Hydra defaults, env.toml profiles, dotlist overrides, task filters, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from nemotron_eval.config.compose import ComposeRequest, compose
from nemotron_eval.config.envtoml import load_env_file
from nemotron_eval.core.errors import UserError

from conftest import REPO

CONFIGS = REPO / "configs"


def req(name: str = "default", **kw) -> ComposeRequest:
    return ComposeRequest(eval_config=name, configs_dir=kw.pop("configs_dir", CONFIGS), **kw)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_default_config_has_the_recipe_sections_and_defaults() -> None:
    cfg = compose(req("default"))
    assert list(cfg) == ["run", "execution", "deployment", "evaluation", "export", "data"]
    assert cfg["run"]["model"] == "rl:latest"
    ex = cfg["execution"]
    assert (ex["type"], ex["num_nodes"], ex["gres"]) == ("slurm", 1, "gpu:8")
    assert ex["auto_export"]["destinations"] == ["wandb"]
    dep = cfg["deployment"]
    assert dep["type"] == "generic" and dep["image"] == "${run.env.container}"  # the recipe's: the profile picks it
    assert cfg["run"]["env"]["container"] == "nvcr.io/nvidia/nemo:25.11.nemotron_3_nano"
    assert dep["checkpoint_path"] == "${art:model,path}" and dep["port"] == 1235
    for flag in ("deploy_ray_inframework.py", "--num_gpus 8", "--tensor_model_parallel_size 2", "--expert_model_parallel_size 8"):
        assert flag in dep["command"]
    params = cfg["evaluation"]["nemo_evaluator_config"]["config"]["params"]
    assert (params["parallelism"], params["request_timeout"]) == (4, 6000)
    tasks = cfg["evaluation"]["tasks"]
    assert [t["name"] for t in tasks] == [
        "adlr_mmlu", "adlr_arc_challenge_llama_25_shot", "adlr_winogrande_5_shot", "hellaswag", "openbookqa",
    ]
    assert tasks[0]["nemo_evaluator_config"]["config"]["params"]["top_p"] == 0.0
    assert cfg["export"]["wandb"] == {"entity": "${run.wandb.entity}", "project": "${run.wandb.project}"}


def test_local_config_composes_its_groups() -> None:
    cfg = compose(req("local"))
    assert cfg["run"]["model"] == "smollm2:latest"
    assert cfg["execution"]["type"] == "local"  # from configs/execution/local.yaml
    assert cfg["deployment"]["type"] == "local" and cfg["deployment"]["dtype"] == "float32"  # group + _self_
    assert cfg["evaluation"]["nemo_evaluator_config"]["config"]["params"]["limit_samples"] > 0


def test_hydra_defaults_select_group_files_and_self_wins(tmp_path: Path) -> None:
    cdir = tmp_path / "configs"
    write(cdir / "deployment" / "a.yaml", "type: vllm\nport: 1\ncheckpoint_path: /x\n")
    write(cdir / "deployment" / "b.yaml", "type: local\nport: 2\ncheckpoint_path: /x\n")
    body = "run: {model: m:latest}\ndeployment: {port: 99}\nevaluation: {tasks: [{name: hellaswag}]}\n"
    write(cdir / "one.yaml", "defaults:\n  - deployment: a\n  - _self_\n" + body)
    write(cdir / "two.yaml", "defaults:\n  - deployment: b\n  - _self_\n" + body)
    one, two = compose(req("one", configs_dir=cdir)), compose(req("two", configs_dir=cdir))
    assert (one["deployment"]["type"], one["deployment"]["port"]) == ("vllm", 99)
    assert (two["deployment"]["type"], two["deployment"]["port"]) == ("local", 99)


def test_config_outside_configs_dir_still_finds_groups(tmp_path: Path) -> None:
    mine = write(tmp_path / "elsewhere" / "mine.yaml", "defaults:\n  - execution: local\n  - deployment: local\n  - _self_\n"
                 "run: {model: x:latest}\nevaluation: {tasks: [{name: openbookqa}]}\n")
    cfg = compose(req(str(mine)))
    assert cfg["deployment"]["type"] == "local" and cfg["execution"]["type"] == "local"


ENV_TOML = """
[wandb]
entity = "team"
project = "evals"

[base]
account = "acct"
partition = "batch"
container = "other/image:1"
nodes = 4
gpus_per_node = 4
mounts = ["/lustre:/lustre"]

[cluster]
extends = "base"
partition = "gpu"
mounts = ["/data:/data"]
"""


def test_env_profile_fills_run_env_picks_the_image_and_yaml_wins_for_counts(tmp_path: Path) -> None:
    env = write(tmp_path / "env.toml", ENV_TOML)
    cfg = compose(req("default", env_profile="cluster", env_file=env))
    run_env = cfg["run"]["env"]
    assert (run_env["account"], run_env["partition"], run_env["time"]) == ("acct", "gpu", "04:00:00")
    assert run_env["mounts"] == ["/lustre:/lustre", "/data:/data"]  # concatenated along extends
    assert cfg["run"]["wandb"] == {"entity": "team", "project": "evals"}
    assert cfg["deployment"]["image"] == "${run.env.container}" and run_env["container"] == "other/image:1"
    assert (cfg["execution"]["num_nodes"], cfg["execution"]["gres"]) == (1, "gpu:8")
    assert cfg["execution"]["partition"] == "${run.env.partition}"


def test_overrides_are_applied_last(tmp_path: Path) -> None:
    env = write(tmp_path / "env.toml", ENV_TOML)
    cfg = compose(req("default", env_profile="cluster", env_file=env, overrides=[
        "run.env.partition=override",
        "evaluation.nemo_evaluator_config.config.params.parallelism=16",
        "execution.auto_export.destinations=[wandb, local]",
        "evaluation.tasks.1.name=gsm8k",
        "+deployment.extra.flag=true",
        "run.env.time=08:00:00",
        "deployment.command=bash -c 'echo a: b'",
    ]))
    assert cfg["run"]["env"]["partition"] == "override"
    assert cfg["evaluation"]["nemo_evaluator_config"]["config"]["params"]["parallelism"] == 16
    assert cfg["execution"]["auto_export"]["destinations"] == ["wandb", "local"]
    assert cfg["evaluation"]["tasks"][1]["name"] == "gsm8k"  # any task of the launcher's catalog
    assert cfg["deployment"]["extra"] == {"flag": True}
    assert cfg["run"]["env"]["time"] == "08:00:00"  # not YAML's sexagesimal 28800
    assert cfg["deployment"]["command"] == "bash -c 'echo a: b'"  # not a mapping
    assert cfg["run"]["compose"]["overrides"][0] == "run.env.partition=override"


def test_tasks_filter_accepts_short_and_harness_names() -> None:
    cfg = compose(req("default", tasks=["mmlu", "hellaswag", "adlr_winogrande_5_shot"]))
    assert [t["name"] for t in cfg["evaluation"]["tasks"]] == ["adlr_mmlu", "adlr_winogrande_5_shot", "hellaswag"]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"overrides": ["evaluation.parallelism"]}, "expected KEY=VALUE"),
        ({"overrides": ["deployment.prot=1"]}, "unknown key 'deployment.prot'"),
        ({"overrides": ["deployment.prot=1"]}, "did you mean 'port'"),
        ({"overrides": ["evalution.x=1"]}, "unknown section 'evalution' (did you mean 'evaluation'?)"),
        ({"overrides": ["evaluation.tasks.7.name=x"]}, "evaluation.tasks is a list of 5"),
        ({"tasks": ["helaswag"]}, "task filter: 'helaswag' is not in the config's evaluation.tasks or the launcher's catalog (did you mean 'hellaswag'?); tasks: mmlu, arc_challenge"),
        ({"overrides": ["evaluation.tasks.0.name=adlr_mmlu_x"]}, "evaluation.tasks.0.name: unknown task 'adlr_mmlu_x' (did you mean 'adlr_mmlu'?); `nemotron ls tasks` lists the 421 tasks"),
        ({"overrides": ["evaluation.tasks.0.name=hellaswag"]}, "evaluation.tasks: hellaswag, hellaswag would all write results/{model}/hellaswag.json"),
        ({"overrides": ["evaluation.tasks.0.name=humaneval"]}, "task 'humaneval' exists in several harnesses; write one of bigcode-evaluation-harness.humaneval"),
        ({"env_profile": "cluster"}, "no env.toml found"),
        ({"overrides": ["deployment.port=[1"]}, "override 'deployment.port=[1': the value is not valid YAML flow syntax"),
        ({"overrides": ["+deployment.x=${run.nothere}"]}, "deployment.x refers to ${run.nothere}, which is not defined"),
        ({"eval_config": "defualt"}, "(did you mean 'default'?)"),
    ],
)
def test_bad_input_is_one_line_naming_what_is_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kwargs, expected) -> None:
    monkeypatch.chdir(tmp_path)  # no env.toml above
    name = kwargs.pop("eval_config", "default")
    with pytest.raises(UserError) as e:
        compose(req(name, **kwargs))
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_malformed_yaml_and_unknown_section(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", "run:\n  model: [unclosed\n")
    with pytest.raises(UserError, match=r"bad.yaml: malformed YAML at line \d+"):
        compose(req(str(bad)))
    extra = write(tmp_path / "extra.yaml", "run: {model: a:latest}\nevaluations: {}\n")
    with pytest.raises(UserError, match=r"extra.yaml: unknown top-level section 'evaluations' \(did you mean 'evaluation'\?\)"):
        compose(req(str(extra)))
    cdir = tmp_path / "configs"
    write(cdir / "deployment" / "broken.yaml", "type: [\n")
    write(cdir / "x.yaml", "defaults:\n  - deployment: broken\n  - _self_\nrun: {model: a:latest}\n")
    with pytest.raises(UserError, match=r"broken.yaml: malformed YAML"):
        compose(req("x", configs_dir=cdir))


def test_env_toml_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "env.toml", ENV_TOML + '\n[loop1]\nextends = "loop2"\n[loop2]\nextends = "loop1"\n')
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    env = load_env_file()  # found by walking up
    assert env.path == tmp_path / "env.toml"
    assert env.profiles == ["base", "cluster", "loop1", "loop2"]
    assert env.profile("cluster")["partition"] == "gpu" and env.profile("cluster")["account"] == "acct"
    with pytest.raises(UserError, match="extends' cycle: loop1 -> loop2 -> loop1"):
        env.profile("loop1")
    with pytest.raises(UserError, match=r"profile 'clustr' not found \(did you mean 'cluster'\?\); profiles: base, cluster"):
        env.profile("clustr")
    other = write(tmp_path / "other.toml", "[solo]\naccount = 'x'\n")
    monkeypatch.setenv("NEMOTRON_ENV_FILE", str(other))
    assert load_env_file().profiles == ["solo"]
    monkeypatch.setenv("NEMOTRON_ENV_FILE", str(tmp_path / "missing.toml"))
    with pytest.raises(UserError, match="NEMOTRON_ENV_FILE=.*missing.toml: no such file"):
        load_env_file()
