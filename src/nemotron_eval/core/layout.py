"""Where the pipeline keeps what it writes, in one place: the rules declare these patterns ({model}, {task}
are their wildcards) and every other reader fills them in (`nemotron status`, `logs`, `fetch`, the report)."""

from __future__ import annotations

from pathlib import Path

RESULT = "results/{model}/{task}.json"
ITEMS = "results/{model}/{task}.items.jsonl.gz"
TASK_LOG = "logs/evaluate_task/{model}/{task}.log"
SERVE_LOG = "logs/serve_model/{model}.log"
ENDPOINT = "run/{model}/endpoint.json"
STATS = "run/{model}/stats.json"
EVAL = "build/{model}/eval.yaml"
JOB = "build/{model}/job.yaml"
TASK_FINGERPRINT = "build/{model}/tasks/{task}.json"
STAGED = "data/{task}"
CURVE = "results/curve/{name}.{ext}"  # ext: json, csv, html; an exporter's receipt: {dest}.json
CURVE_FILES = ("json", "csv", "html")


def curve_files(name: str, root: Path = Path(".")) -> dict[str, Path]:
    """A training curve's files (`report.curve`), by extension."""
    return {ext: root / CURVE.format(name=name, ext=ext) for ext in CURVE_FILES}


def harness_dir(model: str, task: str, fingerprint: str) -> Path:
    """One harness folder per (model, task, fingerprint): a rerun after an interruption answers from its cache,
    a changed model or config never reuses stale answers."""
    return Path("results") / model / "harness" / f"{task}-{fingerprint[:16]}"


def task_log(model: str, task: str) -> Path:
    return Path(TASK_LOG.format(model=model, task=task))
