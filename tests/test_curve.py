"""The training curve (report.curve): scores of each version in order with intervals, regressions only where the
comparison report's paired test says `worse`, the best version and its test against the runner-up. Results and
items are the real fixtures' files (tests/fixtures/report) with synthetic per-item outcomes, so that the
differences between versions are known."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from nemotron_eval.artifacts.base import Version
from nemotron_eval.evaluate.items import write_items
from nemotron_eval.report.curve import build_curve, write_curve
from nemotron_eval.report.stats import wilson_interval

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
