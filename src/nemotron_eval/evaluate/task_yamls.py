"""Wrapper task YAMLs: lm-eval's own task files, reading the staged data.

* Data: `write_task_yamls` writes wrapper task YAMLs into `<output_dir>/lm_eval_tasks/` that
  `include:` the harness's own task files (installed `lm_eval/tasks/...`) and override only the
  data source (`dataset_path: json`, `dataset_name: null`, `dataset_kwargs.data_files` -> the
  staged `<config>/<split>.jsonl`). The task is renamed `staged_<harness task>` (MMLU: 57
  `staged_mmlu_str_<subject>` tasks, tags `staged_mmlu_str_<category>`, group `staged_mmlu_str`
  built from the harness's `mmlu_str.yaml`). Only when a staged dataset lacks the split the
  harness draws few-shot examples from (HellaSwag from the mirror: no train) does the wrapper
  also set `fewshot_split` = `test_split` = the evaluation split, which makes lm-eval draw one
  example more and drop the item being asked. See `nemotron_eval.data.stage` for why route B.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from nemotron_eval.data.stage import read_manifest
from nemotron_eval.core.errors import UserError
from nemotron_eval.evaluate.framework import harness_task_name, lm_eval_tasks_dir, load_task_yaml
from nemotron_eval.data.tasks import Task

STAGED_PREFIX = "staged_"
INCLUDE_DIR = "lm_eval_tasks"


def staged_name(name: str) -> str:
    return STAGED_PREFIX + name


def _data_files(manifest: dict[str, Any], config: str, data_dir: Path) -> dict[str, str]:
    splits = manifest["configs"].get(config)
    if not splits:
        raise UserError(
            f"staged dataset {manifest['task']!r} has no config {config!r}; "
            f"staged: {', '.join(manifest['configs'])}"
        )
    return {split: str(data_dir / info["file"]) for split, info in sorted(splits.items())}


def _split_overrides(harness: dict[str, Any], staged: set[str], where: str) -> dict[str, Any]:
    """Overrides so lm-eval reads only staged splits: nothing, or few-shot from the eval split."""
    eval_split = harness.get("test_split") or harness.get("validation_split")
    if eval_split not in staged:
        raise UserError(f"{where}: the staged data has no {eval_split!r} split to evaluate on")
    shots = harness.get("fewshot_split") or harness.get("training_split")
    if shots is None or shots in staged:
        return {}
    # No few-shot pool: draw from the eval split itself; lm-eval then skips the doc being asked.
    return {
        "training_split": None,
        "validation_split": None,
        "test_split": eval_split,
        "fewshot_split": eval_split,
    }


def _wrapper(
    harness_yaml: Path, include: Path, new_name: str, data_files: dict[str, str], tag: str | None
) -> dict[str, Any]:
    """A task YAML including `harness_yaml` (read here; `include` as the harness sees it)."""
    harness = load_task_yaml(harness_yaml)
    cfg: dict[str, Any] = {
        "include": str(include),
        "task": new_name,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": data_files},
    }
    cfg.update(_split_overrides(harness, set(data_files), str(harness_yaml)))
    if tag is not None or "tag" in harness:
        cfg["tag"] = tag if tag is not None else []  # never join the harness's own tags
    return cfg


def write_task_yamls(
    task: Task,
    staged_dir: Path,
    include_dir: Path,
    *,
    tasks_dir: Path | None = None,
    data_dir: Path | None = None,
) -> str:
    """Write the wrapper YAMLs for a staged `task` into `include_dir`; return the task/group name.

    `tasks_dir` is the harness's lm_eval/tasks folder and `data_dir` the staged folder as the
    harness process sees them (both default to this machine's paths).
    """
    assert task.lm_eval and task.lm_eval_yaml, f"{task.short} is not a staged task"
    manifest = read_manifest(staged_dir)
    if manifest.get("task") != task.short:
        raise UserError(
            f"{Path(staged_dir) / 'manifest.json'}: staged for task {manifest.get('task')!r}, "
            f"not {task.short!r}"
        )
    local_tasks = lm_eval_tasks_dir()
    tasks_dir = Path(tasks_dir) if tasks_dir else local_tasks
    data_dir = Path(data_dir) if data_dir else Path(staged_dir).resolve()
    lm_name = harness_task_name(task)
    harness_yaml = local_tasks / task.lm_eval_yaml
    top = load_task_yaml(harness_yaml)
    if top.get("group", top.get("task")) != lm_name:
        raise UserError(f"{harness_yaml}: does not define {lm_name!r}; harness version mismatch?")

    if include_dir.exists():
        shutil.rmtree(include_dir)
    include_dir.mkdir(parents=True)
    files: dict[str, dict[str, Any]] = {}
    if "group" in top:  # MMLU: one wrapper per subtask of the group, plus the group
        members = set(top["task"])
        for sub in sorted(harness_yaml.parent.glob("*.yaml")):
            cfg = load_task_yaml(sub)
            tags = cfg.get("tag", [])
            tags = [tags] if isinstance(tags, str) else tags
            hits = [t for t in tags if t in members]
            if "group" in cfg or not (hits or cfg.get("task") in members):
                continue
            data = _data_files(manifest, cfg["dataset_name"], data_dir)
            tag = staged_name(hits[0]) if hits else None
            name = staged_name(cfg["task"])
            include = tasks_dir / sub.relative_to(local_tasks)
            files[f"{name}.yaml"] = _wrapper(sub, include, name, data, tag)
        group = {k: v for k, v in top.items() if k not in ("group", "task")}
        files[f"{staged_name(lm_name)}.yaml"] = {
            "group": staged_name(lm_name),
            "task": [staged_name(t) for t in top["task"]],
            **group,
        }
        n_sub = len(files) - 1
        if n_sub != len(manifest["configs"]):
            raise UserError(
                f"{harness_yaml.parent}: {n_sub} subtasks but {len(manifest['configs'])} staged "
                "configs; harness version mismatch?"
            )
    else:
        config = next(iter(manifest["configs"]))  # single-config datasets
        data = _data_files(manifest, config, data_dir)
        name = staged_name(lm_name)
        include = tasks_dir / harness_yaml.relative_to(local_tasks)
        files[f"{name}.yaml"] = _wrapper(harness_yaml, include, name, data, None)
    for name, cfg in files.items():
        (include_dir / name).write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return staged_name(lm_name)
