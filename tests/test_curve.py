"""The training curve (report.curve): scores of each version in order with intervals, regressions only where the
comparison report's paired test says `worse`, the best version and its test against the runner-up. Results and
items are the real fixtures' files (tests/fixtures/report) with synthetic per-item outcomes, so that the
differences between versions are known."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from nemotron_eval.artifacts.base import Version
from nemotron_eval.evaluate.items import write_items
from nemotron_eval.report.curve import build_curve, write_curve
from nemotron_eval.report.stats import wilson_interval
import test_report_browser

browser = test_report_browser.browser  # the headless Chromium fixture of the comparison page's test

FIXTURE = Path(__file__).parent / "fixtures" / "report" / "smollm2_latest"
N = 40
# per version: how many of the 40 items it gets right, as a prefix of a fixed item order (so consecutive versions
# differ only on the items between their counts: a known number of gains or losses)
RIGHT = {"v1": 10, "v2": 30, "v3": 12, "v4": 13}


def version_results(results: Path, name: str, version: str, task: str, right: int) -> None:
    out = results / f"{name}_{version}"
    out.mkdir(parents=True, exist_ok=True)
    row = json.loads((FIXTURE / f"{task}.json").read_text())
    row["model"]["spec"] = f"{name}:{version}"
    row.update(n_samples=N, metrics={m: {"value": right / N, "stderr": None} for m in ("acc", "acc_norm")})
    row["params"]["limit_samples"] = N
    (out / f"{task}.json").write_text(json.dumps(row))
    write_items(out / f"{task}.items.jsonl.gz", [
        {"id": f"{task}/{i:016x}", "subtask": task, "doc_id": i, "type": "multiple_choice",
         "correct": {"acc": int(i < right), "acc_norm": int(i < right)}, "gold": 0, "chosen": {}, "ll": []}
        for i in range(N)])  # fmt: skip


def history(steps: dict[str, int] | None = None) -> list[Version]:
    return [Version("ck", v, f"2026-01-0{i + 1}T00:00:00+00:00", {"step": steps[v]} if steps else {})
            for i, v in enumerate(RIGHT)]


@pytest.fixture
def results(tmp_path: Path) -> Path:
    for version, right in RIGHT.items():
        for task in ("openbookqa", "hellaswag"):
            version_results(tmp_path / "results", "ck", version, task, right)
    return tmp_path / "results"


def test_each_version_in_order_with_its_interval_and_the_regression_flagged(results: Path) -> None:
    curve = build_curve("ck", history(), ["openbookqa", "hellaswag"], results_dir=results)
    assert curve is not None and curve["order"] == "created_at"
    assert [v["version"] for v in curve["versions"]] == ["ck_v1", "ck_v2", "ck_v3", "ck_v4"]
    task = curve["tasks"][0]
    acc = task["metrics"][0]
    assert (task["task"], acc["metric"]) == ("openbookqa", "acc")
    for point, right in zip(acc["points"], RIGHT.values()):
        assert point["value"] == right / N and (point["ci_low"], point["ci_high"]) == wilson_interval(right / N, N)
    steps = {(s["a"], s["b"]): s for s in acc["steps"]}
    assert list(steps) == [("ck_v1", "ck_v2"), ("ck_v2", "ck_v3"), ("ck_v3", "ck_v4")]  # consecutive only
    assert steps[("ck_v1", "ck_v2")]["verdict"] == "better" and not steps[("ck_v1", "ck_v2")]["regression"]
    assert steps[("ck_v2", "ck_v3")]["regression"] and steps[("ck_v2", "ck_v3")]["p_value"] < 0.05
    assert steps[("ck_v3", "ck_v4")]["verdict"] == "no significant difference"  # one item lost: not flagged
    assert not steps[("ck_v3", "ck_v4")]["regression"]
    best = task["best"]
    assert (best["version"], best["runner_up"], best["metric"]) == ("ck_v2", "ck_v4", "acc")
    assert best["test"]["delta"] == pytest.approx((30 - 13) / N) and best["test"]["verdict"] == "better"
    overall = curve["overall"]
    assert overall["tasks"] == ["openbookqa", "hellaswag"] and overall["best"]["version"] == "ck_v2"
    assert overall["best"]["test"]["verdict"] == "better" and overall["best"]["test"]["p_value"] < 0.05
    assert overall["best"]["ci_low"] < 30 / N < overall["best"]["ci_high"]


def test_a_step_in_the_lineage_orders_the_curve(results: Path) -> None:
    curve = build_curve("ck", history({"v1": 400, "v2": 100, "v3": 300, "v4": 200}), ["openbookqa"], results_dir=results)
    assert curve is not None and curve["order"] == "step"
    assert [v["version"] for v in curve["versions"]] == ["ck_v2", "ck_v4", "ck_v3", "ck_v1"]
    assert curve["overall"] is None  # one task: no mean over tasks


def test_json_csv_and_html_written_together(results: Path, tmp_path: Path) -> None:
    paths = write_curve("ck", history(), ["openbookqa", "hellaswag"], tmp_path / "curve", results_dir=results)
    curve = json.loads(paths["json"].read_text())
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    regressions = [r for r in rows if r["regression"] == "true"]
    assert [(r["task"], r["metric"], r["versus"], r["version"]) for r in regressions] == [
        ("openbookqa", "acc", "ck_v2", "ck_v3"), ("openbookqa", "acc_norm", "ck_v2", "ck_v3"),
        ("hellaswag", "acc", "ck_v2", "ck_v3"), ("hellaswag", "acc_norm", "ck_v2", "ck_v3")]
    assert len([r for r in rows if r["row"] == "score"]) == 4 * 4 + 4  # versions x (tasks x metrics), and the mean
    html = paths["html"].read_text()
    assert html.count('class="chart chart-curve"') == 2 * 2 + 1 and 'class="point regression"' in html
    assert "<script" not in html and curve["tasks"][0]["best"]["version"] == "ck_v2"
    assert write_curve("nothing", [], ["openbookqa"], tmp_path / "curve", results_dir=results) == {}


def registered(work: Path) -> None:
    """ck v1..v4 in the working directory's registry (stub checkpoints: only their versions matter here)."""
    from nemotron_eval.artifacts import LocalRegistry
    from nemotron_eval.deploy.stub import write_checkpoint

    for version in RIGHT:
        LocalRegistry(work / "artifacts").add("ck", write_checkpoint(work.parent / f"ckpt-{version}"))


def test_the_snakemake_target_draws_the_registered_versions(tmp_path: Path) -> None:
    from conftest import copy_workflow, snakemake

    work = copy_workflow(tmp_path)
    (work / "env.toml").write_text("")
    env = {"NEMOTRON_ENV_FILE": str(work / "env.toml")}
    config = ("--config", 'tasks=["openbookqa"]')
    missing = snakemake(work, "results/curve/ck.html", *config, env=env)
    assert missing.returncode != 0 and "no version of artifact 'ck' has results of openbookqa" in missing.stderr
    registered(work)
    for version, right in RIGHT.items():
        version_results(work / "results", "ck", version, "openbookqa", right)
    proc = snakemake(work, "results/curve/ck.html", *config, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    curve = json.loads((work / "results/curve/ck.json").read_text())
    assert [v["spec"] for v in curve["versions"]] == ["ck:v1", "ck:v2", "ck:v3", "ck:v4"]
    assert [s["regression"] for s in curve["tasks"][0]["metrics"][0]["steps"]] == [False, True, False]
    assert (work / "results/curve/ck.csv").is_file() and "rule training_curve:" in proc.stdout + proc.stderr


@pytest.mark.browser
def test_the_curve_page_renders_in_chromium(results: Path, tmp_path: Path, browser: Any) -> None:
    """As the comparison page (tests/test_report_browser.py, whose `browser` fixture this is): Chromium draws it."""
    from selenium.webdriver.common.by import By

    paths = write_curve("ck", history(), ["openbookqa", "hellaswag"], tmp_path / "curve", results_dir=results)
    driver = browser
    driver.get(paths["html"].as_uri())
    assert driver.title == "Training curve: ck"
    assert [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")] == []
    charts = driver.find_elements(By.CSS_SELECTOR, "svg.chart-curve")
    assert len(charts) == 5 and all(c.size["width"] > 200 and c.size["height"] > 150 for c in charts)
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg.chart-curve circle.point")) == 5 * 4
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg.chart-curve circle.regression")) == 4  # v3, each metric
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg.chart-curve circle.best")) == 3  # each task's first metric, the mean
    assert "Best on acc: ck_v2" in driver.find_element(By.TAG_NAME, "body").text
