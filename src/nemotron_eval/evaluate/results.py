"""Result files: results/{model}/{task}.json (one per task) and results/{model}/summary.{json,md}."""

from __future__ import annotations

import datetime as dt
from importlib import metadata
from pathlib import Path
from typing import Any

from nemotron_eval.core.io import read_json, write_json_atomic, write_text_atomic
from nemotron_eval.data.tasks import Task

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
    server: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One task's result: scores with their stderr, where every input came from, and (`server`, when the
    deployment keeps statistics) what the deployment did for this task and in all when it finished."""
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
        "deployment": {"type": deployment.get("type"), "id": deployment.get("deployment_id"), "model_id": deployment.get("model_id"),
                       **({"server": server} if server else {})},
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
                **({"server": r["deployment"]["server"]["task"]} if (r["deployment"].get("server") or {}).get("task") else {}),
            }
            for r in rows
        },
        "deployments": deployment_figures(rows),
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
    lines += _deployment_lines(summary)
    write_text_atomic(md_out, "\n".join(lines) + "\n")
    return summary


def deployment_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per deployment id, its figures as the last of its tasks to finish saw them (results of earlier runs keep
    theirs)."""
    latest: dict[str, dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: r["finished_at"]):
        server = r["deployment"].get("server") or {}
        if server.get("deployment") and r["deployment"].get("id"):
            latest[r["deployment"]["id"]] = server["deployment"]
    return latest


def _deployment_lines(summary: dict[str, Any]) -> list[str]:
    if not summary["deployments"]:
        return []
    lines = ["", "| deployment | requests | prompt tokens | computed | busy / wall |", "|---|---:|---:|---:|---:|"]
    for ident, d in summary["deployments"].items():
        computed = d["computed_tokens"] / d["prompt_tokens"] if d.get("prompt_tokens") else 0.0
        busy = d["busy_s"] / d["wall_s"] if d.get("wall_s") else 0.0
        lines.append(f"| {ident} | {d['requests']} | {d['prompt_tokens']} | {d['computed_tokens']} ({computed:.2f}) | "
                     f"{d['busy_s']:.0f} s / {d['wall_s']:.0f} s ({busy:.2f}) |")
    tasks = {name: t["server"] for name, t in summary["tasks"].items() if t.get("server")}
    if tasks:
        lines += ["", "| task | requests | prompt tokens | computed | first answer | busy |", "|---|---:|---:|---:|---:|---:|"]
        for name, c in tasks.items():
            first = "" if c.get("first_answer_s") is None else f"{c['first_answer_s']:.1f} s"
            lines.append(f"| {name} | {c['requests']} | {c['prompt_tokens']} | {c['computed_tokens']} | {first} | {c['busy_s']:.0f} s |")
    return lines
