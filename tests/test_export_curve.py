"""The training curve exported as a line chart (`Exporter.export_curve`): the curve is report.curve's own, built
from hand-made result files (test_curve's), then exported to the local copy, to MLflow's local store (read back
with MLflow's client: each version's score at its step) and to W&B offline (read back with wandb's own reader),
by the watcher after a rebuild and by `nemotron export --curve`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nemotron_eval.artifacts import LocalRegistry
from nemotron_eval.core.errors import UserError
from nemotron_eval.exporters import get
from nemotron_eval.exporters.base import CURVE_COLUMNS, curve_rows
from nemotron_eval.exporters.wandb_curve import step_metrics
from nemotron_eval.front import watch
from nemotron_eval.front.export import export_curve
from nemotron_eval.report.curve import write_curve

from test_curve import N, RIGHT, history, version_results
from test_export_wandb import WANDB_CFG, clean_env, read_offline_run, run_cli

TASKS = ["openbookqa", "hellaswag"]
STEPS = {"v1": 100, "v2": 200, "v3": 300, "v4": 400}


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with results/ck_v1..v4 and the curve results/curve/ck.{json,csv,html} (ordered by step)."""
    work = tmp_path / "work"
    for version, right in RIGHT.items():
        for task in TASKS:
            version_results(work / "results", "ck", version, task, right)
    assert write_curve("ck", history(STEPS), TASKS, work / "results" / "curve", results_dir=work / "results")
    monkeypatch.chdir(work)
    return work


def config(work: Path, destinations: list[str]) -> dict[str, Any]:
    return {"execution": {"auto_export": {"enabled": True, "destinations": destinations}},
            "export": {"wandb": WANDB_CFG, "mlflow": {"tracking_uri": f"sqlite:///{work / 'mlruns' / 'mlflow.db'}"}}}


def test_the_rows_are_each_versions_score_at_its_step(work: Path) -> None:
    curve = json.loads((work / "results/curve/ck.json").read_text())
    rows = curve_rows(curve)
    acc = [r for r in rows if r[2] == "openbookqa" and r[3] == "acc"]
    assert [(r[0], r[1], r[4]) for r in acc] == [(f"ck_{v}", STEPS[v], RIGHT[v] / N) for v in RIGHT]
    assert all(r[5] < r[4] < r[6] for r in acc)  # the 95% interval around each score
    assert [r[1] for r in rows if r[2] == "(mean)"] == [100, 200, 300, 400]


def test_local_receipt_names_the_curve_files(work: Path) -> None:
    receipt = export_curve("ck", get("local"), config(work, ["local"]))
    assert receipt == Path("results/curve/ck.local.json")
    out = json.loads(receipt.read_text())
    assert out["files"] == {e: f"results/curve/ck.{e}" for e in ("csv", "html", "json")}
    assert len(out["rows"]) == len(TASKS) * 2 * len(RIGHT) + len(RIGHT)


def test_mlflow_draws_each_metric_over_the_steps(work: Path) -> None:
    from mlflow.tracking import MlflowClient

    cfg = config(work, ["mlflow"])
    receipt = json.loads(export_curve("ck", get("mlflow"), cfg).read_text())  # type: ignore[union-attr]
    client = MlflowClient(tracking_uri=cfg["export"]["mlflow"]["tracking_uri"])
    run = client.get_run(receipt["run_id"])
    assert run.info.run_name == "curve-ck" and run.data.tags["nemotron.curve"] == "ck"
    history_ = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "openbookqa/acc"))
    assert history_ == [(STEPS[v], RIGHT[v] / N) for v in RIGHT]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "mean/score")] == [100, 200, 300, 400]
    low = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "hellaswag/acc_ci_low")}
    assert all(low[STEPS[v]] < RIGHT[v] / N for v in RIGHT)
    listed = {a.path for a in client.list_artifacts(run.info.run_id, "curve")}
    assert listed == {"curve/ck.json", "curve/ck.csv", "curve/ck.html"}
    again = json.loads(export_curve("ck", get("mlflow"), cfg).read_text())  # type: ignore[union-attr]
    assert again["reused"] is True and again["run_id"] == receipt["run_id"]


def test_wandb_offline_run_holds_the_table_and_the_line_chart(work: Path, tmp_path: Path) -> None:
    code = ("from pathlib import Path\nfrom nemotron_eval.exporters import get\n"
            "from nemotron_eval.front.export import export_curve\n"
            f"print(export_curve('ck', get('wandb'), {config(work, ['wandb'])!r}))\n")
    proc = run_cli(work, clean_env(tmp_path), code=code)  # a fresh process: wandb keeps process-wide state
    assert proc.returncode == 0, proc.stderr
    receipt = json.loads((work / "results/curve/ck.wandb.json").read_text())
    assert receipt["exported"] and receipt["mode"] == "offline" and receipt["run"]["name"] == "curve-ck"
    assert receipt["logged"]["chart"]["lines"] == ["openbookqa", "hellaswag", "(mean)"]
    assert receipt["logged"]["step_metrics"] is True
    run = read_offline_run(receipt["run"]["dir"])
    summary = run["summary"]
    table = json.loads(Path(receipt["run"]["dir"], "files", summary["curve/table"]["path"]).read_text())
    curve = json.loads((work / "results/curve/ck.json").read_text())
    assert table["columns"] == CURVE_COLUMNS and table["data"] == curve_rows(curve)
    chart = summary["curve/chart_table"]  # wandb.plot.line_series' data: one row per (line, version)
    assert (chart["nrows"], chart["ncols"]) == (3 * len(RIGHT), 3)
    # each version's scores at its step: W&B's own charts draw the same curve
    assert summary["_step"] == 400 and summary["openbookqa/acc"] == RIGHT["v4"] / N
    files = {c["path"] for a in run["artifacts"] if a["type"] == "training-curve" for c in a["manifest"]["contents"]}
    assert files == {"ck.json", "ck.csv", "ck.html"}


def test_the_watcher_exports_each_rebuilt_curve_and_reports_a_failure_in_a_line(
        work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    setup = watch.Setup(None, None, tuple(TASKS), ())
    cfg = config(work, ["local", "mlflow"])
    cfg["export"]["mlflow"]["tracking_uri"] = "http://127.0.0.1:9"  # nothing listens: one line, local still done
    watcher = watch.Watcher(setup, LocalRegistry(work / "artifacts"), [], max_parallel=1, retries=0, source=None,
                            curve_tasks=TASKS, config=cfg)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    watcher.export_curve("ck")
    err = capsys.readouterr().err
    assert "training curve exported to local (results/curve/ck.local.json)" in err
    assert "the training curve was not exported to mlflow: export.mlflow: MLflow at http://127.0.0.1:9" in err
    assert not Path("results/curve/ck.mlflow.json").exists() and "Traceback" not in err


def test_a_missing_curve_is_one_line(work: Path) -> None:
    with pytest.raises(UserError, match=r"^results/curve/nope\.json: no training curve of 'nope'"):
        export_curve("nope", get("local"), config(work, ["local"]))


def test_the_export_command_takes_a_curve_or_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import copy_workflow
    from nemotron_eval.front import cli

    work = copy_workflow(tmp_path)
    (work / "env.toml").write_text("")
    monkeypatch.setenv("NEMOTRON_ENV_FILE", str(work / "env.toml"))
    monkeypatch.chdir(work)
    assert cli.main(["export", "--curve", "ck", "--dest", "local"]) != 0
    assert "results/curve/ck.json: no training curve of 'ck'" in capsys.readouterr().err
    for version, right in RIGHT.items():
        version_results(work / "results", "ck", version, "openbookqa", right)
    write_curve("ck", history(), ["openbookqa"], work / "results" / "curve", results_dir=work / "results")
    assert cli.main(["export", "--curve", "ck", "--dest", "local"]) == 0
    assert capsys.readouterr().out.strip() == "results/curve/ck.local.json"
    assert [r[1] for r in json.loads(Path("results/curve/ck.local.json").read_text())["rows"]] == [1, 2, 3, 4] * 2
    assert cli.main(["export", "--dest", "local"]) != 0
    assert "give a run ID (its results) or --curve NAME" in capsys.readouterr().err


def test_w_and_b_steps_hold_every_tasks_versions(work: Path) -> None:
    """A version without the first task's result still has its step (the other task's score and the mean), and
    orders that are not one whole number per version log no steps (W&B's must increase)."""
    (work / "results/ck_v2/openbookqa.json").unlink()
    assert write_curve("ck", history(STEPS), TASKS, work / "results" / "curve", results_dir=work / "results")
    rows = curve_rows(json.loads((work / "results/curve/ck.json").read_text()))
    steps = step_metrics(rows)
    assert steps is not None and list(steps) == [100, 200, 300, 400]
    assert "openbookqa/acc" not in steps[200] and steps[200]["hellaswag/acc"] == RIGHT["v2"] / N
    assert step_metrics([[*r[:1], 100, *r[2:]] for r in rows]) is None  # every version at step 100
