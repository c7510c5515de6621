"""Hydra's composition kept between processes (config/hydra_cache.py): read back it is what Hydra composed, and
every input it depends on composes it again: an edited, new or deleted option file, another group choice,
another configs folder, a new version of the code. A dry run reads and writes nothing; a secret or a failure is
never kept. Real configs, Hydra and files; `_hydra_compose` is wrapped only to count its calls."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import REPO
from nemotron_eval.config import compose as compose_module
from nemotron_eval.config import hydra_cache
from nemotron_eval.config.compose import ComposeRequest, compose
from nemotron_eval.core import kept as kept_module
from nemotron_eval.core.errors import UserError
from nemotron_eval.core.io import current_umask

pytestmark = pytest.mark.fast


@pytest.fixture
def hydra_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The configs Hydra composed (not read back), in order."""
    seen: list[str] = []
    original = compose_module._hydra_compose

    def counting(primary: Path, configs_dir: Path, choices: list[str]) -> dict:  # type: ignore[type-arg]
        seen.append(primary.stem)
        return original(primary, configs_dir, choices)

    monkeypatch.setattr(compose_module, "_hydra_compose", counting)
    return seen


@pytest.fixture
def configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "env.toml").write_text("")
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    return tmp_path / "configs"


def composed(configs: Path, *overrides: str, keep: bool = True, primary: str = "local", passed: bool = True) -> dict:  # type: ignore[type-arg]
    """The merged config composed as a plan composes it; `passed`: the plan's checks passed (Kept.keep called)."""
    kept = hydra_cache.Kept(Path("kept"), keep=keep)
    cfg = compose(ComposeRequest(eval_config=primary, configs_dir=configs, overrides=list(overrides),
                                 env_file=configs.parent / "env.toml", kept=kept))
    if passed:
        kept.keep()
    return cfg


def kept() -> list[Path]:
    return sorted(Path("kept").glob("*.json"))


def test_a_composition_read_back_is_what_hydra_composed(configs: Path, hydra_calls: list[str]) -> None:
    assert composed(configs, "run.tasks_at_once=3")["run"]["tasks_at_once"] == 3
    assert hydra_calls == ["local"] and len(kept()) == 1
    assert kept()[0].stat().st_mode & 0o777 == 0o666 & ~current_umask()
    # kept as Hydra made it: the overrides and the profile are applied in every run, on top of it
    plain = composed(configs)
    assert plain["run"]["tasks_at_once"] is None and hydra_calls == ["local"]  # the second run composed nothing
    assert composed(configs) == plain and hydra_calls == ["local"]


def test_nothing_is_written_before_the_plan_passes_its_checks(configs: Path, hydra_calls: list[str]) -> None:
    composed(configs, passed=False)  # the plan failed a later check: bad input writes nothing
    assert not Path("kept").exists()
    composed(configs)
    assert hydra_calls == ["local", "local"] and len(kept()) == 1


def test_an_edited_option_file_composes_again(configs: Path, hydra_calls: list[str]) -> None:
    choice = "deployment=local"
    before = composed(configs, choice)
    option = configs / "deployment" / "local.yaml"
    text = option.read_text()
    assert "readiness_timeout_s:" in text
    option.write_text(text.replace("readiness_timeout_s:", "readiness_timeout_s: 77 #", 1))
    after = composed(configs, choice)
    assert after["deployment"]["readiness_timeout_s"] == 77 != before["deployment"]["readiness_timeout_s"]
    assert hydra_calls == ["local", "local"]


def test_a_new_or_deleted_option_file_composes_again(configs: Path, hydra_calls: list[str]) -> None:
    first = composed(configs)
    (configs / "deployment" / "mine.yaml").write_text("type: stub\n")
    composed(configs)
    assert hydra_calls == ["local", "local"]
    (configs / "deployment" / "mine.yaml").unlink()  # the folder as it was first: its composition read back
    assert composed(configs) == first and hydra_calls == ["local", "local"]


def test_each_group_choice_and_primary_keeps_its_own(configs: Path, hydra_calls: list[str]) -> None:
    for _ in range(2):
        stub = composed(configs, "deployment=stub")
        local = composed(configs)
        default = composed(configs, primary="default")
    assert stub["deployment"]["type"] == "stub" != local["deployment"]["type"]
    assert default["run"]["compose"]["eval_config"].endswith("default.yaml")
    assert hydra_calls == ["local", "local", "default"] and len(kept()) == 3


def test_another_configs_folder_or_code_version_composes_again(configs: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               hydra_calls: list[str]) -> None:
    composed(configs)
    other = tmp_path / "other" / "configs"
    shutil.copytree(configs, other)
    (other.parent / "env.toml").write_text("")
    composed(other)
    assert hydra_calls == ["local"] * 2
    real = kept_module.metadata.version
    monkeypatch.setattr(kept_module.metadata, "version", lambda name: "9.9" if name == "hydra-core" else real(name))
    hydra_cache._code.cache_clear()
    try:
        composed(configs)  # another Hydra
        assert hydra_calls == ["local"] * 3
        monkeypatch.setattr(hydra_cache.util, "find_spec", lambda name: object() if name == "hydra_plugins" else None)
        hydra_cache._code.cache_clear()
        composed(configs)
        composed(configs)  # a plugin installed: nothing kept, composed every time
        assert hydra_calls == ["local"] * 5
    finally:
        hydra_cache._code.cache_clear()


def test_a_linked_option_folder_is_followed(configs: Path, tmp_path: Path, hydra_calls: list[str]) -> None:
    """configs/deployment a link to a folder elsewhere (shared options): an edit there composes again."""
    shared = tmp_path / "shared-deployment"
    shutil.move(str(configs / "deployment"), shared)
    (configs / "deployment").symlink_to(shared)
    (shared / "loop").symlink_to(configs)  # a link back up the tree is walked once
    assert composed(configs, "deployment=local")["deployment"]["readiness_timeout_s"] == 300
    option = shared / "local.yaml"
    option.write_text(option.read_text().replace("readiness_timeout_s: 300", "readiness_timeout_s: 301", 1))
    assert composed(configs, "deployment=local")["deployment"]["readiness_timeout_s"] == 301
    assert hydra_calls == ["local", "local"]


def test_an_interpolated_defaults_entry_is_composed_every_time(configs: Path, monkeypatch: pytest.MonkeyPatch,
                                                               hydra_calls: list[str]) -> None:
    """`- deployment: ${oc.env:DEPLOY,local}` picks its option from the environment, which no key holds."""
    text = (configs / "local.yaml").read_text()
    assert "  - deployment: local\n" in text
    (configs / "local.yaml").write_text(text.replace("  - deployment: local\n", "  - deployment: ${oc.env:DEPLOY,local}\n", 1))
    monkeypatch.setenv("DEPLOY", "stub")
    assert composed(configs)["deployment"]["type"] == "stub"
    monkeypatch.setenv("DEPLOY", "local")
    assert composed(configs)["deployment"]["type"] == "local"
    assert hydra_calls == ["local", "local"] and not kept()


def test_a_primary_outside_the_configs_folder_is_composed_every_time(configs: Path, tmp_path: Path,
                                                                      hydra_calls: list[str]) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text((configs / "local.yaml").read_text())
    for _ in range(2):
        composed(configs, primary=str(mine))
    assert hydra_calls == ["mine", "mine"] and not kept()


def test_a_dry_run_reads_entries_and_writes_none(configs: Path, hydra_calls: list[str]) -> None:
    dry = composed(configs, keep=False)
    assert not Path("kept").exists()
    composed(configs)  # a real run keeps it
    assert composed(configs, keep=False) == dry and hydra_calls == ["local", "local"]


def test_a_secret_or_a_failure_is_never_kept(configs: Path, hydra_calls: list[str]) -> None:
    text = (configs / "local.yaml").read_text()
    (configs / "local.yaml").write_text(text + "\nenv_vars:\n  HF_TOKEN: hf_abcdefghijklmnopqrstuvwxyz0123456789\n")
    for _ in range(2):
        held = hydra_cache.Kept(Path("kept"))
        with pytest.raises(UserError, match="holds a secret value"):
            compose(ComposeRequest(eval_config="local", configs_dir=configs, env_file=configs.parent / "env.toml",
                                   kept=held))
        held.keep()  # even asked to: the composition holds a literal secret
    assert not kept() and hydra_calls == ["local", "local"]
    (configs / "local.yaml").write_text(text.replace("defaults:", "defaults:\n  - deployment: nowhere", 1))
    with pytest.raises(UserError, match="cannot compose its defaults list"):
        composed(configs)
    assert not kept()


@pytest.mark.parametrize("damage", ["", "{not json", '{"key": "another", "cfg": {}}', '{"cfg": []}'])
def test_a_damaged_entry_is_composed_again_and_replaced(configs: Path, hydra_calls: list[str], damage: str) -> None:
    first = composed(configs)
    kept()[0].write_text(damage)
    assert composed(configs) == first and hydra_calls == ["local", "local"]
    assert composed(configs) == first and hydra_calls == ["local", "local"]  # replaced


def test_a_folder_that_cannot_be_written_is_skipped(configs: Path, hydra_calls: list[str]) -> None:
    Path("kept").write_text("a file where the folder would be")
    first = composed(configs)
    assert composed(configs) == first and hydra_calls == ["local", "local"]


def test_a_plan_keeps_its_composition_only_once_a_model_passed(tmp_path: Path, planner, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real Plan: a model whose compile fails leaves nothing under .snakemake/nemotron/composed; one that
    compiles keeps the composition (read back by the next plan)."""
    from nemotron_eval.pipeline import plan_cache
    from nemotron_eval.pipeline.plan import Plan

    original = Plan._compile

    def failing(self, spec, artifact):  # type: ignore[no-untyped-def]
        raise UserError("this checkpoint cannot be served here")

    monkeypatch.setattr(Plan, "_compile", failing)
    with pytest.raises(UserError):
        planner("local").model("demo_latest")
    assert not plan_cache.COMPOSED_DIR.exists()
    monkeypatch.setattr(Plan, "_compile", original)
    planner("local").model("demo_latest")
    assert len(list(plan_cache.COMPOSED_DIR.glob("*.json"))) == 1
