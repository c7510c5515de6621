"""The MLflow exporter with the real mlflow library: the project's local store (sqlite) read back with MLflow's
own client, and a real `mlflow server` on 127.0.0.1 (its own store in tmp_path) for the HTTP path. The results
are the suite's real fixture results and the summary the project's `summarize` writes (test_export_wandb's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nemotron_eval.core.errors import UserError
from nemotron_eval.exporters import get, job_for, names, targets
from nemotron_eval.exporters.mlflow import DIGEST_TAG, parse_config

from conftest import free_port, wait_for
from test_export_wandb import ENDPOINT_KEY, MODEL, TASKS, result_paths, workdir

TOKEN = "sentinel-mlflow-token-31415926"
PASSWORD = "sentinel-mlflow-password-2718"
BIN = Path(sys.executable).parent


def eval_config(work: Path, mlflow: dict[str, Any] | None = None, destinations: list[str] | None = None) -> dict[str, Any]:
    return {
        "execution": {"auto_export": {"enabled": True, "destinations": ["mlflow"] if destinations is None else destinations}},
        "target": {"api_endpoint": {"api_key_name": "MY_ENDPOINT_KEY"}},
        "export": {"mlflow": mlflow or {}},
    }


def export(work: Path, mlflow: dict[str, Any] | None = None, destinations: list[str] | None = None) -> dict[str, Any]:
    """The export step as the export_model rule runs it (`nemotron-step export --dest mlflow`), in this process."""
    from nemotron_eval.pipeline.steps import main

    out = work / "results" / MODEL
    config = work / "eval.yaml"
    config.write_text(yaml.safe_dump(eval_config(work, mlflow, destinations)))
    args = ["export", "--dest", "mlflow", "--config", str(config), "--summary", str(out / "summary.json"),
            "--out", str(out / "mlflow.json"), "--log", str(work / "logs" / "export.log"), *map(str, result_paths(work))]
    assert main(args) == 0, (work / "logs" / "export.log").read_text()
    receipt: dict[str, Any] = json.loads((out / "mlflow.json").read_text())
    return receipt


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    work = workdir(tmp_path)
    monkeypatch.chdir(work)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TOKEN)  # read by mlflow by name, never written anywhere
    monkeypatch.setenv("MY_ENDPOINT_KEY", ENDPOINT_KEY)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return work


def check_run(uri: str, receipt: dict[str, Any], work: Path) -> Any:
    """The run MLflow's own client finds: its metrics are the result JSONs' values, its params their provenance."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(receipt["run_id"])
    assert run.info.experiment_id == receipt["experiment_id"] and run.info.status == "FINISHED"
    for path in result_paths(work):
        result = json.loads(path.read_text())
        task = result["task"]
        for metric, score in result["metrics"].items():
            assert run.data.metrics[f"{task}/{metric}"] == score["value"]
            assert run.data.metrics[f"{task}/{metric}_stderr"] == score["stderr"]
        assert run.data.metrics[f"{task}/n_samples"] == result["n_samples"]
        assert run.data.params[f"{task}.config_sha256"] == result["config_sha256"]
        assert run.data.params[f"{task}.data_digest"] == result["data"]["digest"]
    model = json.loads(result_paths(work)[0].read_text())["model"]
    assert run.data.params["model.spec"] == model["spec"] and run.data.params["model.digest"] == model["digest"]
    assert run.data.tags["nemotron.model.qualified_name"] == model["qualified_name"]
    listed = {a.path for a in client.list_artifacts(run.info.run_id)}
    listed |= {a.path for a in client.list_artifacts(run.info.run_id, "results")}
    assert {"summary.json", "summary.md", *(f"results/{t}.json" for t in TASKS)} <= listed
    local = client.download_artifacts(run.info.run_id, "results/hellaswag.json", str(work.parent / "download"))
    assert Path(local).read_bytes() == (work / "results" / MODEL / "hellaswag.json").read_bytes()
    return run


def no_secret_under(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert TOKEN.encode() not in data and ENDPOINT_KEY.encode() not in data, path


def test_local_store_run_holds_the_results_and_a_second_export_finds_it(work: Path) -> None:
    receipt = export(work, {"run_name": "{model}-{version}", "tags": {"team": "evals"}})
    uri = "sqlite:///" + str(work / "mlruns" / "mlflow.db")
    assert receipt["exported"] is True and receipt["tracking_uri"] == uri and receipt["reused"] is False
    assert receipt["run_name"] == "smollm2_latest-v1" and receipt["experiment_name"] == "nemotron-eval"
    run = check_run(uri, receipt, work)
    assert run.data.tags["team"] == "evals" and len(run.data.tags[DIGEST_TAG]) == 16
    assert (work / "mlruns" / "artifacts").is_dir()  # the project's store keeps its artifacts beside the db

    again = export(work)
    assert again["run_id"] == receipt["run_id"] and again["reused"] is True
    from mlflow.tracking import MlflowClient

    assert len(MlflowClient(tracking_uri=uri).search_runs([receipt["experiment_id"]])) == 1
    no_secret_under(work)


def test_not_asked_writes_a_receipt_and_touches_no_store(work: Path) -> None:
    receipt = export(work, destinations=["wandb"])
    assert receipt["exported"] is False
    assert receipt["reason"] == "'mlflow' is not in execution.auto_export.destinations (['wandb'])"
    assert not (work / "mlruns").exists()


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real MLflow tracking server on a free port of 127.0.0.1, its store and artifacts in tmp_path."""
    port = free_port()
    log = (tmp_path / "mlflow-server.log").open("w")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "server-art")],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, (tmp_path / "mlflow-server.log").read_text()[-2000:]
        try:
            return urllib.request.urlopen(f"{url}/health", timeout=2).status == 200
        except OSError:
            return False

    try:
        wait_for(up, 120)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


def test_http_server_run_holds_the_results(work: Path, mlflow_server: str, tmp_path: Path) -> None:
    receipt = export(work, {"tracking_uri": mlflow_server, "experiment_name": "nightly"})
    assert receipt["tracking_uri"] == mlflow_server and receipt["experiment_name"] == "nightly"
    check_run(mlflow_server, receipt, work)
    assert not (work / "mlruns").exists()  # everything went to the server
    no_secret_under(work)
    no_secret_under(tmp_path / "server-art")


def test_an_unreachable_server_is_one_line_and_no_receipt(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nemotron_eval.pipeline.steps import main

    port = free_port()  # nothing listens there
    out = work / "results" / MODEL
    (work / "eval.yaml").write_text(yaml.safe_dump(eval_config(work, {"tracking_uri": f"http://127.0.0.1:{port}"})))
    code = main(["export", "--dest", "mlflow", "--config", str(work / "eval.yaml"), "--summary", str(out / "summary.json"),
                 "--out", str(out / "mlflow.json"), "--log", str(work / "logs" / "export.log"), *map(str, result_paths(work))])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("nemotron:")]
    assert code == 2 and len(err) == 1 and err[0].startswith(f"nemotron: error: export.mlflow: MLflow at http://127.0.0.1:{port}")
    assert not (out / "mlflow.json").exists()


def test_config_is_checked_when_the_plan_is_made() -> None:
    auto = {"destinations": ["mlflow"]}
    assert targets("m", auto, {"mlflow": {}}) == ["results/m/mlflow.json"]
    with pytest.raises(UserError, match=r"^export\.mlflow\.tracking_url: unknown key \(did you mean 'tracking_uri'\?\)"):
        targets("m", auto, {"mlflow": {"tracking_url": "x"}})
    with pytest.raises(UserError, match=r"^export\.mlflow\.run_name='\{task\}': unknown placeholder \{task\}"):
        targets("m", auto, {"mlflow": {"run_name": "{task}"}})
    with pytest.raises(UserError, match=r"holds a password; put credentials in MLFLOW_TRACKING_USERNAME") as e:
        parse_config({"tracking_uri": f"https://me:{PASSWORD}@mlflow.example.com"})
    assert PASSWORD not in str(e.value) and "https://mlflow.example.com" in str(e.value)
    with pytest.raises(UserError, match=r"^execution\.auto_export\.destinations='mlfow': no such exporter \(did you mean "
                       r"'mlflow'\?\); registered: local, mlflow, wandb$"):
        targets("m", {"destinations": ["mlfow"]}, {})
    assert names() == ["local", "mlflow", "wandb"] and get("mlflow").receipt("m") == "results/m/mlflow.json"
    assert job_for("mlflow", [], eval_config(Path(".")), Path("s"), Path("o")).secret_names == ["MY_ENDPOINT_KEY"]


def test_the_comparison_page_goes_with_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """results/report.{json,csv,html} as compare_models writes them (`report.compare` over the report tests'
    real fixture results), when the report compares the exported model."""
    from mlflow.tracking import MlflowClient

    from nemotron_eval.report import compare
    from nemotron_eval.evaluate.results import summarize

    from test_report import TASKS as REPORT_TASKS
    from test_report import inputs, make_workdir

    work = make_workdir(tmp_path)
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    compare(*inputs(work), work / "results", workdir=work)
    results = [work / "results" / MODEL / f"{t}.json" for t in REPORT_TASKS]
    summary = work / "results" / MODEL / "summary.json"
    summarize(results, summary, summary.with_suffix(".md"))
    cfg = eval_config(work)
    receipt = get("mlflow").export(job_for("mlflow", results, cfg, summary, work / "results" / MODEL / "mlflow.json"))
    assert {f"comparison/report.{s}" for s in ("json", "csv", "html")} <= set(receipt["artifacts"])
    client = MlflowClient(tracking_uri=receipt["tracking_uri"])
    listed = {a.path for a in client.list_artifacts(receipt["run_id"], "comparison")}
    assert listed == {"comparison/report.json", "comparison/report.csv", "comparison/report.html"}
