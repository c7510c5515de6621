"""End to end on the embedded default: the real SmolLM2 served on CPU, the real harness, the real benchmark
data (../shared/benchmarks or $NEMOTRON_DATA_MIRROR), through the snakemake CLI with the local profile."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from conftest import SHARED_BENCHMARKS, copy_workflow, snakemake
from nemotron_eval.core.machine import available_cores

MIRROR = Path(os.environ.get("NEMOTRON_DATA_MIRROR") or SHARED_BENCHMARKS)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MIRROR / "SOURCES.md").is_file(), reason=f"no benchmark mirror at {MIRROR} (set NEMOTRON_DATA_MIRROR)"),
]
TASKS = ("openbookqa", "winogrande")
LIMIT = 'overrides=["evaluation.nemo_evaluator_config.config.params.limit_samples=5"]'
# Every run of this module has secrets in its environment: none may reach a file.
SENTINELS = {"WANDB_API_KEY": "sentinel-wandb-5b1e0c", "HF_TOKEN": "sentinel-hf-9d27aa"}
ENV = {"NEMOTRON_DATA_MIRROR": str(MIRROR), "WANDB_MODE": "offline", **SENTINELS}
EXPORT = ('overrides=["evaluation.nemo_evaluator_config.config.params.limit_samples=5",'
          '"execution.auto_export.destinations=[wandb]","export.wandb.entity=team","export.wandb.project=evals"]')
KEYS = {"task", "harness_task", "metrics", "n_samples", "model", "config_sha256", "data", "deployment", "versions",
        "started_at", "finished_at", "duration_s", "raw"}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    work = copy_workflow(tmp_path_factory.mktemp("e2e"))
    targets = [f"results/smollm2_latest/{t}.json" for t in TASKS]
    proc = snakemake(work, *targets, "--config", LIMIT, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, proc


def test_results_have_scores_and_provenance(evaluated) -> None:
    work, _ = evaluated
    eval_sha = hashlib.sha256((work / "build/smollm2_latest/eval.yaml").read_bytes()).hexdigest()
    results = [json.loads((work / f"results/smollm2_latest/{t}.json").read_text()) for t in TASKS]
    for r, task in zip(results, TASKS):
        assert KEYS <= set(r), KEYS - set(r)
        assert r["task"] == task and r["n_samples"] == 5
        assert r["metrics"]["acc"]["stderr"] is not None
        assert all(0.0 <= m["value"] <= 1.0 for m in r["metrics"].values())
        assert r["config_sha256"] == eval_sha
        assert (r["model"]["spec"], r["model"]["version"], r["model"]["registry"]) == ("smollm2:latest", "v1", "embedded")
        assert r["data"]["source"] == f"mirror:{MIRROR.resolve()}" and r["data"]["digest"].startswith("sha256:")
        assert (work / r["raw"] / "results.yml").is_file()
        # the adapter proxy started with threads for the harness's requests in flight, not its default 2,048
        assert "threads=16 " in (work / r["raw"] / "harness.log").read_text()
    assert results[0]["deployment"]["id"] == results[1]["deployment"]["id"]  # one deployment served both
    receipt = json.loads((work / "models/smollm2.json").read_text())
    assert receipt["lineage"]["source_sha256"] and receipt["digest"] == results[0]["model"]["digest"]


def test_the_deployment_reports_what_it_did(evaluated) -> None:
    """Each task asked under its own name, so the server counts per task; the figures reach the results and,
    when the deployment stops, run/{model}/stats.json. The server computes on every core the machine gives."""
    work, _ = evaluated
    stats = json.loads((work / "run/smollm2_latest/stats.json").read_text())
    assert stats["loads"] == 1 and set(stats["clients"]) == set(TASKS)
    # every core, though Snakemake runs the service with OMP_NUM_THREADS=1 (its `threads: 1`)
    assert stats["threads"] == available_cores()
    assert stats["cache_hit_tokens"] > 0 and stats["computed_tokens"] + stats["cache_hit_tokens"] == stats["prompt_tokens"]
    assert 0 < stats["busy_s"] < stats["wall_s"]
    for task in TASKS:
        server = json.loads((work / f"results/smollm2_latest/{task}.json").read_text())["deployment"]["server"]
        mine = stats["clients"][task]
        assert server["task"]["requests"] == mine["requests"] > 0  # the task was done when it asked
        assert server["task"]["first_answer_s"] == mine["first_answer_s"]
        assert server["deployment"]["requests"] <= stats["requests"]


def test_second_run_has_nothing_to_do(evaluated) -> None:
    work, _ = evaluated
    again = snakemake(work, *[f"results/smollm2_latest/{t}.json" for t in TASKS], "--config", LIMIT, env=ENV)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_export_settings_change_reruns_no_evaluation(evaluated) -> None:
    work, _ = evaluated
    proc = snakemake(work, "-n", "--config", 'overrides=["evaluation.nemo_evaluator_config.config.params.limit_samples=5",'
                     '"execution.auto_export.destinations=[wandb]"]', "--", *[f"results/smollm2_latest/{t}.json" for t in TASKS],
                     env=ENV)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "compile_eval" in out and "evaluate_task" not in out


def test_a_changed_task_setting_reruns_its_evaluation_in_the_same_run(evaluated) -> None:
    """Recompiling and rerunning the evaluation happen in one invocation (Snakemake skips a job's own param check
    behind an ancient() input whose producer reruns: the fingerprint file carries the change instead)."""
    work, _ = evaluated
    proc = snakemake(work, "-n", "--config", 'overrides=["evaluation.nemo_evaluator_config.config.params.limit_samples=6"]',
                     "--", *[f"results/smollm2_latest/{t}.json" for t in TASKS], env=ENV)
    stats = (proc.stdout + proc.stderr).split("Job stats:")[1].split("total")[0]
    assert proc.returncode == 0 and "compile_eval" in stats and "evaluate_task            2" in stats, stats


def test_one_tasks_changed_setting_reruns_that_task_only(evaluated) -> None:
    """OpenBookQA gets its own limit (configs/local.yaml lists it fifth): its evaluation reruns, with the deployment
    it needs; Winogrande's result stands (a new deployment is no reason to evaluate again)."""
    work, _ = evaluated
    proc = snakemake(work, "-n", "--config", 'overrides=["evaluation.nemo_evaluator_config.config.params.limit_samples=5",'
                     '"+evaluation.tasks.4.nemo_evaluator_config.config.params.limit_samples=6"]', "--",
                     *[f"results/smollm2_latest/{t}.json" for t in TASKS], env=ENV)
    out = proc.stdout + proc.stderr
    stats = out.split("Job stats:")[1].split("total")[0]
    assert proc.returncode == 0 and re.search(r"evaluate_task\s+1\n", stats) and re.search(r"serve_model\s+1\n", stats), stats
    assert "output: results/smollm2_latest/openbookqa.json" in out and "output: results/smollm2_latest/winogrande" not in out


def test_an_evaluation_snakemake_reruns_for_its_own_reasons_gets_its_deployment(evaluated) -> None:
    """A run stopped after Winogrande's new fingerprint was written and before its evaluation ran: the file is newer
    than the result and differs from what the result was made with, so Snakemake reruns the evaluation; the plan
    declares the deployment for it (else the rerun would have none to talk to). The other tests expect the old
    fingerprint back: it is restored (same content as the result's record: no rerun)."""
    work, _ = evaluated
    changed = ('overrides=["evaluation.nemo_evaluator_config.config.params.limit_samples=5",'
               '"+evaluation.tasks.2.nemo_evaluator_config.config.params.limit_samples=4"]')
    fingerprint = "build/smollm2_latest/tasks/winogrande.json"
    try:
        # the run recompiled and wrote the new fingerprint, then it stopped
        assert snakemake(work, "build/smollm2_latest/job.yaml", fingerprint, "--config", changed, env=ENV).returncode == 0
        proc = snakemake(work, "-n", "--config", changed, "--", *[f"results/smollm2_latest/{t}.json" for t in TASKS], env=ENV)
        out = proc.stdout + proc.stderr
        stats = out.split("Job stats:")[1].split("total")[0]
        assert proc.returncode == 0 and re.search(r"evaluate_task\s+1\n", stats) and re.search(r"serve_model\s+1\n", stats), stats
        assert "output: results/smollm2_latest/winogrande.json" in out
    finally:
        assert snakemake(work, "build/smollm2_latest/job.yaml", fingerprint, "--config", LIMIT, env=ENV).returncode == 0


def test_export_to_wandb_offline_and_no_secret_in_any_file(evaluated) -> None:
    """The real wandb library, offline (no W&B server here); then every file of the working directory is
    searched for the secrets' values (build/, results/, logs/, .snakemake/, wandb/, data/, models/)."""
    work, _ = evaluated
    proc = snakemake(work, "--config", EXPORT, f"tasks={json.dumps(list(TASKS))}", "--", "results/smollm2_latest/wandb.json", env=ENV)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "evaluate_task" not in out  # export settings rerun no evaluation
    receipt = json.loads((work / "results/smollm2_latest/wandb.json").read_text())
    assert receipt["mode"] == "offline"
    leaks = []
    for path in work.rglob("*"):
        if path.is_file() and path.stat().st_size < 200_000_000:
            data = path.read_bytes()
            leaks += [f"{path.relative_to(work)}: {name}" for name, value in SENTINELS.items() if value.encode() in data]
    assert not leaks, leaks


# MMLU, ARC-Challenge and HellaSwag score on the real model in test_faults.py's five tasks at parallelism 8 (one
# run of all five instead of a second run here).
