"""The scores of one run, from the harness's results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from nemotron_eval.core.errors import UserError
from nemotron_eval.evaluate.task_yamls import STAGED_PREFIX
from nemotron_eval.data.tasks import Task

RESULTS = "results.yml"


class HarnessError(UserError):
    """The harness failed or wrote no usable result: the first line says why (the user sees it), the rest is
    the harness log's tail (it goes to the step's log)."""


def parse_harness_output(output_dir: Path, task: Task) -> dict[str, Any]:
    """Scores of one run from the harness's results.yml (MMLU: the group's aggregate).

    Returns {"metrics": {name: {"value", "stderr"}}, "n_samples", "lm_eval_task", "raw"}.
    """
    path = Path(output_dir) / RESULTS
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise HarnessError(f"{path}: cannot read the harness's results ({e})") from None
    try:
        name = str(doc["config"]["params"]["task"])
        results = doc["results"]
    except (KeyError, TypeError):
        raise HarnessError(f"{path}: no config.params.task or results") from None
    if task.lm_eval is not None and name.removeprefix(STAGED_PREFIX) != task.lm_eval:
        raise HarnessError(f"{path}: results are for lm-eval task {name!r}, not {task.short!r}")
    section = (results.get("groups") or {}).get(name) or (results.get("tasks") or {}).get(name)
    if not section or not section.get("metrics"):
        raise HarnessError(f"{path}: no metrics for {name!r}")
    metrics: dict[str, dict[str, float | None]] = {}
    for metric, body in section["metrics"].items():
        score = (body.get("scores") or {}).get(metric)
        if score is None:
            continue
        stderr = (score.get("stats") or {}).get("stderr")
        metrics[metric] = {
            "value": float(score["value"]),
            "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
        }
    return {
        "metrics": metrics,
        "n_samples": _n_samples(Path(output_dir)),
        "lm_eval_task": name,
        "raw": RESULTS,
    }


def _n_samples(output_dir: Path) -> int:
    """Documents scored, from lm-eval's newest results_*.json (`n-samples`, summed over tasks)."""
    files = sorted(output_dir.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise HarnessError(f"{output_dir}: no lm-eval results_*.json to count samples from")
    counts = json.loads(files[-1].read_text()).get("n-samples") or {}
    return sum(int(c.get("effective", c.get("original", 0))) for c in counts.values())
