"""resolved.yaml and eval.yaml: artifact references replaced and recorded, run stripped, nothing left to resolve."""

from __future__ import annotations

from pathlib import Path

import pytest

from nemotron_eval.artifacts import Resolved
from nemotron_eval.pipeline.compile import compile_job, resolve_artifacts, resolve_model
from nemotron_eval.config.compose import ComposeRequest, compose
from nemotron_eval.core.errors import UserError
from nemotron_eval.core.spec import parse_wildcard
from nemotron_eval.data.tasks import STAGED

from conftest import REPO


def merged(name: str = "default", overrides: list[str] | None = None) -> dict:
    return compose(ComposeRequest(name, REPO / "configs", overrides=overrides or []))


RESOLVED = Resolved(spec="rl:latest", registry="local", name="rl", version="v3", digest="f" * 64, path="/ckpt/rl3")


def test_resolve_then_compile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("USER", "alice"), ("HOSTNAME", "login07"), ("PWD", "/home/alice/somewhere")):
        monkeypatch.setenv(name, value)
    cfg = resolve_artifacts(merged("default", ["run.wandb.entity=team", "run.wandb.project=evals"]), parse_wildcard("rl_latest"), RESOLVED)
    assert cfg["deployment"]["checkpoint_path"] == "/ckpt/rl3"
    assert cfg["run"]["artifacts"]["model"] == RESOLVED.as_dict()
    job, ev = compile_job(cfg, [STAGED[t] for t in ("mmlu", "arc_challenge", "winogrande", "hellaswag", "openbookqa")])
    assert "run" in job and "run" not in ev
    text = repr(ev)
    assert "${" not in text
    assert ev["evaluation"]["nemo_evaluator_config"]["config"]["params"]["extra"]["tokenizer"] == "/ckpt/rl3/tokenizer"
    assert ev["export"]["wandb"] == {"entity": "team", "project": "evals"}
    assert not any(v in repr(job) for v in ("alice", "login07", "somewhere"))  # nothing from who or where runs it
    assert job["run"]["model"] == "rl:latest"
    assert list(job["run"]["tasks"]) == ["mmlu", "arc_challenge", "winogrande", "hellaswag", "openbookqa"]
    assert job["run"]["tasks"]["mmlu"]["name"] == "adlr_mmlu" and job["run"]["tasks"]["mmlu"]["offline"] is True


def test_fingerprints_follow_what_the_scores_depend_on() -> None:
    tasks = [STAGED["hellaswag"], STAGED["openbookqa"]]

    def prints(overrides: list[str], resolved: Resolved = RESOLVED) -> dict[str, str]:
        cfg = resolve_artifacts(merged("local", [*overrides]), parse_wildcard("smollm2_latest"), resolved)
        cfg["evaluation"]["tasks"] = [t for t in cfg["evaluation"]["tasks"] if t["name"] in ("hellaswag", "openbookqa")]
        job, _ = compile_job(cfg, tasks)
        return {k: v["fingerprint"] for k, v in job["run"]["tasks"].items()}

    base = prints([])
    assert prints(["execution.auto_export.destinations=[wandb]", "export.wandb.entity=team"]) == base
    assert prints(["data.mirror=/elsewhere"]) == base
    moved = Resolved(**{**RESOLVED.as_dict(), "path": "/moved/rl3"})
    assert prints([], moved) == base  # the same content elsewhere: its digest says what it is
    other = Resolved(**{**RESOLVED.as_dict(), "digest": "e" * 64})
    assert prints([], other)["hellaswag"] != base["hellaswag"]
    one = prints(["+evaluation.tasks.3.nemo_evaluator_config.config.params.limit_samples=3"])
    assert one["hellaswag"] != base["hellaswag"] and one["openbookqa"] == base["openbookqa"]
    assert prints(["evaluation.nemo_evaluator_config.config.params.limit_samples=3"])["openbookqa"] != base["openbookqa"]
    assert prints(["deployment.dtype=bfloat16"])["openbookqa"] != base["openbookqa"]
    # How the model is served and how requests are sent cannot change a score, even where the deployment
    # command interpolates them; what the server computes with can.
    serving = ["deployment.port=8123", "deployment.host=0.0.0.0", "deployment.readiness_timeout_s=900",
               "deployment.served_model_name=other", "evaluation.nemo_evaluator_config.config.params.parallelism=16",
               "evaluation.nemo_evaluator_config.config.params.request_timeout=30",
               "+evaluation.tasks.4.nemo_evaluator_config.config.params.max_retries=1"]
    assert prints(serving) == base
    assert prints(["deployment.max_batch_size=2"])["openbookqa"] != base["openbookqa"]
    assert prints(["deployment.command='python -m other.server'"])["openbookqa"] != base["openbookqa"]


def test_the_served_name_counts_against_an_existing_endpoint() -> None:
    """With no deployment, the model name sent picks the model the endpoint answers with."""
    base = ["deployment=none", "target.api_endpoint.url=https://api.example.com/v1/completions"]

    def prints(name: str) -> str:
        cfg = resolve_artifacts(merged("default", [*base, f"target.api_endpoint.model_id={name}", f"deployment.served_model_name={name}"]), parse_wildcard("rl_latest"), RESOLVED)
        cfg["evaluation"]["tasks"] = cfg["evaluation"]["tasks"][-1:]
        job, _ = compile_job(cfg, [STAGED["openbookqa"]])
        return job["run"]["tasks"]["openbookqa"]["fingerprint"]

    assert prints("a/one") != prints("a/two")


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
