"""Result files: results/{model}/{task}.json (one per task) and results/{model}/summary.{json,md}."""

from __future__ import annotations

import datetime as dt
from importlib import metadata
from pathlib import Path
from typing import Any

from nemotron_eval.io import read_json, write_json_atomic, write_text_atomic
from nemotron_eval.tasks import Task

SCHEMA_VERSION = 1
def versions() -> dict[str, str | None]:
    def v(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "nemotron-eval": v("nemotron-eval"),
        "nemo-evaluator": v("nemo-evaluator"),
        "nemo-evaluator-launcher": v("nemo-evaluator-launcher"),
        "lm-eval": v("nvidia-lm-eval"),
        "transformers": v("transformers"),
        "torch": v("torch"),
    }


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def build_result(
    *,
    task: Task,
    parsed: dict[str, Any],
    model: dict[str, Any],
    config_sha256: str,
    data: dict[str, Any],
    deployment: dict[str, Any],
    params: dict[str, Any],
    started_at: dt.datetime,
    finished_at: dt.datetime,
    raw: str,
    task_config_sha256: str,
) -> dict[str, Any]:
    """One task's result: scores with their stderr, and where every input came from."""
    return {
        "schema_version": SCHEMA_VERSION,
        "task": task.short,
        "harness_task": task.launcher,
        "metrics": parsed["metrics"],
        "n_samples": parsed["n_samples"],
        "items": parsed.get("items"),
        "model": {k: model.get(k) for k in ("spec", "name", "version", "digest", "path", "registry", "qualified_name")},
        "config_sha256": config_sha256,
        "task_config_sha256": task_config_sha256,
        "data": {k: data.get(k) for k in ("source", "digest", "fallbacks")},
        "deployment": {"type": deployment.get("type"), "id": deployment.get("deployment_id"), "model_id": deployment.get("model_id")},
        "params": params,
        "versions": versions(),
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": finished_at.isoformat(timespec="seconds"),
        "duration_s": round((finished_at - started_at).total_seconds(), 1),
        "raw": raw,
    }


def write_result(path: Path, result: dict[str, Any]) -> None:
    write_json_atomic(path, result)


def summarize(results: list[Path], json_out: Path, md_out: Path) -> dict[str, Any]:
    """A per-model table of every task's metrics."""
    rows = [read_json(p) for p in sorted(results)]
    models = {r["model"]["spec"] for r in rows}
    summary = {
        "model": rows[0]["model"] if rows else None,
        "tasks": {
            r["task"]: {
                "harness_task": r["harness_task"],
                "metrics": r["metrics"],
                "n_samples": r["n_samples"],
                "deployment_id": r["deployment"]["id"],
                "config_sha256": r["config_sha256"],
                "duration_s": r["duration_s"],
            }
            for r in rows
        },
    }
    if len(models) > 1:
        raise ValueError(f"summary mixes models: {sorted(models)}")
    write_json_atomic(json_out, summary)
    model = summary["model"] or {}
    lines = [
        f"# {model.get('spec')} ({model.get('registry')} {model.get('version')}, digest {str(model.get('digest'))[:12]})",
        "",
        "| task | metric | value | stderr | n |",
        "|---|---|---:|---:|---:|",
    ]
    for name, t in summary["tasks"].items():
        for metric, score in t["metrics"].items():
            stderr = "" if score.get("stderr") is None else f"{score['stderr']:.4f}"
            lines.append(f"| {name} | {metric} | {score['value']:.4f} | {stderr} | {t['n_samples']} |")
    write_text_atomic(md_out, "\n".join(lines) + "\n")
    return summary
