"""The exporter interface and the registry (NeMo Evaluator Launcher's style: a decorator fills a table by name).

An exporter is the one place that knows its destination: its config section (`export.<name>`), what is
checked when the plan is made (`check`, before anything runs), its receipt (`results/{model}/<name>.json`) and
how one model's results leave (`export`). Which run: `execution.auto_export.destinations` (names; an unknown
one is a UserError listing the registered ones). Adding one = a module with a `@register`ed class, its
section in the configs, its tests (and its import in `nemotron_eval.exporters`).

Shared here, one home each: reading the result files, the run-name template fields, the content digest of
the results (the same results export to the same run), the per-task metric names (`task/metric`,
`task/metric_stderr`, `task/n_samples`, `task/duration_s`), and writing receipts with secret values scrubbed.
"""

from __future__ import annotations

import hashlib
import json
import string
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from nemotron_eval.core import layout
from nemotron_eval.core.errors import UserError, did_you_mean
from nemotron_eval.core.io import read_json, write_json_atomic
from nemotron_eval.core.secrets import scrub_env_values

RECEIPT = "results/{model}/{dest}.json"
CURVE_COLUMNS = ["version", "order", "task", "metric", "value", "ci_low", "ci_high"]
NAME_FIELDS = ("model", "spec", "name", "version", "digest", "registry")
RESULT_REQUIRED = ("task", "metrics", "n_samples", "model", "duration_s")
Rule = Callable[[Any], "str | None"]  # a config value -> what is wrong with it, or None


@dataclass(frozen=True)
class ExportJob:
    """One model's export: its result files, summary and receipt; the compiled eval config's sections."""

    results: list[Path]
    summary: Path
    receipt: Path
    section: Mapping[str, Any] | None  # export.<name>
    auto_export: Mapping[str, Any] | None  # execution.auto_export
    secret_names: Sequence[str] = ()  # env var names whose values must not leak (api_key_name values)
    comparison: Path | None = None  # a report.json to log alongside, when it compares this model
    options: Mapping[str, Any] = field(default_factory=dict)  # an exporter's own extras (wandb_dir, ...)


@dataclass(frozen=True)
class CurveJob:
    """One training curve's export: curve.json's dict, its files (json, csv, html) and the receipt."""

    curve: Mapping[str, Any]
    files: Mapping[str, Path]  # "json" | "csv" | "html" -> results/curve/{name}.<ext>
    receipt: Path
    section: Mapping[str, Any] | None  # export.<name>
    secret_names: Sequence[str] = ()


class Exporter:
    """One destination. Subclasses set `name` and implement `check` and `export`."""

    name: ClassVar[str] = ""
    rules: ClassVar[Mapping[str, Rule]] = {}  # schema rules of export.<name>.<key> (config.schema applies them)
    # the environment variables holding its credentials, by name: eval.yaml maps them for the launcher's export job
    # (`export.env_vars`), and a cluster run takes them from the environment of the process that submits it
    credentials: ClassVar[tuple[str, ...]] = ()

    def login_for_submission(self) -> None:
        """Before a run is submitted to a cluster: put the credentials the exporter would use here into this
        process's environment, which the submitted jobs inherit (never a file or a command line); no credentials
        where they are required: one UserError line, before anything is submitted."""

    def check(self, section: Mapping[str, Any] | None) -> None:
        """Plan-time validation of `export.<name>` (raises UserError); nothing is contacted."""

    def export(self, job: ExportJob) -> dict[str, Any]:
        """Export one model's results, write `job.receipt` (atomically) and return the receipt."""
        raise NotImplementedError

    def receipt(self, model: str) -> str:
        return RECEIPT.format(model=model, dest=self.name)

    def export_curve(self, job: CurveJob) -> dict[str, Any] | None:
        """Export a training curve (`report.curve`) as a line chart, write `job.receipt` and return it; the
        default: this destination draws no curves (None, nothing written)."""
        return None

    def curve_receipt(self, name: str) -> str:
        return layout.CURVE.format(name=name, ext=f"{self.name}.json")


REGISTRY: dict[str, Exporter] = {}


def register(cls: type[Exporter]) -> type[Exporter]:
    """Class decorator: one instance of `cls` in the registry under `cls.name`."""
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"exporter name {cls.name!r} is empty or taken")
    REGISTRY[cls.name] = cls()
    return cls


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str, key: str = "--dest") -> Exporter:
    if name not in REGISTRY:
        raise UserError(f"{key}={name!r}: no such exporter{did_you_mean(name, names())}; registered: {', '.join(names())}")
    return REGISTRY[name]


def _destinations(auto_export: Mapping[str, Any] | None) -> list[str]:
    destinations = dict(auto_export or {}).get("destinations") or []
    return [destinations] if isinstance(destinations, str) else list(destinations)


def export_requested(auto_export: Mapping[str, Any] | None, name: str) -> tuple[bool, str]:
    """(export to `name`?, why) from `execution.auto_export`."""
    destinations = _destinations(auto_export)
    if name not in destinations:
        return False, f"'{name}' is not in execution.auto_export.destinations ({destinations})"
    if dict(auto_export or {}).get("enabled") is False:
        return False, "execution.auto_export.enabled is false"
    return True, f"'{name}' is in execution.auto_export.destinations"


def login_for_submission(auto_export: Mapping[str, Any] | None) -> list[str]:
    """Before a cluster run is submitted: each requested exporter's credentials into this process's environment
    (`Exporter.login_for_submission`); returns their names (by name only, never a value)."""
    names = []
    for exporter in requested(auto_export):
        exporter.login_for_submission()
        names += exporter.credentials
    return names


def requested(auto_export: Mapping[str, Any] | None) -> list[Exporter]:
    """The exporters `execution.auto_export` asks for, in its order; an unknown name is a UserError."""
    wanted = []
    for name in _destinations(auto_export):
        exporter = get(str(name), "execution.auto_export.destinations")
        if export_requested(auto_export, exporter.name)[0] and exporter not in wanted:
            wanted.append(exporter)
    return wanted


def targets(model: str, auto_export: Mapping[str, Any] | None, export: Mapping[str, Any] | None) -> list[str]:
    """The receipts a run of `model` builds, each exporter's settings checked now (not after the evaluation)."""
    out = []
    for exporter in requested(auto_export):
        exporter.check(dict(export or {}).get(exporter.name))
        out.append(exporter.receipt(model))
    return out


def schema_rules() -> list[tuple[str, Rule]]:
    """(key pattern, rule) of every registered exporter's section, for config.schema."""
    return [(f"export.{e.name}.{key}", rule) for e in REGISTRY.values() for key, rule in e.rules.items()]


# --- shared by the exporters ------------------------------------------------------------------------


def checked_section(name: str, section: Mapping[str, Any] | None, rules: Mapping[str, Callable[[Any], str | None]],
                    *, also: Sequence[str] = ()) -> dict[str, Any]:
    """`export.<name>` as a dict, each key known (its rule, or one of `also`: accepted, checked elsewhere) and
    valid by its rule; else one line naming the key and what is valid."""
    section = dict(section or {})
    for key, value in section.items():
        if key not in rules and key not in also:
            raise UserError(f"export.{name}.{key}: unknown key{did_you_mean(str(key), list(rules))}; valid: {', '.join(rules)}")
        problem = rules[key](value) if key in rules else None
        if problem:
            raise UserError(f"export.{name}.{key}={value!r}: {problem}")
    return section


def load_results(paths: Sequence[Path]) -> list[dict[str, Any]]:
    if not paths:
        raise UserError("export: no result files given (results/{model}/{task}.json)")
    rows = []
    for path in paths:
        try:
            row = read_json(path)
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: cannot read the result file ({e})") from None
        missing = [k for k in RESULT_REQUIRED if not isinstance(row, dict) or k not in row]
        if missing:
            raise UserError(f"{path}: not a task result, missing {', '.join(missing)}")
        rows.append(row)
    specs = sorted({str(r["model"].get("spec")) for r in rows})
    if len(specs) > 1:
        raise UserError(f"export: the result files mix models {specs}; export one model at a time")
    return rows


def task_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """One task result's metrics as exported: `task/metric`, `task/metric_stderr`, `task/n_samples`, `task/duration_s`."""
    task, metrics = row["task"], {}
    for metric, score in row["metrics"].items():
        metrics[f"{task}/{metric}"] = float(score["value"])
        if score.get("stderr") is not None:
            metrics[f"{task}/{metric}_stderr"] = float(score["stderr"])
    metrics[f"{task}/n_samples"] = int(row["n_samples"])
    metrics[f"{task}/duration_s"] = float(row["duration_s"])
    return metrics


def name_fields(model: Mapping[str, Any]) -> dict[str, str]:
    spec = str(model.get("spec") or "")
    return {
        "model": spec.replace(":", "_"),
        "spec": spec,
        "name": str(model.get("name") or spec.split(":")[0]),
        "version": str(model.get("version") or "unversioned"),
        "digest": str(model.get("digest") or "").split(":")[-1][:12],
        "registry": str(model.get("registry") or ""),
    }


def render(template: str, fields: Mapping[str, str], key: str) -> str:
    """`template` with {field}s filled; an unknown field is a UserError naming `key`."""
    valid = ", ".join("{" + f + "}" for f in NAME_FIELDS)
    try:
        used = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        unknown = [f for f in used if f not in fields]
        if unknown:
            raise UserError(f"{key}={template!r}: unknown placeholder {{{unknown[0]}}}; valid: {valid}")
        return template.format_map(fields)
    except ValueError as e:
        raise UserError(f"{key}={template!r}: {e}; valid placeholders: {valid}") from None


def run_id(paths: Sequence[Path]) -> str:
    """Same results, same id: a second export of them resumes the run instead of duplicating it."""
    h = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def first_line(e: BaseException) -> str:
    return scrub_env_values((str(e).strip().splitlines() or [type(e).__name__])[0])


def stage(src: Path, dest: Path, secret_names: Sequence[str]) -> Path:
    """A copy of `src` with secret env values scrubbed (text files; others copied as they are)."""
    data = src.read_bytes()
    try:
        data = scrub_env_values(data.decode("utf-8"), secret_names).encode("utf-8")
    except UnicodeDecodeError:
        pass
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    return dest


def say(dest: str, line: str, secret_names: Sequence[str]) -> None:
    print(f"nemotron: {dest}: {scrub_env_values(line, secret_names)}", file=sys.stderr)


RECEIPT_VERSION = 1


def begin_receipt(job: ExportJob, destination: str, secret_names: Sequence[str]) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any] | None]:
    """What every exporter does first: the results read, the receipt's common fields, and when `destination` is
    not asked for (execution.auto_export), the receipt saying why, already written (None otherwise)."""
    rows = load_results(job.results)
    base: dict[str, Any] = {
        "schema_version": RECEIPT_VERSION, "destination": destination, "model": rows[0]["model"].get("spec"),
        "results": [str(p) for p in job.results], "summary": str(job.summary),
    }
    wanted, why = export_requested(job.auto_export, destination)
    if wanted:
        return rows, base, None
    skipped = {**base, "exported": False, "reason": why}
    write_receipt(job.receipt, skipped, secret_names)
    return rows, base, skipped


def write_receipt(path: Path, receipt: dict[str, Any], secret_names: Sequence[str]) -> None:
    write_json_atomic(Path(path), json.loads(scrub_env_values(json.dumps(receipt), secret_names)))


def curve_rows(curve: Mapping[str, Any]) -> list[list[Any]]:
    """The curve's points as CURVE_COLUMNS rows, in curve order: `order` is the x of a line chart (the version's
    `step` when the curve is ordered by step, else its place, 1, 2, ...); the mean over the tasks is task "(mean)"."""
    x = {v["version"]: (v["step"] if curve["order"] == "step" else i) for i, v in enumerate(curve["versions"], 1)}
    rows = []
    for section in curve["tasks"]:
        for metric in section["metrics"]:
            rows += [[p["version"], x[p["version"]], section["task"], metric["metric"], p["value"], p["ci_low"],
                      p["ci_high"]] for p in metric["points"]]  # fmt: skip
    overall = curve.get("overall") or {}
    rows += [[p["version"], x[p["version"]], "(mean)", "mean", p["value"], p["ci_low"], p["ci_high"]]
             for p in overall.get("points", [])]  # fmt: skip
    return rows


def comparison_with(path: Path | None, model: Mapping[str, Any]) -> dict[str, Any] | None:
    """The comparison report at `path` when it compares this model (by its spec), else None."""
    if path is None or not Path(path).is_file():
        return None
    try:
        report = read_json(path)
    except ValueError:
        return None
    specs = {m.get("spec") for m in report.get("models", []) if isinstance(m, Mapping)}
    return report if model.get("spec") in specs and isinstance(report.get("tasks"), list) else None
