"""W&B export, part one: the `export.wandb` section checked and the payload built from the result files (no
wandb needed): metrics, the run config, the tasks x metrics table and the results artifact's files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nemotron_eval.core.errors import UserError, did_you_mean
from nemotron_eval.exporters.base import name_fields, task_metrics
from nemotron_eval.core.secrets import redact

ARTIFACT_TYPE = "evaluation"
TABLE_KEY = "results_table"
DEFAULT_NAME = "eval-{name}-{version}"
KEYS = ("entity", "project", "name", "group", "tags", "job_type", "description", "extra_metadata")
LAUNCHER_ONLY_KEYS = (
    "log_mode", "copy_logs", "copy_artifacts", "only_required", "log_metrics", "run_id", "job_dirs",
    "log_logs", "log_artifacts",
)
PROVENANCE_KEYS = (
    "harness_task", "n_samples", "config_sha256", "data", "deployment", "params", "versions",
    "started_at", "finished_at", "duration_s", "raw", "schema_version",
)


@dataclass(frozen=True)
class WandbConfig:
    """The eval config's `export.wandb` section, checked."""

    entity: str
    project: str
    name: str = DEFAULT_NAME
    group: str | None = None
    tags: tuple[str, ...] = ()
    job_type: str = "evaluation"
    description: str | None = None
    extra_metadata: dict[str, Any] = field(default_factory=dict)
    ignored: tuple[str, ...] = ()


@dataclass
class Payload:
    """Everything one model's run logs, built from the result files without wandb."""

    model: dict[str, Any]
    metrics: dict[str, float]
    config: dict[str, Any]
    table_columns: list[str]
    table_rows: list[list[Any]]
    artifact_name: str
    artifact_metadata: dict[str, Any]
    files: dict[str, Path]  # name inside the artifact -> file on disk
    notes: list[str] = field(default_factory=list)


def parse_config(section: Mapping[str, Any] | None) -> WandbConfig:
    section = dict(section or {})
    for key in section:
        if key not in KEYS + LAUNCHER_ONLY_KEYS:
            raise UserError(f"export.wandb.{key}: unknown key{did_you_mean(key, KEYS)}; valid: {', '.join(KEYS)}")
    for key in ("entity", "project"):
        value = section.get(key)
        if not isinstance(value, str) or not value.strip():
            raise UserError(
                f"export.wandb.{key} is not set ({value!r}): 'wandb' is in execution.auto_export.destinations; "
                f"set [wandb] {key} in env.toml or run.wandb.{key}"
            )
    tags = section.get("tags") or []
    tags = [tags] if isinstance(tags, str) else tags
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise UserError(f"export.wandb.tags={tags!r}: must be a list of strings")
    extra = section.get("extra_metadata") or {}
    if not isinstance(extra, dict):
        raise UserError(f"export.wandb.extra_metadata={extra!r}: must be a mapping")
    for key in ("name", "group", "job_type", "description"):
        if section.get(key) is not None and not isinstance(section[key], str):
            raise UserError(f"export.wandb.{key}={section[key]!r}: must be a string")
    return WandbConfig(
        entity=section["entity"],
        project=section["project"],
        name=section.get("name") or DEFAULT_NAME,
        group=section.get("group") or None,
        tags=tuple(tags),
        job_type=section.get("job_type") or "evaluation",
        description=section.get("description"),
        extra_metadata=extra,
        ignored=tuple(k for k in section if k in LAUNCHER_ONLY_KEYS),
    )



def _harness_outputs(raw: Path) -> tuple[dict[str, float], list[str]]:
    """The launcher exporter's reading of a harness output folder: its metric names and the files it uploads."""
    from nemo_evaluator_launcher.exporters.utils import extract_accuracy_metrics, get_available_artifacts

    return extract_accuracy_metrics(raw), get_available_artifacts(raw)


def build_payload(rows: list[dict[str, Any]], summary: dict[str, Any], result_paths: Sequence[Path],
                  summary_path: Path, cfg: WandbConfig) -> Payload:
    by_task = {r["task"]: (r, Path(p)) for r, p in sorted(zip(rows, result_paths), key=lambda rp: rp[0]["task"])}
    if len(by_task) != len(rows):
        raise UserError(f"export: two result files for one task among {[str(p) for p in result_paths]}")
    summary_tasks = dict(summary.get("tasks") or {})
    if set(summary_tasks) != set(by_task):
        raise UserError(
            f"{summary_path}: tasks {sorted(summary_tasks)} differ from the result files' {sorted(by_task)}; "
            "rerun the summary"
        )
    model = dict(rows[0]["model"])
    metrics: dict[str, float] = {}
    files: dict[str, Path] = {}
    notes: list[str] = []
    for task, (row, path) in by_task.items():
        metrics.update(task_metrics(row))
        files[f"results/{task}.json"] = path
        raw = Path(str(row.get("raw") or ""))
        if not row.get("raw") or not (raw / "results.yml").is_file():
            notes.append(f"{task}: no harness output at raw={row.get('raw')!r}; logged the result JSON only")
            continue
        try:
            launcher_metrics, harness_files = _harness_outputs(raw)
        except Exception as e:  # the launcher's reader rejects a results.yml it does not understand
            notes.append(f"{task}: the launcher's exporter could not read {raw}: {e}")
            continue
        for key, value in launcher_metrics.items():
            metrics.setdefault(key, value)
        for name in harness_files:
            files[f"harness/{task}/{name}"] = raw / name
    files["summary.json"] = summary_path
    if summary_path.with_suffix(".md").is_file():
        files["summary.md"] = summary_path.with_suffix(".md")

    metric_names = list(dict.fromkeys(m for t in summary_tasks.values() for m in t.get("metrics") or {}))
    columns = ["task", "harness_task", "n_samples", "duration_s"]
    columns += [c for m in metric_names for c in (m, f"{m}_stderr")]
    table_rows = []
    for task in sorted(summary_tasks):
        t = summary_tasks[task]
        scores = t.get("metrics") or {}
        cells: list[Any] = [task, t.get("harness_task"), t.get("n_samples"), t.get("duration_s")]
        for m in metric_names:
            cells += [(scores.get(m) or {}).get("value"), (scores.get(m) or {}).get("stderr")]
        table_rows.append(cells)

    qualified = model.get("qualified_name") if model.get("registry") == "wandb" else None
    config = {
        **cfg.extra_metadata,
        "model": model,
        "tasks": {task: {k: row.get(k) for k in PROVENANCE_KEYS} for task, (row, _) in by_task.items()},
        "result_files": {task: str(path) for task, (_, path) in by_task.items()},
        "summary_file": str(summary_path),
    }
    artifact_name = "eval-" + "".join(c if c.isalnum() or c in "-_." else "-" for c in name_fields(model)["name"])
    metadata = {
        "model": model,
        "model_artifact": qualified,
        "tasks": list(by_task),
        "metrics": {k: v for k, v in metrics.items() if "/" in k},
        "config_sha256": {task: row.get("config_sha256") for task, (row, _) in by_task.items()},
    }
    return Payload(model, metrics, redact(config), columns, table_rows, artifact_name, redact(metadata), files, notes)


