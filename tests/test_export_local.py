"""The local exporter (results/{model}/local.json and .csv) and `nemotron export RUN_ID`: a run's record written
by `runs.create` as `nemotron eval` writes it (the fast way: no evaluation), over the suite's real fixture
results and the summary `summarize` writes (test_export_wandb's); the `nemotron` command in its own process."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from nemotron_eval.front import runs
from nemotron_eval.exporters.local import COLUMNS

from conftest import BIN
from test_export_wandb import MODEL, TASKS, clean_env, result_paths, workdir


def config(destinations: list[str], local: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"execution": {"auto_export": {"enabled": True, "destinations": destinations}},
            "export": {"local": local or {}, "mlflow": {"experiment_name": "again"},
                       "wandb": {"entity": "nemotron-team", "project": "evals"}}}


def expected_rows(work: Path) -> list[list[Any]]:
    rows = []
    for path in sorted(result_paths(work)):
        r = json.loads(path.read_text())
        m = r["model"]
        rows += [[r["task"], name, s["value"], s["stderr"], r["n_samples"], m["spec"], m["version"], m["digest"]]
                 for name, s in r["metrics"].items()]
    return rows


def step(work: Path, cfg: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    out = work / "results" / MODEL
    (work / "eval.yaml").write_text(yaml.safe_dump(cfg))
    return subprocess.run([str(BIN / "nemotron-step"), "export", "--dest", "local", "--config", str(work / "eval.yaml"),
                           "--summary", str(out / "summary.json"), "--out", str(out / "local.json"),
                           "--log", str(work / "logs" / "export.log"), *map(str, result_paths(work))],
                          cwd=work, capture_output=True, text=True, timeout=120)


def test_the_step_writes_the_table_and_the_csv_when_asked(tmp_path: Path) -> None:
    work = workdir(tmp_path)
    out = work / "results" / MODEL
    proc = step(work, config(["local"]))
    assert proc.returncode == 0, proc.stderr
    receipt = json.loads((out / "local.json").read_text())
    assert receipt["exported"] is True and receipt["columns"] == COLUMNS and receipt["rows"] == expected_rows(work)
    assert receipt["csv"] is None and not (out / "local.csv").exists()

    assert step(work, config(["local"], {"csv": True})).returncode == 0
    table = list(csv.reader(io.StringIO((out / "local.csv").read_text())))
    assert table[0] == COLUMNS and [float(r[2]) for r in table[1:]] == [r[2] for r in expected_rows(work)]

    proc = step(work, config(["local"], {"csv": "yes"}))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == "nemotron: error: export.local.csv='yes': true or false"


def make_run(work: Path, fingerprints: dict[str, str] | None = None) -> str:
    """A run's record as `nemotron eval` writes it: run.json, request.yaml, each model's eval.yaml and job.yaml."""
    job = {"run": {"tasks": {t: {"fingerprint": fp} for t, fp in (fingerprints or {}).items()}}}
    run = runs.Run(id=runs.new_id(), created_at=runs.now(), command=["nemotron", "eval", "-c", "local"], config="local",
                   mode="local", models=[MODEL], tasks=list(TASKS), targets=[f"results/{MODEL}/summary.json"],
                   state="done", exit_code=0, finished_at=runs.now())
    old = Path.cwd()
    try:
        os.chdir(work)
        runs.create(run, "tasks: []\n", {MODEL: {"eval.yaml": yaml.safe_dump(config([])), "job.yaml": yaml.safe_dump(job)}})
    finally:
        os.chdir(old)
    return run.id


def nemotron(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in clean_env(work.parent).items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([str(BIN / "nemotron"), *args], cwd=work, env=env, capture_output=True, text=True, timeout=300)


def test_nemotron_export_of_a_run_writes_its_table_as_csv(tmp_path: Path) -> None:
    work = workdir(tmp_path)
    run_id = make_run(work)
    proc = nemotron(work, "export", run_id, "--dest", "local", "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [f"results/{MODEL}/local.json", f"runs/{run_id}/export/local.csv"]
    table = list(csv.reader(io.StringIO((work / "runs" / run_id / "export" / "local.csv").read_text())))
    assert table[0] == COLUMNS and len(table) - 1 == len(expected_rows(work)) and table[1][:2] == ["hellaswag", "acc"]
    receipt = json.loads((work / "results" / MODEL / "local.json").read_text())
    assert receipt["exported"] is True and receipt["summary"] == f"results/{MODEL}/summary.json"  # auto_export was []


def test_nemotron_export_to_mlflow_and_only_the_runs_own_results(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    work = workdir(tmp_path)
    hellaswag = json.loads(result_paths(work)[0].read_text())
    run_id = make_run(work, {"hellaswag": "a-later-config"})  # hellaswag's result is not this run's
    proc = nemotron(work, "export", run_id, "--dest", "mlflow")
    assert proc.returncode == 0, proc.stderr
    receipt = json.loads((work / "results" / MODEL / "mlflow.json").read_text())
    assert receipt["results"] == [f"results/{MODEL}/openbookqa.json"] and receipt["experiment_name"] == "again"
    assert receipt["summary"] == f"runs/{run_id}/export/{MODEL}/summary.json"  # written for these results only
    run = MlflowClient(tracking_uri=receipt["tracking_uri"]).get_run(receipt["run_id"])
    assert "openbookqa/acc" in run.data.metrics and not any(k.startswith("hellaswag/") for k in run.data.metrics)
    assert hellaswag["task"] == "hellaswag"


def test_nemotron_export_to_wandb_offline(tmp_path: Path) -> None:
    """No W&B credentials here: the export runs offline, as the pipeline's does."""
    work = workdir(tmp_path)
    run_id = make_run(work)
    proc = nemotron(work, "export", run_id, "--dest", "wandb")
    assert proc.returncode == 0, proc.stderr
    receipt = json.loads((work / "results" / MODEL / "wandb.json").read_text())
    assert receipt["exported"] is True and receipt["mode"] == "offline" and receipt["project"] == "evals"
    assert {f"results/{t}.json" for t in TASKS} <= set(receipt["logged"]["artifact"]["files"])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["export", "20991231-000000-abcd", "--dest", "local"], "nemotron: error: no run '20991231-000000-abcd' in "),
        (["export", "RUN", "--dest", "mlflow", "--format", "csv"],
         "nemotron: error: --format csv: only --dest local writes a CSV table (--dest mlflow exports json receipts)"),
        (["export", "RUN", "--dest", "wandbb"], "nemotron: error: argument --dest: invalid choice: 'wandbb'"),
    ],
)
def test_bad_export_requests_are_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    work = workdir(tmp_path)
    run_id = make_run(work)
    proc = nemotron(work, *[run_id if a == "RUN" else a for a in args])
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith(expected), proc.stderr


def test_a_run_without_results_is_one_line(tmp_path: Path) -> None:
    work = workdir(tmp_path)
    run_id = make_run(work, {t: "another-config" for t in TASKS})
    proc = nemotron(work, "export", run_id, "--dest", "local")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"nemotron: error: run {run_id}: no results of its tasks (hellaswag, openbookqa) for {MODEL} under "
        f"{work / 'results'}; nothing to export (state: done)"
    ]
    assert not (work / "results" / MODEL / "local.json").exists()
