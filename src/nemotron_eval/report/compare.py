"""Compare checkpoints task by task: scores with intervals, paired differences on the items both answered.

`build_report(results, items)` reads result JSONs (`results/{model}/{task}.json`) and the items files made
from the same runs (`nemotron_eval.evaluate.items`), paired by position, and returns the report as one dict (the
schema of report.json, see `nemotron_eval.report`). Models appear in the order of their first result file:
the first is the baseline (e.g. pretrain, then sft, then rl).

Why paired: two checkpoints evaluated on the same items differ on far fewer items than their separate
scores' intervals suggest (most items both get right or both get wrong). Comparing each item with itself
removes that shared noise, so real changes are detected at sample sizes where overlapping score intervals
say nothing. The pairing is only meaningful if both models saw the same items under the same settings: the
comparability checks below decide, and a pair that fails them gets numbers but no verdict.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from nemotron_eval.core.errors import UserError
from nemotron_eval.core.io import read_json
from nemotron_eval.core import layout
from nemotron_eval.evaluate.items import read_items
from nemotron_eval.report.stats import mcnemar_exact, paired_bootstrap, wilson_interval

REPORT_SCHEMA = 1
DEFAULT_SEED = 12345
DEFAULT_DRAWS = 10_000
CONFIDENCE = 0.95
ALPHA = 0.05
RESULT_REQUIRED = ("task", "metrics", "n_samples", "model")
MODEL_KEYS = ("spec", "name", "version", "digest", "path", "registry", "qualified_name")
# Checks whose failure means the models did not answer the same questions the same way: no verdict.
BLOCKING = ("harness_task", "limit_samples", "n_samples", "data_digest", "item_set", "items_match_result")
VERDICTS = ("better", "worse", "no significant difference", "not comparable", "no item data", "no common items")
LOG_PATH = layout.TASK_LOG


def model_key(spec: str) -> str:
    """The `{model}` wildcard of a spec: rl:latest -> rl_latest, sft:2 -> sft_v2 (the folders under results/, logs/)."""
    from nemotron_eval.core.spec import parse_spec

    return parse_spec(spec, where="model.spec").wildcard


def _rel(path: Path, workdir: Path) -> str:
    """`path` relative to `workdir` (posix), or absolute when it lies elsewhere: no machine-specific prefix
    in the report when the inputs sit in the working directory, as the pipeline's do."""
    path = Path(os.path.abspath(path))
    try:
        return path.relative_to(workdir).as_posix()
    except ValueError:
        return path.as_posix()


def _load_result(path: Path) -> dict[str, Any]:
    try:
        row = read_json(path)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the result file ({e})") from None
    if not isinstance(row, dict):
        raise UserError(f"{path}: not a task result (expected a JSON object)")
    missing = [k for k in RESULT_REQUIRED if k not in row]
    if missing:
        raise UserError(f"{path}: not a task result, missing {', '.join(missing)}")
    if not isinstance(row["model"], dict) or not row["model"].get("spec"):
        raise UserError(f"{path}: model.spec is not set; it names the checkpoint in the report")
    if not isinstance(row["metrics"], dict):
        raise UserError(f"{path}: metrics must map metric names to {{value, stderr}}")
    for metric, score in row["metrics"].items():
        if not isinstance(score, dict) or not isinstance(score.get("value"), (int, float)):
            raise UserError(f"{path}: metrics.{metric}.value is not a number")
    return row


def _check_items_task(records: list[dict[str, Any]], task: str, path: Path) -> None:
    """The items belong to the result's task: their subtasks are the task's lm-eval task or its subtasks."""
    from nemotron_eval.data.tasks import STAGED

    if task not in STAGED or STAGED[task].lm_eval is None:
        return
    name = str(STAGED[task].lm_eval)
    wrong = sorted({r.get("subtask") for r in records if r.get("subtask") != name and not str(r.get("subtask")).startswith(name + "_")})
    if wrong:
        raise UserError(f"{path}: items of {wrong[0]!r}, not of task {task!r} (lm-eval {name!r}); pair each result with its own items file")


def _digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def build_report(
    results: Sequence[Path | str],
    items: Sequence[Path | str | None] | None = None,
    *,
    seed: int = DEFAULT_SEED,
    draws: int = DEFAULT_DRAWS,
    confidence: float = CONFIDENCE,
    alpha: float = ALPHA,
    workdir: Path | str | None = None,
    pairs: Collection[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """The comparison of every model of `results` on every task, as report.json's dict.

    `items[i]` is the items file of `results[i]` (None, or `items` None: that run has no item data, and its
    pairs get score differences without paired statistics). `workdir` (default: the current directory) is
    where `logs/` and `results/` live; paths in the report are relative to it. `pairs`: only these (a, b) model
    keys, a before b in model order, are compared (the training curve's consecutive versions); default: every pair.
    """
    if not results:
        raise UserError("report: no result files given (results/{model}/{task}.json)")
    items_list: list[Path | str | None] = list(items) if items is not None else [None] * len(results)
    if len(items_list) != len(results):
        raise UserError(f"report: {len(results)} result files but {len(items_list)} items files; give one items file (or None) per result")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"report seed={seed!r}: must be an integer >= 0")
    if not isinstance(draws, int) or draws < 100:
        raise UserError(f"report draws={draws!r}: must be an integer >= 100 (bootstrap resamples)")
    if not 0.5 < confidence < 1 or not 0 < alpha < 0.5:
        raise UserError(f"report confidence={confidence!r}, alpha={alpha!r}: need 0.5 < confidence < 1 and 0 < alpha < 0.5")
    root = Path(os.path.abspath(workdir or os.getcwd()))

    models: dict[str, dict[str, Any]] = {}  # key -> model identity (first seen)
    runs: dict[str, dict[str, dict[str, Any]]] = {}  # task -> model key -> run
    inputs: list[dict[str, str]] = []
    for result_path, items_path in zip(results, items_list):
        result_path = Path(result_path)
        row = _load_result(result_path)
        spec = str(row["model"]["spec"])
        key = model_key(spec)
        task = str(row["task"])
        models.setdefault(key, {"key": key, **{k: row["model"].get(k) for k in MODEL_KEYS}})
        if key in runs.get(task, {}):
            raise UserError(f"{result_path}: a second result of {spec} on {task!r} (first: {runs[task][key]['files']['result']}); give one per model and task")
        inputs.append({"path": _rel(result_path, root), "sha256": _digest(result_path)})
        records = None
        if items_path is not None:
            items_path = Path(items_path)
            records = read_items(items_path)
            _check_items_task(records, task, items_path)
            inputs.append({"path": _rel(items_path, root), "sha256": _digest(items_path)})
        runs.setdefault(task, {})[key] = _run(row, result_path, items_path, records, key, task, root)

    order = list(models)
    tasks = [_task_section(task, [runs[task][k] for k in order if k in runs[task]], seed, draws, confidence, alpha, pairs)
             for task in runs]  # fmt: skip
    return {
        "schema_version": REPORT_SCHEMA,
        "kind": "nemotron-eval checkpoint comparison",
        "settings": {"seed": seed, "bootstrap_draws": draws, "confidence": confidence, "alpha": alpha,
                     "score_interval": "wilson", "delta_interval": "paired bootstrap (percentile)",
                     "test": "exact McNemar (two-sided binomial on discordant items)"},  # fmt: skip
        "models": [models[k] for k in order],
        "baseline": order[0],
        "tasks": tasks,
        "inputs": inputs,
    }


def _run(row: dict[str, Any], result_path: Path, items_path: Path | None, records: list[dict[str, Any]] | None,
         key: str, task: str, root: Path) -> dict[str, Any]:  # fmt: skip
    """One model's run of one task: what the report shows about it, and its items (dropped from the output)."""
    params = row.get("params") or {}
    data = row.get("data") or {}
    deployment = row.get("deployment") or {}
    log = root / LOG_PATH.format(model=key, task=task)
    return {
        "model": key,
        "harness_task": row.get("harness_task"),
        "n_samples": row["n_samples"],
        "limit_samples": params.get("limit_samples") if isinstance(params, dict) else None,
        "metrics": {m: {"value": float(s["value"]), "stderr": s.get("stderr")} for m, s in row["metrics"].items()},
        "provenance": {
            "model": {k: row["model"].get(k) for k in MODEL_KEYS},
            "config_sha256": row.get("config_sha256"),
            "task_config_sha256": row.get("task_config_sha256"),
            "data": {"source": data.get("source"), "digest": data.get("digest"), "fallbacks": data.get("fallbacks")},
            "versions": row.get("versions") or {},
            "deployment": {"type": deployment.get("type"), "id": deployment.get("id"), "model_id": deployment.get("model_id")},
            "started_at": row.get("started_at"),
            "finished_at": row.get("finished_at"),
            "duration_s": row.get("duration_s"),
        },
        "files": {
            "result": _rel(result_path, root),
            "items": _rel(items_path, root) if items_path is not None else None,
            "log": _rel(log, root),
            "log_exists": log.is_file(),
        },
        "_items": {r["id"]: r["correct"] for r in records} if records is not None else None,
        "_chosen": {r["id"]: r.get("chosen") or {} for r in records} if records is not None else None,
    }


def _check(name: str, runs: Sequence[dict[str, Any]], values: Mapping[str, Any], what: str) -> dict[str, Any]:
    distinct = {repr(v) for v in values.values()}
    return {"check": name, "what": what, "same": len(distinct) <= 1, "values": dict(values)}


def _checks(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Did these runs answer the same questions under the same settings? One row per check."""
    def item_set(run: dict[str, Any]) -> str | None:
        if run["_items"] is None:
            return None
        ids = sorted(run["_items"])
        return f"{len(ids)} items, sha256:{hashlib.sha256(chr(10).join(ids).encode()).hexdigest()[:16]}"

    checks = [
        _check("harness_task", runs, {r["model"]: r["harness_task"] for r in runs}, "the NeMo Evaluator task"),
        _check("limit_samples", runs, {r["model"]: r["limit_samples"] for r in runs}, "the sample limit (params.limit_samples)"),
        _check("n_samples", runs, {r["model"]: r["n_samples"] for r in runs}, "documents scored"),
        _check("data_digest", runs, {r["model"]: r["provenance"]["data"]["digest"] for r in runs}, "the staged data's digest"),
    ]
    with_items = [r for r in runs if r["_items"] is not None]
    if len(with_items) == len(runs):
        checks.append(_check("item_set", runs, {r["model"]: item_set(r) for r in runs}, "the items answered (ids from lm-eval's doc hashes)"))
        agree = {r["model"]: _items_agree(r) for r in runs}
        checks.append({"check": "items_match_result", "what": "each items file reproduces its result's scores",
                       "same": all(agree.values()), "values": agree})  # fmt: skip
    else:
        checks.append({"check": "item_set", "what": "the items answered (ids from lm-eval's doc hashes)", "same": None,
                       "values": {r["model"]: item_set(r) for r in runs}})  # fmt: skip
    versions = {r["model"]: r["provenance"]["versions"].get("lm-eval") for r in runs}
    checks.append({**_check("lm_eval_version", runs, versions, "the harness version (informational)"), "blocking": False})
    for c in checks:
        c.setdefault("blocking", c["check"] in BLOCKING)
    return checks


def _items_agree(run: dict[str, Any]) -> bool:
    """Every metric's mean over the items equals the result's score, and the counts match."""
    items = run["_items"] or {}
    if len(items) != run["n_samples"]:
        return False
    for metric, score in run["metrics"].items():
        values = [c[metric] for c in items.values() if metric in c]
        if len(values) != len(items) or abs(sum(values) / len(values) - score["value"]) > 1e-9:
            return False
    return True


def _same(checks: list[dict[str, Any]]) -> tuple[bool | None, list[str]]:
    reasons = [f"{c['check']} differs: " + ", ".join(f"{m}={v}" for m, v in c["values"].items())
               for c in checks if c["blocking"] and c["same"] is False]  # fmt: skip
    if reasons:
        return False, reasons
    if any(c["blocking"] and c["same"] is None for c in checks):
        return None, ["no item data for every model: the item sets cannot be compared"]
    return True, []


def _task_section(task: str, runs: list[dict[str, Any]], seed: int, draws: int, confidence: float, alpha: float,
                  wanted: Collection[tuple[str, str]] | None = None) -> dict[str, Any]:
    checks = _checks(runs)
    same, reasons = _same(checks)
    metric_names = list(dict.fromkeys(m for r in runs for m in r["metrics"]))
    metrics = []
    for metric in metric_names:
        scores = []
        for r in runs:
            score = r["metrics"].get(metric)
            ci = wilson_interval(score["value"], int(r["n_samples"]), confidence) if score else None
            scores.append({
                "model": r["model"],
                "value": score["value"] if score else None,
                "stderr": score.get("stderr") if score else None,
                "n": r["n_samples"],
                "ci_low": ci[0] if ci else None,
                "ci_high": ci[1] if ci else None,
            })
        pairs = [
            _pair(task, metric, runs[i], runs[j], i == 0, seed, draws, confidence, alpha)
            for i in range(len(runs)) for j in range(i + 1, len(runs))
            if wanted is None or (runs[i]["model"], runs[j]["model"]) in wanted
        ]  # fmt: skip
        metrics.append({"metric": metric, "scores": scores, "pairs": pairs})
    out_runs = [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs]
    return {
        "task": task,
        "harness_task": runs[0]["harness_task"],
        "models": [r["model"] for r in runs],
        "same_samples": same,
        "not_same_reasons": reasons,
        "checks": checks,
        "runs": out_runs,
        "metrics": metrics,
    }


def _pair(task: str, metric: str, a: dict[str, Any], b: dict[str, Any], vs_baseline: bool, seed: int, draws: int,
          confidence: float, alpha: float) -> dict[str, Any]:  # fmt: skip
    """b against a (b - a) on the items both answered."""
    pair_checks = _checks([a, b])
    same, reasons = _same(pair_checks)
    sa, sb = a["metrics"].get(metric), b["metrics"].get(metric)
    out: dict[str, Any] = {
        "a": a["model"], "b": b["model"], "vs_baseline": vs_baseline, "same_samples": same, "not_same_reasons": reasons,
        "a_score": sa["value"] if sa else None, "b_score": sb["value"] if sb else None,
        "n_common": None, "a_value": None, "b_value": None, "delta": None, "ci_low": None, "ci_high": None,
        "gains": None, "losses": None, "answers_changed": None, "p_value": None, "test": None,
    }  # fmt: skip
    if a["_items"] is None or b["_items"] is None or sa is None or sb is None:
        if sa is not None and sb is not None:
            out["delta"] = sb["value"] - sa["value"]
        out["verdict"] = "no item data"
        return out
    common = sorted(set(a["_items"]) & set(b["_items"]))
    pairs = [(a["_items"][i].get(metric), b["_items"][i].get(metric)) for i in common]
    pairs = [(x, y) for x, y in pairs if isinstance(x, (int, float)) and isinstance(y, (int, float))]
    out["n_common"] = len(pairs)
    if not pairs:
        out["verdict"] = "no common items"
        return out
    diffs = [y - x for x, y in pairs]
    picks = [(a["_chosen"][i].get(metric), b["_chosen"][i].get(metric)) for i in common]
    if picks and all(x is not None and y is not None for x, y in picks):
        out["answers_changed"] = sum(1 for x, y in picks if x != y)
    out["a_value"] = sum(x for x, _ in pairs) / len(pairs)
    out["b_value"] = sum(y for _, y in pairs) / len(pairs)
    out["delta"] = sum(diffs) / len(diffs)
    ci = paired_bootstrap(diffs, seed=seed, draws=draws, confidence=confidence)
    out["ci_low"], out["ci_high"] = ci if ci else (None, None)
    binary = all(x in (0, 1) and y in (0, 1) for x, y in pairs)
    if binary:
        out["gains"] = sum(1 for x, y in pairs if x == 0 and y == 1)
        out["losses"] = sum(1 for x, y in pairs if x == 1 and y == 0)
        out["p_value"] = mcnemar_exact(out["gains"], out["losses"])
        out["test"] = "mcnemar-exact"
        significant = out["p_value"] < alpha
    else:  # a non-binary per-item metric: the interval decides
        significant = ci is not None and (ci[0] > 0 or ci[1] < 0)
        out["test"] = "bootstrap-ci"
    if same is not True:
        out["verdict"] = "not comparable"
    elif not significant or out["delta"] == 0:
        out["verdict"] = "no significant difference"
    else:
        out["verdict"] = "better" if out["delta"] > 0 else "worse"
    return out
