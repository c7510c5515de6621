"""The whole DAG in about a minute: compose, resolve, compile, fingerprints, staging from the mirror, the deployment
(the stub: deterministic answers, no model), the real NeMo Evaluator harness on two tasks, results, per-item records
and the summary, through the snakemake CLI with the local profile; then a second run that has nothing to do.
The stub stands in for the model only: what the pipeline and the harness do is real (tests/test_e2e_local.py runs
the real model)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import SHARED_BENCHMARKS, copy_workflow, snakemake
from nemotron_eval.artifacts import LocalRegistry
from nemotron_eval.deploy.stub import write_checkpoint

MIRROR = Path(os.environ.get("NEMOTRON_DATA_MIRROR") or SHARED_BENCHMARKS)
pytestmark = pytest.mark.skipif(not (MIRROR / "SOURCES.md").is_file(),
                                reason=f"no benchmark mirror at {MIRROR} (set NEMOTRON_DATA_MIRROR)")
TASKS = ("openbookqa", "winogrande")
CONFIG = ['overrides=["deployment=stub","run.model=stub:latest","run.tasks_starting_at_once=1","deployment.latency_ms=700",'
          '"evaluation.nemo_evaluator_config.config.params.limit_samples=3",'
          '"evaluation.nemo_evaluator_config.config.params.parallelism=2"]', f"tasks={json.dumps(list(TASKS))}"]


def test_the_whole_dag_against_the_stub(tmp_path: Path) -> None:
    work = copy_workflow(tmp_path)
    (work / "env.toml").write_text("")
    LocalRegistry(work / "artifacts").add("stub", write_checkpoint(tmp_path / "stub-checkpoint"))
    env = {"NEMOTRON_DATA_MIRROR": str(MIRROR), "NEMOTRON_ENV_FILE": str(work / "env.toml")}
    proc = snakemake(work, "results/stub_latest/summary.md", "--config", *CONFIG, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for rule in ("compose_config", "resolve_artifacts", "compile_eval", "task_fingerprint", "stage_dataset",
                 "serve_model", "evaluate_task", "summarize_model"):
        assert f"rule {rule}:" in out, rule
    summary = json.loads((work / "results/stub_latest/summary.json").read_text())
    assert set(summary["tasks"]) == set(TASKS)
    ids = set()
    for task in TASKS:
        result = json.loads((work / f"results/stub_latest/{task}.json").read_text())
        assert result["n_samples"] == 3 and result["metrics"]["acc"]["stderr"] is not None
        assert result["data"]["digest"].startswith("sha256:") and result["model"]["spec"] == "stub:latest"
        ids.add(result["deployment"]["id"])
        assert (work / f"results/stub_latest/{task}.items.jsonl.gz").stat().st_size > 0
    assert len(ids) == 1  # one deployment served both tasks
    # one harness starts at a time (run.tasks_starting_at_once): one task waited for the other's first answer
    # (the config's order decides only between tasks that wait together), and both then ran against the
    # deployment together (each answer takes 0.7 s: deployment.latency_ms, 2 at a time: parallelism)
    line = "waiting for a starting slot (1 harness(es) start at once; tasks earlier in the config first)"
    waited = [t for t in TASKS if line in (work / f"logs/evaluate_task/stub_latest/{t}.log").read_text()]
    assert len(waited) == 1, waited
    second = waited[0]
    first = next(t for t in TASKS if t != second)
    results = {t: json.loads((work / f"results/stub_latest/{t}.json").read_text()) for t in TASKS}
    assert results[first]["started_at"] < results[second]["started_at"] < results[first]["finished_at"]
    stats = json.loads((work / "run/stub_latest/stats.json").read_text())
    assert stats["stub"] is True and set(stats["clients"]) == set(TASKS)  # each task asked under its own name
    again = snakemake(work, "results/stub_latest/summary.md", "--config", *CONFIG, env=env)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
