"""The comparison report on real outputs: SmolLM2 and its perturbed copy (tests/fixtures/report, extracted
from one real run of the pipeline's server and harness), plus edited copies of them for the refusals."""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from nemotron_eval.core.errors import UserError
from nemotron_eval.evaluate.items import extract_items, read_items, write_items
from nemotron_eval.report import build_report, compare, table_rows, to_csv
from nemotron_eval.report.render import CSV_COLUMNS
from nemotron_eval.report.stats import mcnemar_exact

FIXTURES = Path(__file__).parent / "fixtures" / "report"
MODELS = ("smollm2_latest", "smollm2-noisy_latest")
TASKS = ("openbookqa", "hellaswag", "mmlu")


def make_workdir(root: Path, models: tuple[str, ...] = MODELS, tasks: tuple[str, ...] = TASKS) -> Path:
    """A pipeline working directory: results/{model}/{task}.json, their items files, and rule logs."""
    work = root / "work"
    for model in models:
        for task in tasks:
            out = work / "results" / model
            out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(FIXTURES / model / f"{task}.json", out / f"{task}.json")
            extract_items(FIXTURES / model / "harness" / task, out / f"{task}.items.jsonl.gz")
            log = work / "logs" / "evaluate_task" / model / f"{task}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(f"{model} {task}\n")
    return work


def inputs(work: Path, models: tuple[str, ...] = MODELS, tasks: tuple[str, ...] = TASKS) -> tuple[list[Path], list[Path]]:
    results = [work / "results" / m / f"{t}.json" for m in models for t in tasks]
    return results, [p.with_name(p.stem + ".items.jsonl.gz") for p in results]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workdir(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def report(work: Path) -> dict[str, Any]:
    return build_report(*inputs(work), workdir=work)


def section(report: dict[str, Any], task: str) -> dict[str, Any]:
    return next(t for t in report["tasks"] if t["task"] == task)


def test_scores_and_intervals_come_from_the_results(report: dict[str, Any], work: Path) -> None:
    assert [m["key"] for m in report["models"]] == list(MODELS) and report["baseline"] == MODELS[0]
    assert [t["task"] for t in report["tasks"]] == list(TASKS)
    for task in TASKS:
        sec = section(report, task)
        assert sec["same_samples"] is True and sec["not_same_reasons"] == []
        for metric in sec["metrics"]:
            for s in metric["scores"]:
                res = json.loads((work / "results" / s["model"] / f"{task}.json").read_text())
                assert s["value"] == res["metrics"][metric["metric"]]["value"] and s["n"] == res["n_samples"]
                assert s["ci_low"] <= s["value"] <= s["ci_high"] and s["ci_high"] - s["ci_low"] > 0.05


def test_pairs_count_flips_from_the_items(report: dict[str, Any], work: Path) -> None:
    flipped = 0
    for task in TASKS:
        a = {r["id"]: r for r in read_items(work / "results" / MODELS[0] / f"{task}.items.jsonl.gz")}
        b = {r["id"]: r for r in read_items(work / "results" / MODELS[1] / f"{task}.items.jsonl.gz")}
        for metric in section(report, task)["metrics"]:
            (p,) = metric["pairs"]
            m = metric["metric"]
            gains = sum(1 for i in a if a[i]["correct"][m] == 0 and b[i]["correct"][m] == 1)
            losses = sum(1 for i in a if a[i]["correct"][m] == 1 and b[i]["correct"][m] == 0)
            assert (p["a"], p["b"], p["vs_baseline"]) == (MODELS[0], MODELS[1], True)
            changed = sum(1 for i in a if a[i]["chosen"][m] != b[i]["chosen"][m])
            assert (p["gains"], p["losses"], p["n_common"], p["answers_changed"]) == (gains, losses, len(a), changed)
            assert changed >= gains + losses
            assert p["delta"] == pytest.approx((gains - losses) / len(a))
            assert p["delta"] == pytest.approx(p["b_score"] - p["a_score"])  # same items: paired = unpaired here
            assert p["p_value"] == mcnemar_exact(gains, losses)
            assert p["ci_low"] <= p["delta"] <= p["ci_high"]
            assert p["verdict"] == ("no significant difference" if p["p_value"] >= 0.05 else ("better" if p["delta"] > 0 else "worse"))
            flipped += gains + losses
    assert flipped > 0  # the perturbed copy really answers differently


def test_same_inputs_same_bytes(tmp_path: Path, work: Path) -> None:
    """Written twice, and from a copy of the working directory elsewhere: identical files."""
    compare(*inputs(work), work / "report-a", workdir=work)
    compare(*inputs(work), work / "report-b", workdir=work)
    other = tmp_path / "elsewhere"
    shutil.copytree(work, other)
    compare(*inputs(other), other / "report-a", workdir=other)
    for name in ("report.json", "report.csv", "report.html"):
        first = (work / "report-a" / name).read_bytes()
        assert first == (work / "report-b" / name).read_bytes() == (other / "report-a" / name).read_bytes(), name
    assert str(work) not in (work / "report-a" / "report.html").read_text()


def test_csv_has_the_json_numbers(report: dict[str, Any]) -> None:
    assert all(len(row) == len(CSV_COLUMNS) for row in table_rows(report))
    rows = list(csv.DictReader(io.StringIO(to_csv(report))))
    assert list(rows[0]) == list(CSV_COLUMNS)
    for task in report["tasks"]:
        for metric in task["metrics"]:
            for s in metric["scores"]:
                (row,) = [r for r in rows if (r["task"], r["metric"], r["row"], r["model"]) == (task["task"], metric["metric"], "score", s["model"])]
                assert float(row["value"]) == s["value"] and float(row["ci_low"]) == s["ci_low"] and float(row["ci_high"]) == s["ci_high"]
            for p in metric["pairs"]:
                (row,) = [r for r in rows if (r["task"], r["metric"], r["row"], r["model"], r["baseline"]) == (task["task"], metric["metric"], "pair", p["b"], p["a"])]
                assert float(row["value"]) == p["delta"] and float(row["p_value"]) == p["p_value"]
                assert (int(row["gains"]), int(row["losses"]), row["verdict"]) == (p["gains"], p["losses"], p["verdict"])


def test_html_links_are_relative_and_resolve(tmp_path: Path, work: Path) -> None:
    out = work / "reports" / "nightly"
    compare(*inputs(work), out, workdir=work)
    html = (out / "report.html").read_text()
    for model in MODELS:
        for task in TASKS:
            for target in (f"results/{model}/{task}.json", f"logs/evaluate_task/{model}/{task}.log"):
                href = f"../../{target}"
                assert f'href="{href}"' in html and (out / href).resolve().is_file()
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        ({"params": {"limit_samples": 50}}, "limit_samples differs"),
        ({"data": {"digest": "sha256:" + "0" * 64, "source": "hub"}}, "data_digest differs"),
    ],
)
def test_different_samples_are_not_compared(tmp_path: Path, edit: dict[str, Any], reason: str) -> None:
    work = make_workdir(tmp_path, tasks=("openbookqa",))
    path = work / "results" / MODELS[1] / "openbookqa.json"
    res = json.loads(path.read_text())
    for key, value in edit.items():
        res[key] = {**res[key], **value}
    path.write_text(json.dumps(res))
    rep = build_report(*inputs(work, tasks=("openbookqa",)), workdir=work)
    sec = section(rep, "openbookqa")
    assert sec["same_samples"] is False and any(r.startswith(reason) for r in sec["not_same_reasons"])
    for metric in sec["metrics"]:
        (p,) = metric["pairs"]
        assert p["verdict"] == "not comparable" and p["n_common"] == 20  # numbers shown, no call made


def test_a_different_item_set_is_not_compared(tmp_path: Path) -> None:
    work = make_workdir(tmp_path, tasks=("hellaswag",))
    items = work / "results" / MODELS[1] / "hellaswag.items.jsonl.gz"
    write_items(items, read_items(items)[1:])
    rep = build_report(*inputs(work, tasks=("hellaswag",)), workdir=work)
    sec = section(rep, "hellaswag")
    checks = {c["check"]: c for c in sec["checks"]}
    assert checks["item_set"]["same"] is False and checks["items_match_result"]["same"] is False
    assert sec["same_samples"] is False
    for metric in sec["metrics"]:
        assert metric["pairs"][0]["n_common"] == 19 and metric["pairs"][0]["verdict"] == "not comparable"


def test_without_items_there_is_no_paired_call(tmp_path: Path) -> None:
    work = make_workdir(tmp_path, tasks=("openbookqa",))
    results, items = inputs(work, tasks=("openbookqa",))
    rep = build_report(results, [items[0], None], workdir=work)
    sec = section(rep, "openbookqa")
    assert sec["same_samples"] is None
    for metric in sec["metrics"]:
        (p,) = metric["pairs"]
        assert p["verdict"] == "no item data" and p["ci_low"] is None and p["delta"] == pytest.approx(p["b_score"] - p["a_score"])


def synthetic_items(path: Path, pattern: list[tuple[int, int]], *, model: int) -> None:
    write_items(path, [{"id": f"openbookqa/{i:016x}", "subtask": "openbookqa", "doc_id": i, "type": "multiple_choice",
                        "correct": {"acc": pair[model], "acc_norm": pair[model]}, "gold": 0, "chosen": {}, "ll": []}
                       for i, pair in enumerate(pattern)])  # fmt: skip


def test_a_real_difference_is_called(tmp_path: Path) -> None:
    """Synthetic per-item outcomes (the real 135M model and its noisy copy do not differ enough to call a
    difference at these sample sizes): 40 items, the later model gains 12 and loses 1."""
    work = make_workdir(tmp_path, tasks=("openbookqa",))
    pattern = [(0, 1)] * 12 + [(1, 0)] + [(1, 1)] * 10 + [(0, 0)] * 17
    results, items = inputs(work, tasks=("openbookqa",))
    for model, (res_path, items_path) in enumerate(zip(results, items)):
        synthetic_items(items_path, pattern, model=model)
        res = json.loads(res_path.read_text())
        value = sum(p[model] for p in pattern) / len(pattern)
        res.update(n_samples=len(pattern), metrics={m: {"value": value, "stderr": None} for m in ("acc", "acc_norm")})
        res["params"]["limit_samples"] = len(pattern)
        res_path.write_text(json.dumps(res))
    rep = build_report(results, items, workdir=work)
    (p, _) = [m["pairs"][0] for m in section(rep, "openbookqa")["metrics"]]
    assert (p["gains"], p["losses"], p["verdict"]) == (12, 1, "better")
    assert p["p_value"] == pytest.approx(2 * 14 / 2**13) and p["ci_low"] > 0
    reverse = build_report(results[::-1], items[::-1], workdir=work)
    assert section(reverse, "openbookqa")["metrics"][0]["pairs"][0]["verdict"] == "worse"


def test_three_models_pair_each_with_each(tmp_path: Path) -> None:
    work = make_workdir(tmp_path, tasks=("openbookqa",))
    third = work / "results" / "rl_latest"
    shutil.copytree(work / "results" / MODELS[1], third)
    res = json.loads((third / "openbookqa.json").read_text())
    res["model"]["spec"] = "rl:latest"
    (third / "openbookqa.json").write_text(json.dumps(res))
    rep = build_report(*inputs(work, models=(*MODELS, "rl_latest"), tasks=("openbookqa",)), workdir=work)
    pairs = section(rep, "openbookqa")["metrics"][0]["pairs"]
    assert [(p["a"], p["b"], p["vs_baseline"]) for p in pairs] == [
        (MODELS[0], MODELS[1], True), (MODELS[0], "rl_latest", True), (MODELS[1], "rl_latest", False)]
    assert pairs[2]["gains"] == pairs[2]["losses"] == 0 and pairs[2]["delta"] == 0  # identical answers


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    work = make_workdir(tmp_path, tasks=("openbookqa", "hellaswag"))
    results, items = inputs(work, tasks=("openbookqa", "hellaswag"))
    with pytest.raises(UserError, match="no result files given"):
        build_report([], [])
    with pytest.raises(UserError, match="4 result files but 3 items files"):
        build_report(results, items[:3])
    with pytest.raises(UserError, match=r"items of 'hellaswag', not of task 'openbookqa'"):
        build_report(results, [items[1], items[0], items[2], items[3]])
    with pytest.raises(UserError, match=r"a second result of smollm2:latest on 'openbookqa'"):
        build_report([results[0], results[0]], [items[0], items[0]])
    broken = work / "broken.json"
    broken.write_text('{"task": "openbookqa"}')
    with pytest.raises(UserError, match=r"broken\.json: not a task result, missing metrics, n_samples, model"):
        build_report([broken])
    with pytest.raises(UserError, match="seed=-1"):
        build_report(results, items, seed=-1)


def test_items_must_pair_with_results(tmp_path: Path) -> None:
    """One items file (or None) per result, by position; a mismatch is one line, nothing written. (The report is
    built by the `compare_models` rule through `compare`; the package has no other entry point for it.)"""
    work = make_workdir(tmp_path, tasks=("openbookqa",))
    results, items = inputs(work, tasks=("openbookqa",))
    with pytest.raises(UserError, match="report: 1 result files but 2 items files; give one items file"):
        compare(results[:1], items[:1] * 2, work / "out")
    assert not (work / "out").exists()
    rep = compare(results, [items[0], None], work / "out")
    assert rep["tasks"][0]["metrics"][0]["pairs"][0]["verdict"] == "no item data"


def test_the_default_report_takes_models_with_every_task(planner) -> None:
    """Without `compare`, results/report.html compares the models with results for all the tasks, default model
    first, and names the ones with some: building the report never starts evaluations nobody asked for."""
    plan = planner("local", tasks=["hellaswag", "openbookqa"])
    for model, tasks in (("zeta_v1", ["hellaswag", "openbookqa"]), (plan.default_model, ["hellaswag", "openbookqa"]),
                         ("half_v1", ["openbookqa"])):
        for task in tasks:
            Path("results", model).mkdir(parents=True, exist_ok=True)
            Path("results", model, f"{task}.json").write_text("{}")
    said: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = said.append  # type: ignore[method-assign]
    logger = logging.getLogger("nemotron_eval.pipeline.plan")  # whatever a step before set up on its parent
    logger.addHandler(handler)
    try:
        assert plan.compare_models() == [plan.default_model, "zeta_v1"]
    finally:
        logger.removeHandler(handler)
    assert any("without results for all of hellaswag, openbookqa: half_v1 (1/2)" in r.getMessage() for r in said)
    assert all("half_v1" not in p for p in plan.report_inputs())


def test_a_report_without_complete_models_says_how_to_name_them(planner) -> None:
    plan = planner("local", tasks=["hellaswag", "openbookqa"])
    Path("results", "half_v1").mkdir(parents=True)
    Path("results", "half_v1", "hellaswag.json").write_text("{}")
    with pytest.raises(UserError, match="results for all of hellaswag, openbookqa.*compare="):
        plan.compare_models()
