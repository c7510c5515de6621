"""Inputs checked for what they are: chains and trees bounded (env.toml `extends`, Hydra's defaults lists, dotted
override keys), numbers read as the user meant them (6e3), a project folder with a space named as the cause, and
a dry run that leaves no request with its values behind. Each bad case is one line, never a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from conftest import BIN, REPO, copy_workflow, run
from nemotron_eval.config import schema
from nemotron_eval.config.compose import ComposeRequest, _apply_override, compose, parse_value
from nemotron_eval.config.defaults_tree import MAX_DEPTH, read_tree
from nemotron_eval.config.envtoml import MAX_EXTENDS, load_env_file
from nemotron_eval.core.errors import UserError
from nemotron_eval.core.safeload import load_yaml
from nemotron_eval.pipeline.plan import Plan
from nemotron_eval.pipeline.request import Request

LIMIT = "evaluation.nemo_evaluator_config.config.params.limit_samples"


# --- env.toml extends ---------------------------------------------------------------------------------------------


def extends_chain(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "env.toml"
    path.write_text('[p0]\nexecutor = "slurm"\nmounts = ["/a:/a"]\n' +
                    "".join(f'[p{i}]\nextends = "p{i - 1}"\nmounts = ["/m{i}:/m{i}"]\n' for i in range(1, n)))
    return path


@pytest.mark.parametrize("n", [MAX_EXTENDS + 1, 300, 3000])
def test_an_extends_chain_hundreds_long_is_one_line(tmp_path: Path, n: int) -> None:
    env = load_env_file(extends_chain(tmp_path, n))
    with pytest.raises(UserError, match=rf"profile 'p{n - 1}' extends a chain of more than {MAX_EXTENDS} profiles "
                                        rf"\(p{n - 1} -> p{n - 2} -> p{n - 3} -> \.\.\.\)"):
        env.profile(f"p{n - 1}")


def test_an_extends_chain_within_the_bound_merges_root_first(tmp_path: Path) -> None:
    env = load_env_file(extends_chain(tmp_path, MAX_EXTENDS))
    profile = env.profile(f"p{MAX_EXTENDS - 1}")
    assert profile["executor"] == "slurm" and "extends" not in profile
    assert profile["mounts"] == ["/a:/a", *[f"/m{i}:/m{i}" for i in range(1, MAX_EXTENDS)]]


# --- Hydra's defaults lists ---------------------------------------------------------------------------------------

SPELLINGS = {
    "relative name": "  - c{next}\n",
    "absolute name": "  - /chain/c{next}\n",
    "group and package": "  - /chain@x{i}: c{next}\n",
    "override of a group": "  - override /chain: c{next}\n",
}


def defaults_chain(configs: Path, n: int, spelling: str) -> Path:
    (configs / "chain").mkdir(parents=True)
    primary = configs / "deep.yaml"
    primary.write_text("defaults:\n  - local\n  - chain: c0\n  - _self_\n")
    for i in range(n):
        entry = SPELLINGS[spelling].format(i=i, next=i + 1) if i < n - 1 else ""
        (configs / "chain" / f"c{i}.yaml").write_text((f"defaults:\n{entry}" if entry else "") + f"k{i}: 1\n")
    return primary


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_a_defaults_chain_hundreds_deep_is_one_line(tmp_path: Path, spelling: str) -> None:
    primary = defaults_chain(tmp_path / "configs", 300, spelling)
    with pytest.raises(UserError, match=rf"deep.yaml: its defaults lists nest more than {MAX_DEPTH} levels deep "
                                        r"\(deep -> chain/c0 -> chain/c1 -> \.\.\.\)"):
        read_tree(primary, load_yaml(primary), tmp_path / "configs", [])


def test_compose_refuses_a_deep_defaults_tree_before_hydra(tmp_path: Path) -> None:
    """Through `compose`, as a run reads it (Hydra alone ends in RecursionError at about 1000 levels)."""
    configs = tmp_path / "configs"
    shutil.copytree(REPO / "configs", configs)
    shutil.rmtree(configs / "chain", ignore_errors=True)
    defaults_chain(configs, 1200, "relative name")
    with pytest.raises(UserError, match=f"nest more than {MAX_DEPTH} levels deep"):
        compose(ComposeRequest(eval_config="deep", configs_dir=configs, env_file=tmp_path / "none.toml"))


def test_a_defaults_cycle_and_a_short_tree(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    primary = defaults_chain(configs, 4, "relative name")
    (configs / "local.yaml").write_text("run: {}\n")
    found = read_tree(primary, load_yaml(primary), configs, [])
    assert [p.name for p in found.files] == ["local.yaml", "c0.yaml", "c1.yaml", "c2.yaml", "c3.yaml"]
    assert not found.interpolated
    (configs / "chain" / "c3.yaml").write_text("defaults:\n  - c1\n")
    with pytest.raises(UserError, match=r"a cycle in its defaults lists: deep -> chain/c0 -> chain/c1 -> chain/c2 -> chain/c3 -> chain/c1"):
        read_tree(primary, load_yaml(primary), configs, [])


def test_every_file_of_the_tree_goes_through_the_safe_reader(tmp_path: Path) -> None:
    """A file three levels down is read as the primary is: a duplicate key is one line naming it."""
    configs = tmp_path / "configs"
    primary = defaults_chain(configs, 3, "absolute name")
    (configs / "chain" / "c2.yaml").write_text("a: 1\na: 2\n")
    with pytest.raises(UserError, match=r"chain/c2.yaml: duplicate key 'a' at line 2"):
        read_tree(primary, load_yaml(primary), configs, [])


# --- overrides ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("item", "expected"), [
    ("+run.env." + ".".join(["a"] * 5000) + "=1", r"a key 5002 levels deep; a config needs fewer than ten"),
    ("+run.env." + ".".join(["a"] * 40) + "=1", r"a key 42 levels deep"),
    ("+run.env.x=" + "[" * 40 + "]" * 40, r"'run.env.x' \(its key is 3 levels deep, its value\): nested more than 29 levels"),
    ("+run.env.x=" + "[" * 500 + "]" * 500, r"nested too deeply to be a config"),
], ids=["key 5000 deep", "key 40 deep", "value 40 deep", "value 500 deep"])
def test_a_deep_override_is_one_line(item: str, expected: str) -> None:
    """About 70 levels exhaust Python's stack in OmegaConf (an override 80 levels deep was an internal error)."""
    with pytest.raises(UserError, match=expected) as e:
        _apply_override({"run": {"env": {}}}, item)
    assert len(str(e.value)) < 300


def test_an_override_a_config_can_need_passes(project: Path) -> None:
    deep = "+run.env." + ".".join(["a"] * 20) + "=[[1]]"
    plan = Plan(Request(overrides=(deep,), tasks=("openbookqa",)), project / "configs")
    node = plan.merged["run"]["env"]
    for _ in range(20):
        node = node["a"]
    assert node == [[1]]


# --- numbers as the user meant them -------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "value"), [("6e3", 6000.0), ("1e-1", 0.1), ("6E3", 6000.0), ("+5", 5), ("010", 10),
                                            ("2.5", 2.5), (".5", 0.5)])
def test_override_numbers_read_as_yaml_1_2_does(raw: str, value: float) -> None:
    parsed = parse_value(raw, f"x={raw}")
    assert parsed == value and type(parsed) is type(value)


def test_whole_numbers_become_ints_only_where_a_whole_number_is_wanted() -> None:
    cfg = {"evaluation": {"nemo_evaluator_config": {"config": {"params": {"limit_samples": 6000.0, "parallelism": 2.5,
                                                                             "temperature": 1.0}}}}}
    schema.whole_numbers(cfg)
    params = cfg["evaluation"]["nemo_evaluator_config"]["config"]["params"]
    assert params == {"limit_samples": 6000, "parallelism": 2.5, "temperature": 1.0}
    assert type(params["limit_samples"]) is int and type(params["temperature"]) is float


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    work = copy_workflow(tmp_path)
    (work / "env.toml").write_text("")
    monkeypatch.setenv("NEMOTRON_ENV_FILE", str(work / "env.toml"))
    monkeypatch.chdir(work)
    return work


def test_6e3_in_an_override_and_in_yaml_is_6000(project: Path) -> None:
    plan = Plan(Request(overrides=(f"{LIMIT}=6e3", "evaluation.nemo_evaluator_config.config.params.parallelism=2.0"),
                        tasks=("openbookqa",)), project / "configs")
    params = plan.merged["evaluation"]["nemo_evaluator_config"]["config"]["params"]
    assert params["limit_samples"] == 6000 and type(params["limit_samples"]) is int and params["parallelism"] == 2
    assert "limit_samples: 6000\n" in plan.merged_text
    config = yaml.safe_load((project / "configs" / "local.yaml").read_text())
    config["evaluation"]["nemo_evaluator_config"]["config"]["params"]["limit_samples"] = "6e3"
    (project / "configs" / "mine.yaml").write_text(yaml.safe_dump(config).replace("'6e3'", "6e3"))
    assert "limit_samples: 6e3" in (project / "configs" / "mine.yaml").read_text()
    yaml_plan = Plan(Request(eval_config="mine", tasks=("openbookqa",)), project / "configs")
    job = yaml_plan.model(yaml_plan.default_model).job
    assert job["evaluation"]["nemo_evaluator_config"]["config"]["params"]["limit_samples"] == 6000


def test_a_fraction_where_a_whole_number_is_wanted_is_still_refused(project: Path) -> None:
    with pytest.raises(UserError, match=rf"^{LIMIT}=2.5: a whole number >= 1 or null$"):
        Plan(Request(overrides=(f"{LIMIT}=2.5",), tasks=("openbookqa",)), project / "configs")


# --- a project folder with a space --------------------------------------------------------------------------------


@pytest.fixture
def spaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "my evals").mkdir()
    work = copy_workflow(tmp_path / "my evals")
    (work / "env.toml").write_text("")
    monkeypatch.setenv("NEMOTRON_ENV_FILE", str(work / "env.toml"))
    monkeypatch.chdir(work)
    return work


@pytest.mark.parametrize(("overrides", "key", "under"), [
    ((), "execution.output_dir", "results"),
    (("execution.output_dir=/tmp/nemotron-out",), "deployment.checkpoint_path", "models/smollm2"),
], ids=["output folder", "embedded model"])
def test_a_project_folder_with_a_space_is_named_as_the_cause(spaced: Path, overrides: tuple[str, ...], key: str, under: str) -> None:
    """The default model (embedded SmolLM2) in a project whose folder has a space: the message names the folder
    the user chose and what lies in it, not a path they never wrote."""
    plan = Plan(Request(overrides=overrides, tasks=("openbookqa",)), spaced / "configs")
    with pytest.raises(UserError) as e:
        plan.model(plan.default_model)
    assert str(e.value).startswith(f"the project folder {str(spaced)!r} holds a character a command line cannot take")
    assert f"{key} lies in it ({under}); move the project" in str(e.value)


def test_the_same_paths_in_a_plain_folder_pass(project: Path) -> None:
    plan = Plan(Request(tasks=("openbookqa",)), project / "configs")
    assert plan.model(plan.default_model).job["execution"]["output_dir"] == str(project / "results")


# --- the dry run ----------------------------------------------------------------------------------------------------


def test_a_dry_run_leaves_no_request_behind(tmp_path: Path) -> None:
    """`nemotron eval -d` (and so `snakemake -n` with a request): nothing under .snakemake holds the request's
    values (Snakemake writes its request file for the jobs it starts, and a dry run starts none)."""
    work = copy_workflow(tmp_path)
    (work / "env.toml").write_text("")
    proc = run([str(BIN / "nemotron"), "eval", "-d", "-t", "openbookqa", f"{LIMIT}=4321"], work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "limit_samples: 4321" in proc.stdout  # the plan did see the value
    assert (work / ".snakemake").is_dir()  # Snakemake did run here
    assert not (work / ".snakemake" / "nemotron").exists()
    for path in (work / ".snakemake").rglob("*"):
        if path.is_file():
            assert f"{LIMIT}=4321".encode() not in path.read_bytes(), path
    assert not any((work / d).exists() for d in ("build", "results", "runs"))


def test_a_huge_snakemake_config_value_is_not_repeated(capsys: pytest.CaptureFixture[str]) -> None:
    """`--config overrides=[[[...]]]` 2000 levels deep: Snakemake keeps it as text, and the schema's refusal
    names the key and the value's start, not 4000 characters of it."""
    from nemotron_eval.pipeline.smk import validate_config

    with pytest.raises(SystemExit):
        validate_config({"eval_config": "local", "overrides": "[" * 2000 + "]" * 2000})
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 300, err
    assert err.startswith("nemotron: error: Snakemake config key 'overrides': '[[[") and "(4002 characters)" in err
