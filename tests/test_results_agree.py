"""A result never disagrees with what ran, on the files of a real run against the stub deployment (conftest STUB:
the real harness and pipeline, no model): a result whose recorded task fingerprint is not job.yaml's runs again
whatever path Snakemake takes, and staged data edited after staging is refused right before the harness reads it.
The unit cases: tests/test_evaluation_due.py (each reason, on files set by hand) and tests/test_readers.py (the
staged data's checks, what staging reads)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import SHARED_BENCHMARKS, STUB, copy_workflow, register_stub, snakemake
from nemotron_eval.core import layout
from nemotron_eval.data import stage
from nemotron_eval.pipeline import smk
from nemotron_eval.pipeline.plan import Plan
from nemotron_eval.pipeline.request import Request

MIRROR = Path(os.environ.get("NEMOTRON_DATA_MIRROR") or SHARED_BENCHMARKS)
pytestmark = pytest.mark.skipif(not (MIRROR / "SOURCES.md").is_file(),
                                reason=f"no benchmark mirror at {MIRROR} (set NEMOTRON_DATA_MIRROR)")
LIMIT = "evaluation.nemo_evaluator_config.config.params.limit_samples"
MODEL, TASK = "stub_latest", "openbookqa"
RESULT = layout.RESULT.format(model=MODEL, task=TASK)


def overrides(*more: str) -> list[str]:
    return [*STUB, *more]


def smk_run(work: Path, target: str, *more: str, dry: bool = False):
    config = ["--config", f"overrides={json.dumps(overrides(*more))}", f'tasks=["{TASK}"]']
    env = {"NEMOTRON_DATA_MIRROR": str(MIRROR), "NEMOTRON_ENV_FILE": str(work / "env.toml")}
    return snakemake(work, *(["-n"] if dry else []), target, *config, env=env)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One task evaluated against the stub (3 samples)."""
    work = copy_workflow(tmp_path_factory.mktemp("agree"))
    (work / "env.toml").write_text("")
    register_stub(work)
    proc = smk_run(work, RESULT, f"{LIMIT}=3")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return work


def plan(work: Path, *more: str) -> Plan:
    request = Request(eval_config="local", env_file=str(work / "env.toml"), overrides=tuple(overrides(*more)),
                      tasks=(TASK,))
    return Plan(request, Path(work) / "configs")


def test_the_result_records_the_digest_of_the_data_it_read(work: Path) -> None:
    result = json.loads((work / RESULT).read_text())
    assert result["data"]["digest"] == stage.staged_digest(work / "data" / TASK)
    assert stage.read_manifest(work / "data" / TASK)["reads"] == stage.reads(TASK, MIRROR.resolve())


def test_a_result_with_another_fingerprint_runs_again_when_a_recompile_for_another_reason_comes_first(
    work: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run stopped after the task's new fingerprint was written but before its evaluation (here: a run of the
    fingerprint alone), then a run that also recompiles for another reason (an export setting): Snakemake skips the
    checks of a job behind an ancient() input whose producer reruns, and kept the old result."""
    proc = smk_run(work, layout.TASK_FINGERPRINT.format(model=MODEL, task=TASK), f"{LIMIT}=4")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    monkeypatch.chdir(work)
    assert smk.stale_result(plan(work, f"{LIMIT}=4"), MODEL, TASK)
    assert not smk.stale_result(plan(work, f"{LIMIT}=3"), MODEL, TASK)

    dry = smk_run(work, RESULT, f"{LIMIT}=4", "export.local.csv=true", dry=True)
    out = dry.stdout + dry.stderr
    assert dry.returncode == 0, out[-4000:]
    assert "rule compile_eval:" in out and "rule evaluate_task:" in out and "rule serve_model:" in out, out[-4000:]

    proc = smk_run(work, RESULT, f"{LIMIT}=4", "export.local.csv=true")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    job = yaml.safe_load((work / layout.JOB.format(model=MODEL)).read_text())
    result = json.loads((work / RESULT).read_text())
    assert result["task_config_sha256"] == job["run"]["tasks"][TASK]["fingerprint"]
    assert result["n_samples"] == 4
    again = smk_run(work, RESULT, f"{LIMIT}=4", "export.local.csv=true", dry=True)
    assert "Nothing to be done" in again.stdout + again.stderr, (again.stdout + again.stderr)[-3000:]


def test_staged_data_edited_after_staging_is_refused_before_the_harness_reads_it(
    work: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    staged = work / "data" / TASK
    edited = staged / "main" / "test.jsonl"
    monkeypatch.chdir(work)
    harness = layout.harness_dir(MODEL, TASK, plan(work, f"{LIMIT}=5").evaluation(MODEL, TASK)["fingerprint"])
    try:
        edited.write_text(edited.read_text().replace('"A"', '"B"', 1))
        proc = smk_run(work, RESULT, f"{LIMIT}=5")  # another fingerprint: the evaluation runs
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out[-4000:]
        lines = [line for line in out.splitlines() if "edited after staging" in line]
        assert lines and all(f"data/{TASK}/main/test.jsonl: edited after staging" in line
                             and line.endswith(f"stage it again: delete data/{TASK} and run again") for line in lines)
        assert "Traceback" not in (work / layout.task_log(MODEL, TASK)).read_text()
        assert not (work / RESULT).exists()  # no result from the edited data
        assert not (work / harness).exists()  # the harness never ran
    finally:
        shutil.rmtree(staged)  # staged again by the next run
