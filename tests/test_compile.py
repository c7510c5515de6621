"""resolved.yaml and eval.yaml: artifact references replaced and recorded, run stripped, nothing left to resolve."""

from __future__ import annotations

from pathlib import Path

import pytest

from nemotron_eval.artifacts import Resolved
from nemotron_eval.config.compile import compile_job, resolve_artifacts, resolve_model
from nemotron_eval.config.compose import ComposeRequest, compose
from nemotron_eval.errors import UserError
from nemotron_eval.spec import parse_wildcard

from conftest import REPO


def merged(name: str = "default", overrides: list[str] | None = None) -> dict:
    return compose(ComposeRequest(name, REPO / "configs", overrides=overrides or []))


RESOLVED = Resolved(spec="rl:latest", registry="local", name="rl", version="v3", digest="f" * 64, path="/ckpt/rl3")


def test_resolve_then_compile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "alice")
    cfg = resolve_artifacts(merged("default", ["run.wandb.entity=team", "run.wandb.project=evals"]), parse_wildcard("rl_latest"), RESOLVED)
    assert cfg["deployment"]["checkpoint_path"] == "/ckpt/rl3"
    assert cfg["run"]["artifacts"]["model"] == RESOLVED.as_dict()
    job, ev = compile_job(cfg)
    assert "run" in job and "run" not in ev
    text = repr(ev)
    assert "${" not in text
    assert ev["evaluation"]["nemo_evaluator_config"]["config"]["params"]["extra"]["tokenizer"] == "/ckpt/rl3/tokenizer"
    assert ev["execution"]["username"] == "alice" and ev["export"]["wandb"] == {"entity": "team", "project": "evals"}
    assert job["run"]["model"] == "rl:latest"


def test_unknown_art_field_and_key() -> None:
    cfg = merged("local", ["+deployment.note=${art:model,colour}"])
    with pytest.raises(UserError, match=r"\$\{art:model,colour\}: unknown field 'colour'; valid: registry, name, version"):
        resolve_artifacts(cfg, parse_wildcard("smollm2_latest"), RESOLVED)
    cfg = merged("local", ["+deployment.note=${art:data,path}"])
    with pytest.raises(UserError, match="unknown artifact 'data'"):
        resolve_artifacts(cfg, parse_wildcard("smollm2_latest"), RESOLVED)


def test_explicit_checkpoint_path_bypasses_the_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # an empty registry: resolution would fail
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "w").write_text("x")
    got = resolve_model(merged("local", [f"deployment.checkpoint_path={ck}"]), parse_wildcard("whatever_latest"))
    assert (got.registry, got.path, got.version) == ("explicit", str(ck), None) and got.digest.startswith("stat:")
    with pytest.raises(UserError, match="not an existing absolute path"):
        resolve_model(merged("local", ["deployment.checkpoint_path=relative/ck"]), parse_wildcard("x_latest"))
    with pytest.raises(UserError, match="no artifact named 'x'"):
        resolve_model(merged("local"), parse_wildcard("x_latest"))
