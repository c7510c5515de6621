"""The training curve of one artifact: which version is best, and did the last one get worse?

    write_curve(name, history, tasks)     # results/curve/{name}.json, .csv, .html; {} when no version has results

`history`: the registry's versions of `name` (`Registry.history`); `tasks`: the tasks to draw. A version is on the
curve when results/{name}_vN/{task}.json exists for one of them. Order: the `step` lineage key when every version
on the curve has one (a --dir watcher records it), else the registry's creation time.

The statistics are the comparison report's (`report.compare.build_report`, the same result and items files):
each score with its 95% Wilson interval; consecutive versions compared on the items both answered (exact McNemar,
paired bootstrap interval), a step flagged a regression only when the comparison says `worse` (p < 0.05 on the
same samples); per task, the best version of its first metric (ties: the later) against the runner-up, the same
test. Over the tasks (the versions with results for all of them): the mean of each task's first metric, a
normal-approximation 95% interval, and the best against the runner-up by a paired bootstrap stratified by task
(`stats.stratified_bootstrap`).

curve.json (schema 1): name, order ("step" | "created_at"), settings, versions [{version, key, created_at, step}],
tasks [{task, primary, metrics [{metric, points [{version, value, ci_low, ci_high, n}], steps [{a, b, delta, ci_low,
ci_high, p_value, test, verdict, same_samples, regression}]}], best {version, value, ci_low, ci_high, runner_up,
test {delta, ci_low, ci_high, p_value, test, verdict}}}], overall {metric, tasks, points, best}, inputs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nemotron_eval.artifacts.base import Version
from nemotron_eval.core import layout
from nemotron_eval.core.io import csv_text, read_json, write_text_atomic
from nemotron_eval.core.spec import version_number
from nemotron_eval.evaluate.items import read_items
from nemotron_eval.report.compare import ALPHA, CONFIDENCE, DEFAULT_DRAWS, DEFAULT_SEED, build_report
from nemotron_eval.report.stats import stratified_bootstrap, z_value

CURVE_SCHEMA = 1
FLIP = {"better": "worse", "worse": "better"}
CSV_COLUMNS = ("task", "metric", "row", "version", "versus", "value", "ci_low", "ci_high", "n", "p_value", "test",
               "verdict", "regression")  # fmt: skip


def _step(version: Version) -> int | None:
    value = version.lineage.get("step")
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def _number(version: Version) -> int:
    return version_number(version.version) or 0


def ordered(history: Sequence[Version], has_results: Any) -> tuple[list[Version], str]:
    """The versions with results, by step when each has one, else by creation time (then version number)."""
    have = [v for v in history if has_results(v)]
    if have and all(_step(v) is not None for v in have):
        return sorted(have, key=lambda v: (_step(v), _number(v))), "step"
    return sorted(have, key=lambda v: (v.created_at, _number(v))), "created_at"


def _oriented(pair: dict[str, Any], better_key: str) -> dict[str, Any]:
    """A compare pair (b - a) as `better_key` minus the other."""
    keep = {k: pair[k] for k in ("p_value", "test", "same_samples", "n_common", "gains", "losses")}
    if pair["b"] == better_key:
        return {**keep, "delta": pair["delta"], "ci_low": pair["ci_low"], "ci_high": pair["ci_high"], "verdict": pair["verdict"]}
    neg = lambda x: None if x is None else -x  # noqa: E731
    gains, losses = pair["gains"], pair["losses"]
    return {**keep, "gains": losses, "losses": gains, "delta": neg(pair["delta"]), "ci_low": neg(pair["ci_high"]),
            "ci_high": neg(pair["ci_low"]), "verdict": FLIP.get(pair["verdict"], pair["verdict"])}


def _best_two(values: dict[str, float], order: list[str]) -> tuple[str | None, str | None]:
    ranked = sorted(values, key=lambda k: (values[k], order.index(k)), reverse=True)  # ties: the later version
    return (ranked[0] if ranked else None), (ranked[1] if len(ranked) > 1 else None)


def _pair_of(metric: dict[str, Any], x: str, y: str) -> dict[str, Any] | None:
    return next((p for p in metric["pairs"] if {p["a"], p["b"]} == {x, y}), None)


def input_files(name: str, history: Sequence[Version], tasks: Sequence[str], results_dir: Path = Path("results")) -> list[Path]:
    """What the curve of `name` reads: each version's result files of `tasks` that exist, and their items files."""
    found = []
    for v in history:
        for task in tasks:
            result = results_dir / f"{name}_{v.version}" / f"{task}.json"
            if result.is_file():
                found += [result] + [p for p in [result.with_name(f"{task}.items.jsonl.gz")] if p.is_file()]
    return found


def build_curve(name: str, history: Sequence[Version], tasks: Sequence[str], *, results_dir: Path = Path("results"),
                seed: int = DEFAULT_SEED, draws: int = DEFAULT_DRAWS) -> dict[str, Any] | None:
    """curve.json's dict, or None when no version of `name` has a result of `tasks`."""
    key = {v.version: f"{name}_{v.version}" for v in history}
    result = lambda v, task: results_dir / key[v.version] / f"{task}.json"  # noqa: E731
    versions, order_by = ordered(history, lambda v: any(result(v, t).is_file() for t in tasks))
    if not versions:
        return None
    keys = [key[v.version] for v in versions]
    sections, compared, inputs, primary_values = [], [], [], {}
    overall_pair: tuple[str, str] | None = None
    # over the tasks: the versions with every task that has results; decided first, so each task's report has its pair
    with_task = {t: [v for v in versions if result(v, t).is_file()] for t in tasks}
    curve_tasks = [t for t in tasks if with_task[t]]
    complete = [key[v.version] for v in versions if all(result(v, t).is_file() for t in curve_tasks)]
    for t in curve_tasks:
        read = {v.version: read_json(result(v, t))["metrics"] for v in with_task[t]}
        primary = next(iter(read[with_task[t][0].version]), None)
        primary_values[t] = {key[v]: float(metrics[primary]["value"]) for v, metrics in read.items() if primary in metrics}
    means = {k: sum(primary_values[t][k] for t in curve_tasks) / len(curve_tasks) for k in complete
             if all(k in primary_values[t] for t in curve_tasks)}
    overall_best, overall_runner = _best_two(means, keys)
    if overall_best and overall_runner:
        overall_pair = (overall_best, overall_runner)
    for t in curve_tasks:
        vs = with_task[t]
        task_keys = [key[v.version] for v in vs]
        best, runner = _best_two(primary_values[t], task_keys)
        wanted = {(task_keys[i], task_keys[i + 1]) for i in range(len(task_keys) - 1)}
        for x, y in [(best, runner), overall_pair or (None, None)]:
            if x in task_keys and y in task_keys:
                wanted.add(tuple(sorted((x, y), key=task_keys.index)))  # type: ignore[arg-type]
        items = [p if (p := result(v, t).with_name(f"{t}.items.jsonl.gz")).is_file() else None for v in vs]
        report = build_report([result(v, t) for v in vs], items, seed=seed, draws=draws, pairs=wanted)
        inputs += report["inputs"]
        section = report["tasks"][0]
        compared.append(section)
        metrics = []
        for m in section["metrics"]:
            steps = [p for p in (_pair_of(m, task_keys[i], task_keys[i + 1]) for i in range(len(task_keys) - 1)) if p]
            metrics.append({
                "metric": m["metric"],
                "points": [{"version": s["model"], "value": s["value"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
                            "n": s["n"]} for s in m["scores"]],
                "steps": [{**{k: p[k] for k in ("a", "b", "delta", "ci_low", "ci_high", "p_value", "test", "verdict",
                                                 "same_samples", "n_common")}, "regression": p["verdict"] == "worse"}
                          for p in steps],
            })  # fmt: skip
        sections.append({"task": t, "primary": section["metrics"][0]["metric"], "metrics": metrics,
                         "best": _best(section, best, runner)})
    return {
        "schema_version": CURVE_SCHEMA,
        "kind": "nemotron-eval training curve",
        "name": name,
        "order": order_by,
        "settings": {"seed": seed, "bootstrap_draws": draws, "confidence": CONFIDENCE, "alpha": ALPHA,
                     "score_interval": "wilson", "test": "as the comparison report (exact McNemar; paired bootstrap)",
                     "overall_interval": "normal approximation over the tasks' binomial errors",
                     "overall_test": "paired bootstrap stratified by task"},  # fmt: skip
        "versions": [{"version": key[v.version], "spec": f"{name}:{v.version}", "created_at": v.created_at,
                      "step": _step(v)} for v in versions],
        "tasks": sections,
        "overall": _overall(curve_tasks, compared, keys, complete, means, overall_best, overall_runner, results_dir, seed, draws),
        "inputs": inputs,
    }


def _best(section: dict[str, Any], best: str | None, runner: str | None) -> dict[str, Any] | None:
    if best is None:
        return None
    metric = section["metrics"][0]
    score = next(s for s in metric["scores"] if s["model"] == best)
    pair = _pair_of(metric, best, runner) if runner else None
    return {"metric": metric["metric"], "version": best, "value": score["value"], "ci_low": score["ci_low"],
            "ci_high": score["ci_high"], "runner_up": runner, "test": _oriented(pair, best) if pair else None}


def _overall(tasks: list[str], sections: list[dict[str, Any]], keys: list[str], complete: list[str],
             means: dict[str, float], best: str | None, runner: str | None, results_dir: Path, seed: int,
             draws: int) -> dict[str, Any] | None:  # fmt: skip
    if len(tasks) < 2 or not means:
        return None
    z = z_value(CONFIDENCE)
    points = []
    for k in (k for k in keys if k in means):
        var = 0.0
        for s in sections:
            pt = next(p for p in s["metrics"][0]["scores"] if p["model"] == k)
            var += pt["value"] * (1 - pt["value"]) / max(int(pt["n"]), 1)
        half = z * math.sqrt(var) / len(tasks)
        points.append({"version": k, "value": means[k], "ci_low": max(0.0, means[k] - half), "ci_high": min(1.0, means[k] + half)})
    test = None
    if best and runner:
        test = {"delta": means[best] - means[runner], "ci_low": None, "ci_high": None, "p_value": None,
                "test": "stratified paired bootstrap", "verdict": "no item data"}
        pairs = [_pair_of(s["metrics"][0], best, runner) for s in sections]
        strata = _strata(tasks, sections, best, runner, results_dir)
        if any(p is None or p["same_samples"] is not True for p in pairs):
            test["verdict"] = "not comparable"
        elif strata is not None and (got := stratified_bootstrap(strata, seed=seed, draws=draws)) is not None:
            test["ci_low"], test["ci_high"], test["p_value"] = got
            significant = got[2] < ALPHA and (got[0] > 0 or got[1] < 0)
            test["verdict"] = ("better" if test["delta"] > 0 else "worse") if significant else "no significant difference"
    best_point = next((p for p in points if p["version"] == best), None)
    return {"metric": "mean of each task's first metric", "tasks": tasks, "points": points,
            "best": {**best_point, "runner_up": runner, "test": test} if best_point else None}


def _strata(tasks: list[str], sections: list[dict[str, Any]], best: str, runner: str, results_dir: Path) -> list[list[float]] | None:
    """Per task, best - runner-up on each item both answered (the task's first metric); None without item data."""
    strata = []
    for t, s in zip(tasks, sections):
        metric = s["metrics"][0]["metric"]
        files = [results_dir / k / f"{t}.items.jsonl.gz" for k in (runner, best)]
        if not all(f.is_file() for f in files):
            return None
        a, b = ({r["id"]: r["correct"].get(metric) for r in read_items(f)} for f in files)
        strata.append([float(b[i]) - float(a[i]) for i in sorted(set(a) & set(b)) if a[i] is not None and b[i] is not None])
    return strata


def table_rows(curve: dict[str, Any]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for s in curve["tasks"]:
        for m in s["metrics"]:
            rows += [[s["task"], m["metric"], "score", p["version"], None, p["value"], p["ci_low"], p["ci_high"], p["n"],
                      None, None, None, None] for p in m["points"]]  # fmt: skip
            rows += [[s["task"], m["metric"], "step", p["b"], p["a"], p["delta"], p["ci_low"], p["ci_high"], p["n_common"],
                      p["p_value"], p["test"], p["verdict"], p["regression"]] for p in m["steps"]]  # fmt: skip
        rows += _best_row(s["task"], s["best"])
    overall = curve["overall"]
    if overall:
        rows += [["(mean)", overall["metric"], "score", p["version"], None, p["value"], p["ci_low"], p["ci_high"],
                  None, None, None, None, None] for p in overall["points"]]  # fmt: skip
        rows += _best_row("(mean)", overall["best"])
    return rows


def _best_row(task: str, best: dict[str, Any] | None) -> list[list[Any]]:
    if not best:
        return []
    test = best["test"] or {}
    return [[task, best.get("metric", "(mean)"), "best", best["version"], best["runner_up"], test.get("delta"),
             test.get("ci_low"), test.get("ci_high"), None, test.get("p_value"), test.get("test"), test.get("verdict"), None]]


def write_curve(name: str, history: Sequence[Version], tasks: Sequence[str], out_dir: Path = Path(layout.CURVE).parent, *,
                results_dir: Path = Path("results")) -> dict[str, Path]:
    """Build the curve and write {name}.json, .csv and .html into `out_dir` (each atomically); {} without results."""
    from nemotron_eval.report.curve_page import to_html

    curve = build_curve(name, history, tasks, results_dir=results_dir)
    if curve is None:
        return {}
    paths = {ext: Path(out_dir) / f"{name}.{ext}" for ext in layout.CURVE_FILES}
    write_text_atomic(paths["json"], json.dumps(curve, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(paths["csv"], csv_text(list(CSV_COLUMNS), table_rows(curve)))
    write_text_atomic(paths["html"], to_html(curve))
    return paths
