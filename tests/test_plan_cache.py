"""The per-model plan cache (pipeline/plan_cache.py): a plan read back is the plan compiled, and every input it is
computed from invalidates it: a moved alias, an edited config or env.toml, an environment variable the config
reads, a new version of the code. Real plans, registry and files throughout; `Plan._compile` is wrapped only to
count how often a model is compiled."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO, make_checkpoint
from nemotron_eval.artifacts import LocalRegistry
from nemotron_eval.core.io import current_umask
from nemotron_eval.pipeline import plan_cache
from nemotron_eval.pipeline.plan import Plan
from nemotron_eval.pipeline.request import Request

pytestmark = pytest.mark.fast

MODEL = "demo_latest"
FIELDS = ("resolved_text", "job_text", "eval_text", "tasks")


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The models compiled (not read from the cache), in order."""
    seen: list[str] = []
    original = Plan._compile

    def counting(self: Plan, spec, artifact):  # type: ignore[no-untyped-def]
        seen.append(spec.wildcard)
        return original(self, spec, artifact)

    monkeypatch.setattr(Plan, "_compile", counting)
    return seen


def entries(model: str = MODEL) -> list[Path]:
    return sorted(plan_cache.folder_of(model).glob("*.json"))


def fields(plan: Plan, model: str = MODEL) -> dict[str, object]:
    mp = plan.model(model)
    return {f: getattr(mp, f) for f in FIELDS}


def test_a_plan_read_back_is_the_plan_compiled(planner, compiled: list[str]) -> None:
    first = fields(planner("local"))
    assert compiled == [MODEL] and len(entries()) == 1
    again = planner("local")
    assert fields(again) == first and compiled == [MODEL]  # the second plan compiled nothing
    assert again.model(MODEL).job["run"]["tasks"] == first["tasks"]  # job.yaml's data from its text
    assert again.model(MODEL).eval == {k: v for k, v in again.model(MODEL).job.items() if k != "run"}
    mode = entries()[0].stat().st_mode & 0o777
    assert mode == 0o666 & ~current_umask()


def test_a_moved_alias_compiles_again(planner, tmp_path: Path, compiled: list[str]) -> None:
    assert "version: v1" in planner("local").model(MODEL).resolved_text
    LocalRegistry(tmp_path / "artifacts").add("demo", make_checkpoint(tmp_path / "ckpt" / "demo2", "new weights"))
    moved = planner("local").model(MODEL)
    assert "version: v2" in moved.resolved_text and moved.artifact.version == "v2"
    assert compiled == [MODEL, MODEL]
    pinned = planner("local").model("demo_v1")  # the old version by name: its own entry
    assert "version: v1" in pinned.resolved_text and compiled == [MODEL, MODEL, "demo_v1"]


def test_an_edited_config_file_compiles_again(planner, tmp_path: Path, compiled: list[str]) -> None:
    configs = tmp_path / "configs"
    shutil.copytree(REPO / "configs", configs)
    request = Request(eval_config="local", env_profile=None, overrides=(), tasks=None)
    before = Plan(request, configs).model(MODEL)
    text = (configs / "local.yaml").read_text()
    assert "limit_samples: 10" in text
    (configs / "local.yaml").write_text(text.replace("limit_samples: 10", "limit_samples: 12", 1))
    after = Plan(request, configs).model(MODEL)
    assert "limit_samples: 12" in after.eval_text and after.tasks != before.tasks and compiled == [MODEL, MODEL]


def test_an_edited_env_toml_compiles_again(planner, tmp_path: Path, compiled: list[str]) -> None:
    profile = '[p]\naccount = "acct"\nmounts = ["/data/{}:/data"]\n'
    first = planner("default", env_toml=profile.format("one"), env_profile="p").model(MODEL)
    assert "/data/one" in first.eval_text
    second = planner("default", env_toml=profile.format("two"), env_profile="p").model(MODEL)
    assert "/data/two" in second.eval_text and "/data/one" not in second.eval_text
    # the file's content counts, not only what the profile puts into the config (its [artifacts] names the registry)
    planner("default", env_toml=profile.format("two") + "# a comment\n", env_profile="p").model(MODEL)
    assert compiled == [MODEL, MODEL, MODEL]


def test_an_environment_variable_the_config_reads_compiles_again(planner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                compiled: list[str]) -> None:
    overrides = ["execution.output_dir=${oc.env:HOME}/out"]
    monkeypatch.setenv("HOME", str(tmp_path / "a"))
    assert f"{tmp_path}/a/out" in planner("local", overrides).model(MODEL).eval_text
    monkeypatch.setenv("HOME", str(tmp_path / "b"))
    assert f"{tmp_path}/b/out" in planner("local", overrides).model(MODEL).eval_text
    assert compiled == [MODEL, MODEL]


def test_an_environment_variable_the_config_does_not_read_changes_nothing(planner, monkeypatch: pytest.MonkeyPatch,
                                                                         compiled: list[str]) -> None:
    """Every Slurm job has its own SLURM_JOB_ID: a plan that does not read it is the same in all of them."""
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    planner("local").model(MODEL)
    monkeypatch.setenv("SLURM_JOB_ID", "2")
    planner("local").model(MODEL)
    assert compiled == [MODEL]


def test_which_harnesses_are_installed_counts(planner, monkeypatch: pytest.MonkeyPatch, compiled: list[str]) -> None:
    """A task whose harness is not installed here runs in its container (a different job.yaml on a cluster)."""
    from nemotron_eval.evaluate import harness

    planner("local").model(MODEL)
    plan = planner("local")  # its tasks checked while their harness is installed
    monkeypatch.setattr(harness, "installed_here", lambda task: False)
    plan.model(MODEL)
    assert compiled == [MODEL, MODEL]


def test_a_config_that_reads_the_clock_is_never_kept(planner, compiled: list[str]) -> None:
    overrides = ["execution.output_dir=/tmp/nemotron-${now:%H%M%S%f}"]
    first = planner("local", overrides).model(MODEL).eval_text
    second = planner("local", overrides).model(MODEL).eval_text
    assert first != second and compiled == [MODEL, MODEL] and entries() == []


def test_a_model_keeps_an_entry_per_config(planner, compiled: list[str]) -> None:
    """Two configs of one model used in turn (the login node's and a profile's, local and default) both stay kept;
    at most KEEP entries per model."""
    for n in range(plan_cache.KEEP + 2):
        planner("local", [f"execution.output_dir=/tmp/out{n}"]).model(MODEL)
    assert len(entries()) == plan_cache.KEEP and len(compiled) == plan_cache.KEEP + 2
    planner("local", [f"execution.output_dir=/tmp/out{plan_cache.KEEP + 1}"]).model(MODEL)
    planner("local", [f"execution.output_dir=/tmp/out{plan_cache.KEEP}"]).model(MODEL)
    assert len(compiled) == plan_cache.KEEP + 2  # the newest ones are read back


def in_folder(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> Plan:
    """The planner's request in another project folder that sees the same registry (a link to it)."""
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    (folder / "artifacts").symlink_to(tmp_path / "artifacts")
    monkeypatch.chdir(folder)
    return Plan(Request(eval_config="local", env_profile=None, overrides=(), tasks=None), REPO / "configs")


def test_another_project_folder_compiles_again(planner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               compiled: list[str]) -> None:
    """Absolute paths (execution.output_dir) follow the folder it compiles in: a copied project's cache is stale."""
    planner("local").model(MODEL)
    shutil.copytree(tmp_path / ".snakemake", tmp_path / "copy" / ".snakemake")
    moved = in_folder(tmp_path, "copy", monkeypatch).model(MODEL)
    assert f"{tmp_path}/copy/results" in moved.eval_text and compiled == [MODEL, MODEL]


def test_a_new_code_version_compiles_again(planner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           compiled: list[str]) -> None:
    package = tmp_path / "pkg"
    shutil.copytree(Path(plan_cache.__file__).parents[1], package, ignore=shutil.ignore_patterns("__pycache__"))
    before = plan_cache.code_version(package)
    (package / "pipeline" / "compile.py").write_text((package / "pipeline" / "compile.py").read_text() + "\n# edited\n")
    plan_cache.code_version.cache_clear()
    assert plan_cache.code_version(package) != before  # an edited file is a new version
    planner("local").model(MODEL)
    monkeypatch.setattr(plan_cache, "code_version", lambda package=None: "another version")
    planner("local").model(MODEL)
    assert compiled == [MODEL, MODEL]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign key", "missing field"])
def test_a_damaged_entry_is_compiled_again_and_replaced(planner, compiled: list[str], damage: str) -> None:
    good = fields(planner("local"))
    [path] = entries()
    entry = json.loads(path.read_text())
    path.write_text({
        "garbage": "\x00not json",
        "truncated": path.read_text()[:100],
        "foreign key": json.dumps({**entry, "key": "0" * 64, "eval_text": "tampered"}),
        "missing field": json.dumps({k: v for k, v in entry.items() if k != "tasks"}),
    }[damage])
    assert fields(planner("local")) == good and compiled == [MODEL, MODEL]
    assert json.loads(path.read_text()) == entry


def test_a_cache_that_cannot_be_written_is_skipped(planner, tmp_path: Path, compiled: list[str]) -> None:
    (tmp_path / plan_cache.CACHE_DIR).parent.mkdir(parents=True)
    (tmp_path / plan_cache.CACHE_DIR).write_text("a file where the cache's folder would be")
    assert "version: v1" in planner("local").model(MODEL).resolved_text
    assert "version: v1" in planner("local").model(MODEL).resolved_text and compiled == [MODEL, MODEL]


def test_a_plan_that_fails_its_checks_is_not_kept(planner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  compiled: list[str]) -> None:
    """Compiled, then refused (the project folder has a space, execution.output_dir lies in it): nothing kept, so
    a cached plan is always one that passed every check."""
    from nemotron_eval.core.errors import UserError

    plan = in_folder(tmp_path, "my evals", monkeypatch)
    with pytest.raises(UserError, match="holds a character a command line cannot take"):
        plan.model(MODEL)
    assert compiled == [MODEL] and not plan_cache.CACHE_DIR.exists()


def test_a_dry_run_reads_the_cache_and_writes_nothing(planner, tmp_path: Path, compiled: list[str]) -> None:
    request = Request(eval_config="local", env_profile=None, overrides=(), tasks=None)
    dry = Plan(request, REPO / "configs", keep_plans=False)
    compiled_text = dry.model(MODEL).eval_text
    assert not plan_cache.CACHE_DIR.exists()  # -n / nemotron eval -d: nothing written
    planner("local").model(MODEL)  # a real run keeps it
    assert Plan(request, REPO / "configs", keep_plans=False).model(MODEL).eval_text == compiled_text
    assert compiled == [MODEL, MODEL]  # the second dry run read what the real run kept
