"""Per-item records of one task run: what each model answered on each question, in a form that lines up
across models (for paired comparisons, `nemotron_eval.report`).

    extract_items(harness_dir, out)   # e.g. results/{model}/harness/<task>-<sha>/ -> results/{model}/{task}.items.jsonl.gz

Input: the harness output folder of one task (`evaluate.harness.run_harness`'s `output_dir`). lm-eval writes there,
under `<model_id>/`, one `samples_<lm-eval task>_<timestamp>.jsonl` per task it ran (MMLU: one per subject,
`samples_staged_mmlu_str_<subject>_...`) and a `results_<timestamp>.json` whose `configs` say how each task
builds its choices. When the folder holds several runs of a task (lm-eval's cache makes a rerun write new
files beside the old ones), the newest timestamp wins, as in `evaluate.output._n_samples`.

Output: gzip JSON lines, one record per item, sorted by id, written atomically and byte-for-byte the same for
the same input (gzip header without name or time). Record schema (version `ITEMS_SCHEMA`):

    id        "<subtask>/<doc_hash[:16]>" (+ "#<k>" for the k-th repeat of an identical document, k >= 2)
    subtask   lm-eval task name without the pipeline's "staged_" prefix (openbookqa, mmlu_str_anatomy, ...)
    doc_id    the item's position in the evaluated split (lm-eval's doc_id), to find it in the samples file
    type      "multiple_choice" (log-likelihood per choice) or "generate_until"
    correct   {metric: 0/1 or a number}: lm-eval's own per-item metric values, e.g. {"acc": 1, "acc_norm": 0}
    gold      index of the right choice (multiple choice) or the reference string (generation); null if unknown
    chosen    {metric: the choice index that metric's rule picks}: acc = argmax log-likelihood, acc_norm = argmax
              log-likelihood / len(choice text); generation: {metric: the filtered answer}. A value is null when
              recomputing it does not reproduce lm-eval's `correct` (never guessed).
    ll        per-choice log-likelihoods (multiple choice only)
    generated the raw generated text (generation only)

Why the id is the subtask plus lm-eval's `doc_hash`: doc_hash is sha256 of the document's JSON as lm-eval saw
it (after the task's process_docs), computed by the harness itself. It is the same for the same question
whatever model answered, file order or sample limit, and it changes when the question's content changes; so
two models' items pair up exactly when they answered the same questions, and a changed data release shows up
as items that do not pair (the report's item-set check) instead of silently pairing different questions, which
`doc_id` (a position) would do. The subtask keeps MMLU's subjects apart; 16 hex digits (64 bits) keep files
small with no practical risk of collision. Identical documents within a subtask (rare, but present in some
releases) get "#2", "#3"... in doc_id order, which is stable for the same data.
"""

from __future__ import annotations

import gzip
import io
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from nemotron_eval.core.errors import UserError
from nemotron_eval.evaluate.task_yamls import STAGED_PREFIX
from nemotron_eval.core.io import write_bytes_atomic

ITEMS_SCHEMA = 1
ID_HEX = 16
_SAMPLES = re.compile(r"^samples_(?P<task>.+)_(?P<ts>\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(?:\.\d+)?)\.jsonl$")
_RESULTS = re.compile(r"^results_(?P<ts>\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(?:\.\d+)?)\.json$")
_NOT_METRICS = {"doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "filter", "metrics",
                "doc_hash", "prompt_hash", "target_hash"}  # fmt: skip


def samples_files(harness_dir: Path) -> dict[str, Path]:
    """{lm-eval task: its newest samples file} under `harness_dir`."""
    newest: dict[str, tuple[str, Path]] = {}
    for path in sorted(Path(harness_dir).rglob("samples_*.jsonl")):
        m = _SAMPLES.match(path.name)
        if not m:
            continue
        task, ts = m["task"], m["ts"]
        if task not in newest or ts > newest[task][0]:
            newest[task] = (ts, path)
    return {task: path for task, (_, path) in sorted(newest.items())}


def task_configs(harness_dir: Path) -> dict[str, dict[str, Any]]:
    """lm-eval's task configs ({task: config}) from the newest results_*.json in `harness_dir`, or {}."""
    found = sorted(
        (m["ts"], p) for p in Path(harness_dir).rglob("results_*.json") if (m := _RESULTS.match(p.name))
    )
    if not found:
        return {}
    path = found[-1][1]
    try:
        configs = json.loads(path.read_text(encoding="utf-8")).get("configs") or {}
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read lm-eval's results ({e})") from None
    return {str(k): v for k, v in configs.items() if isinstance(v, dict)}


def extract_items(harness_dir: Path, out: Path) -> dict[str, Any]:
    """Write the per-item records of the task run in `harness_dir` to `out` (gzip JSON lines).

    Returns a summary: items, subtasks, metrics (their means over the items), and how many `chosen` values
    could not be reproduced (`unreproduced`, expected 0).
    """
    harness_dir = Path(harness_dir)
    if not harness_dir.is_dir():
        raise UserError(f"{harness_dir}: not a harness output folder (expected results/<model>/harness/<task>-<sha>/)")
    files = samples_files(harness_dir)
    if not files:
        raise UserError(
            f"{harness_dir}: no lm-eval samples_<task>_<timestamp>.jsonl files; was the harness run with log_samples?"
        )
    configs = task_configs(harness_dir)
    records: list[dict[str, Any]] = []
    unreproduced = 0
    for task, path in files.items():
        seen: Counter[str] = Counter()
        rows = sorted(_read_samples(path), key=lambda s: (_doc_id(s, path), str(s.get("filter"))))
        for sample in _one_filter(rows, path):
            record, missed = item_record(sample, task, configs.get(task, {}), path)
            base = record["id"]
            seen[base] += 1
            if seen[base] > 1:
                record["id"] = f"{base}#{seen[base]}"
            records.append(record)
            unreproduced += missed
    records.sort(key=lambda r: r["id"])
    write_items(out, records)
    means: dict[str, float] = {}
    for metric in sorted({m for r in records for m in r["correct"]}):
        values = [r["correct"][metric] for r in records if metric in r["correct"]]
        means[metric] = sum(values) / len(values)
    return {
        "schema": ITEMS_SCHEMA,
        "items": len(records),
        "subtasks": sorted({r["subtask"] for r in records}),
        "metrics": means,
        "unreproduced": unreproduced,
        "samples_files": [str(p) for p in files.values()],
    }


def _read_samples(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                sample = json.loads(line)
            except ValueError as e:
                raise UserError(f"{path}:{n}: not a JSON line ({e})") from None
            if not isinstance(sample, dict) or "doc_hash" not in sample:
                raise UserError(f"{path}:{n}: not an lm-eval sample (no doc_hash); is this lm-eval >= 0.4?")
            yield sample


def _doc_id(sample: dict[str, Any], path: Path) -> int:
    try:
        return int(sample["doc_id"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: a sample has no integer doc_id") from None


def _one_filter(rows: list[dict[str, Any]], path: Path) -> Iterator[dict[str, Any]]:
    """One sample per document: lm-eval writes one per filter; several filters are not supported."""
    filters = sorted({str(s.get("filter", "none")) for s in rows})
    if len(filters) > 1:
        raise UserError(f"{path}: samples under several filters {filters}; one filter per task is supported")
    yield from rows


def subtask_name(lm_eval_task: str) -> str:
    return lm_eval_task.removeprefix(STAGED_PREFIX)


def item_record(sample: dict[str, Any], lm_eval_task: str, config: dict[str, Any], path: Path) -> tuple[dict[str, Any], int]:
    """(record, number of `chosen` values that did not reproduce lm-eval's metric) for one lm-eval sample."""
    subtask = subtask_name(lm_eval_task)
    names = sample.get("metrics")
    if not isinstance(names, list):  # older lm-eval: metric values are the keys that are not sample fields
        names = [k for k in sample if k not in _NOT_METRICS]
    correct: dict[str, Any] = {}
    for name in names:
        value = sample.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue  # tuple-valued metrics (f1, mcc) have no per-item score
        correct[name] = int(value) if float(value) in (0.0, 1.0) else float(value)
    record: dict[str, Any] = {
        "id": f"{subtask}/{str(sample['doc_hash'])[:ID_HEX]}",
        "subtask": subtask,
        "doc_id": _doc_id(sample, path),
    }
    args = [a for a in (sample.get("arguments") or {}).values()] if isinstance(sample.get("arguments"), dict) else list(sample.get("arguments") or [])
    output_type = config.get("output_type") or ("generate_until" if _is_generation(args) else "multiple_choice")
    missed = 0
    if output_type == "generate_until":
        resps = sample.get("resps") or [[None]]
        filtered = sample.get("filtered_resps") or [None]
        answer = filtered[0] if isinstance(filtered, list) and filtered else filtered
        chosen = {m: answer for m in correct}
        record.update(type="generate_until", correct=correct, gold=sample.get("target"), chosen=chosen,
                      generated=resps[0][0] if resps and resps[0] else None)  # fmt: skip
        return record, missed
    lls = [float(r[0]) for r in _pairs(sample.get("filtered_resps"), path)]
    choices = [_continuation(a) for a in args]
    delimiter = str(config.get("target_delimiter", " "))
    gold = _gold(sample, len(lls), choices)
    chosen: dict[str, int | None] = {}
    for metric in correct:
        pick = _pick(metric, lls, choices, delimiter)
        if pick is None:
            continue
        if gold is not None and int(pick == gold) != correct[metric]:
            pick, missed = None, missed + 1
        chosen[metric] = pick
    record.update(type="multiple_choice", correct=correct, gold=gold, chosen=chosen, ll=lls)
    return record, missed


def _is_generation(args: list[Any]) -> bool:
    return bool(args) and isinstance(args[0], dict) and isinstance(args[0].get("arg_1"), dict)


def _continuation(arg: Any) -> str | None:
    if isinstance(arg, dict):
        value = arg.get("arg_1")
    elif isinstance(arg, list) and len(arg) > 1:
        value = arg[1]
    else:
        value = None
    return value if isinstance(value, str) else None


def _pairs(resps: Any, path: Path) -> list[tuple[str, str]]:
    """lm-eval logs (log-likelihood, is_greedy) pairs, as strings."""
    if not isinstance(resps, list) or not all(isinstance(r, list) and len(r) == 2 for r in resps):
        raise UserError(f"{path}: filtered_resps {str(resps)[:80]} are not (log-likelihood, is_greedy) pairs")
    return [(r[0], r[1]) for r in resps]


def _gold(sample: dict[str, Any], n_choices: int, choices: list[str | None]) -> int | None:
    """The right choice's index: lm-eval's target, or (winogrande: the choices are contexts and the target is
    the shared continuation) the document's answer "1"/"2"."""
    target = sample.get("target")
    if isinstance(target, bool):
        return None
    if isinstance(target, int) or (isinstance(target, str) and target.strip().isdigit()):
        index = int(target)
        return index if 0 <= index < n_choices else None
    doc = sample.get("doc") or {}
    same_continuation = len(set(choices)) == 1 and n_choices > 1
    if same_continuation and str(doc.get("answer", "")) in {str(i + 1) for i in range(n_choices)}:
        return int(doc["answer"]) - 1
    return None


def _pick(metric: str, lls: list[float], choices: list[str | None], delimiter: str) -> int | None:
    if not lls:
        return None
    if metric == "acc":
        return max(range(len(lls)), key=lambda i: (lls[i], -i))  # first maximum, as numpy.argmax
    if metric == "acc_norm" and all(c is not None for c in choices):
        lengths = [float(len(c.removeprefix(delimiter))) for c in choices if c is not None]
        if all(lengths):
            normed = [ll / n for ll, n in zip(lls, lengths)]
            return max(range(len(normed)), key=lambda i: (normed[i], -i))
    return None


# --- the file format ------------------------------------------------------------------------------


def dumps_items(records: Iterable[dict[str, Any]]) -> bytes:
    """Gzip JSON lines, reproducible: no file name or time in the gzip header."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        for record in records:
            gz.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n")
    return buf.getvalue()


def write_items(out: Path, records: Iterable[dict[str, Any]]) -> None:
    write_bytes_atomic(Path(out), dumps_items(records))


def read_items(path: Path) -> list[dict[str, Any]]:
    """The records of an items file; a file that is not one is a UserError naming it."""
    path = Path(path)
    records = []
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("id"), str) or not isinstance(record.get("correct"), dict):
                    raise UserError(f"{path}:{n}: not an item record (needs id and correct)")
                records.append(record)
    except (OSError, EOFError, ValueError) as e:
        raise UserError(f"{path}: cannot read the items file ({e}); expected gzip JSON lines from extract_items") from None
    return records
