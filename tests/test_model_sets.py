"""Several models in one run: `run.model` as a list or a version set (`sft:v1,sft:v3`, `sft:v2..v5`, `sft:*`,
`[sft:v1,rl:latest]`), expanded once by the plan against the registry; a bad set is one line before anything runs.
The end-to-end test runs one `nemotron eval` of three stub versions: one run, one deployment per model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import REPO, SHARED_BENCHMARKS, STUB, copy_workflow, error_line, make_checkpoint, nemotron
from nemotron_eval.artifacts import LocalRegistry
from nemotron_eval.core.errors import UserError
from nemotron_eval.pipeline.plan import Plan
from nemotron_eval.pipeline.request import Request

TASK = "openbookqa"
LIMIT = "evaluation.nemo_evaluator_config.config.params.limit_samples"
MIRROR = Path(os.environ.get("NEMOTRON_DATA_MIRROR") or SHARED_BENCHMARKS)


@pytest.fixture
def sft(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalRegistry:
    """A working directory whose local registry holds sft v1..v4 and rl v1 (alias latest)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "env.toml").write_text("")
    monkeypatch.setenv("NEMOTRON_ENV_FILE", str(tmp_path / "env.toml"))
    registry = LocalRegistry(tmp_path / "artifacts")
    for i in range(1, 5):
        registry.add("sft", make_checkpoint(tmp_path / "ckpt" / f"sft{i}", content=f"w{i}"))
    registry.add("rl", make_checkpoint(tmp_path / "ckpt" / "rl"), aliases=["latest"])
    return registry


def plan(model: str) -> Plan:
    return Plan(Request(eval_config="local", overrides=("deployment=stub", f"run.model={model}"), tasks=(TASK,)),
                REPO / "configs")


@pytest.mark.parametrize("model, expected", [
    ("sft:v1,sft:v3", ["sft_v1", "sft_v3"]),
    ("sft:v2..v4", ["sft_v2", "sft_v3", "sft_v4"]),
    ("sft:2..3", ["sft_v2", "sft_v3"]),
    ("sft:*", ["sft_v1", "sft_v2", "sft_v3", "sft_v4"]),
    ("[sft:v1,rl:latest]", ["sft_v1", "rl_latest"]),
    ("[sft:v3..v4,sft:v1,sft:v3]", ["sft_v3", "sft_v4", "sft_v1"]),  # each once, in the order written
    ("sft:v2", ["sft_v2"]),
])
def test_run_model_expands_to_every_model(sft: LocalRegistry, model: str, expected: list[str]) -> None:
    p = plan(model)
    assert p.models == expected and p.default_model == expected[0]
    assert p.targets(per_task=True) == [f"results/{m}/{TASK}.json" for m in expected]
    assert p.targets() == [f"results/{m}/summary.json" for m in expected]
    for m in expected:  # each model compiles on its own: its job.yaml names it alone
        assert p.model(m).job["run"]["model"] == m.replace("_", ":")


@pytest.mark.parametrize("model, message", [
    ("sft:v4..v2", "run.model: 'sft:v4..v2' runs backwards (v4 after v2); write sft:v2..v4, the lower version first"),
    ("sft:v2..v9", "run.model: 'sft:v2..v9': sft has no v9 in the local registry; its versions: v1, v2, v3, v4"),
    ("sft:v1,ghost:*", "run.model: 'ghost:*': ghost has no versions in the local registry; register one with "
                       "`nemotron artifacts add ghost PATH`"),
    ("sft:**", "run.model: 'sft:**' is not a valid version set; write sft:v2, sft:v1,sft:v3, sft:v2..v5, "
               "sft:* (every version), [sft:v1,rl:latest]"),
])
def test_a_bad_set_is_one_line_naming_it(sft: LocalRegistry, model: str, message: str) -> None:
    with pytest.raises(UserError) as e:
        plan(model)
    assert str(e.value) == message


def test_a_version_not_in_the_registry_is_named_with_the_valid_ones(sft: LocalRegistry) -> None:
    p = plan("sft:v1,sft:v9")
    with pytest.raises(UserError) as e:
        p.model("sft_v9")
    assert "'sft:v9'" in str(e.value) and "valid: v1, v2, v3, v4" in str(e.value)


@pytest.fixture
def stubs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project whose registry holds three versions of the stub checkpoint (stub:v1..v3)."""
    from nemotron_eval.deploy.stub import write_checkpoint

    work = copy_workflow(tmp_path)
    (work / "env.toml").write_text("")
    monkeypatch.setenv("NEMOTRON_ENV_FILE", str(work / "env.toml"))
    monkeypatch.setenv("NEMOTRON_DATA_MIRROR", str(MIRROR))
    for i in range(1, 4):  # three checkpoints (the registry gives one content one version)
        checkpoint = write_checkpoint(tmp_path / f"stub-checkpoint-{i}")
        (checkpoint / "step.txt").write_text(f"{i}\n")
        LocalRegistry(work / "artifacts").add("stub", checkpoint)
    return work


def test_a_dry_run_prints_every_model_and_a_bad_set_runs_nothing(stubs: Path) -> None:
    dry = nemotron(stubs, "eval", "-d", "-t", TASK, *STUB, "run.model=stub:v1..v2")
    assert dry.returncode == 0, dry.stderr[-2000:]
    docs = dry.stdout.split("---\n")[1:]
    assert [d.splitlines()[0] for d in docs] == ["# build/stub_v1/eval.yaml", "# build/stub_v2/eval.yaml"]
    assert "stub:v1" in docs[0] and "stub:v2" in docs[1]
    for model in ("stub_v1", "stub_v2"):
        assert f"results/{model}/{TASK}.json" in dry.stderr  # Snakemake's plan names each model's job
    bad = nemotron(stubs, "eval", "-t", TASK, *STUB, "run.model=stub:v1..v7")
    assert bad.returncode != 0
    assert error_line(bad) == "nemotron: error: run.model: 'stub:v1..v7': stub has no v7 in the local registry; its versions: v1, v2, v3"
    assert not (stubs / "runs").exists() and not (stubs / "build").exists()


@pytest.mark.slow
@pytest.mark.skipif(not (MIRROR / "SOURCES.md").is_file(), reason=f"no benchmark mirror at {MIRROR} (set NEMOTRON_DATA_MIRROR)")
def test_one_eval_of_every_version_is_one_run_with_a_deployment_per_model(stubs: Path) -> None:
    proc = nemotron(stubs, "eval", "-t", TASK, f"{LIMIT}=2", *STUB, "run.model=stub:*")
    assert proc.returncode == 0, proc.stderr[-3000:]
    models = ["stub_v1", "stub_v2", "stub_v3"]
    [run_id] = os.listdir(stubs / "runs")
    record = json.loads((stubs / "runs" / run_id / "run.json").read_text())
    assert record["models"] == models and record["state"] == "done"
    for model in models:
        result = json.loads((stubs / f"results/{model}/{TASK}.json").read_text())
        assert result["n_samples"] == 2 and result["model"]["spec"] == model.replace("_", ":")
        assert (stubs / "runs" / run_id / model / "eval.yaml").is_file()  # the run's copy of each model's config
        assert json.loads((stubs / f"run/{model}/stats.json").read_text())  # its own deployment, stopped
    status = nemotron(stubs, "status", run_id).stdout
    assert [line.split()[:3] for line in status.splitlines() if TASK in line] == [[m, TASK, "done"] for m in models]
    logs = nemotron(stubs, "logs", run_id, "--task", TASK)
    assert logs.stdout.count(f"{TASK}: acc") == 3
