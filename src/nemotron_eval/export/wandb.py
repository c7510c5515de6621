"""Export one model's results to Weights & Biases; results/{model}/wandb.json is the receipt.

    python -m nemotron_eval.export.wandb --config build/{model}/eval.yaml \\
        --summary results/{model}/summary.json --out results/{model}/wandb.json results/{model}/{task}.json ...

What decides whether anything happens: `execution.auto_export.destinations` (the launcher's switch). Without
"wandb" there (or with `enabled: false`), or with WANDB_MODE=disabled, the receipt says `exported: false` and
no wandb code is imported. Otherwise `export.wandb` needs `entity` and `project`; optional: `name` and `group`
(templates with {model} {spec} {name} {version} {digest} {registry}; name defaults to "eval-{name}-{version}",
e.g. eval-smollm2-v1), `tags`, `job_type` ("evaluation"), `description`, `extra_metadata` (merged into the run
config). Keys only the launcher's own exporter uses (`log_mode`, `copy_logs`, ...) are accepted and ignored.

Run layout: ONE run per model, metrics prefixed by task (`hellaswag/acc`, `hellaswag/acc_stderr`,
`hellaswag/n_samples`, `hellaswag/duration_s`). `nel export` makes one run per task instead; per model fits
better here: the pipeline exports per model (one receipt per results/{model}/), the runs table then has one
row per checkpoint with every task's scores as columns (what W&B's tables and charts compare), the
tasks x metrics summary table and the results artifact belong to one run, and the lineage graph shows one
model -> evaluation edge per checkpoint, not five. The launcher's own metric names
(`hellaswag_acc`, `adlr_arc_challenge_llama_acc_norm`, read from each task's harness folder by the
launcher's exporter code) are logged too, so these runs chart next to runs `nel export` made.

The run id is derived from the results' content and the run resumes (`resume="allow"`): exporting the same
results again (receipt deleted; or online after an offline export was synced) continues that run instead
of adding a duplicate.

Mode: WANDB_MODE when the user set it. Otherwise online when credentials exist: WANDB_API_KEY,
WANDB_IDENTITY_TOKEN_FILE, or a netrc login for the W&B host (the sources NVIDIA's recipe reads through
`wandb.api.api_key`, which wandb 0.31 deprecates with a warning, so they are read directly); else offline,
announced in one stderr line that carries the `wandb sync` command. Online, the key is verified
(`wandb.login(verify=True)`) before anything is logged: a rejected key is a UserError naming WANDB_API_KEY,
and no receipt is written, so the export runs again next time.

Offline, wandb refuses `use_artifact` (TypeError), so the model -> evaluation lineage edge needs an online
export; the receipt says so. Secrets: offline, WANDB_API_KEY is removed from the environment while wandb
runs (wandb never holds it, so its files cannot contain it); console capture is off; copied harness files,
the receipt and every message pass through `scrub_env_values`, and the run config through `redact`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shlex
import string
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nemotron_eval.errors import UserError, did_you_mean
from nemotron_eval.io import read_json, write_json_atomic
from nemotron_eval.secrets import api_key_names, redact, scrub_env_values

RECEIPT_VERSION = 1
DESTINATION = "wandb"
ARTIFACT_TYPE = "evaluation"
TABLE_KEY = "results_table"
DEFAULT_NAME = "eval-{name}-{version}"
WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")
OFFLINE_MODES = ("offline", "dryrun")
KEYS = ("entity", "project", "name", "group", "tags", "job_type", "description", "extra_metadata")
LAUNCHER_ONLY_KEYS = (
    "log_mode", "copy_logs", "copy_artifacts", "only_required", "log_metrics", "run_id", "job_dirs",
    "log_logs", "log_artifacts",
)
NAME_FIELDS = ("model", "spec", "name", "version", "digest", "registry")
RESULT_REQUIRED = ("task", "metrics", "n_samples", "model", "duration_s")
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


# --- config -----------------------------------------------------------------------------------


def export_requested(auto_export: Mapping[str, Any] | None) -> tuple[bool, str]:
    """(export?, why) from `execution.auto_export`."""
    section = dict(auto_export or {})
    destinations = section.get("destinations") or []
    destinations = [destinations] if isinstance(destinations, str) else list(destinations)
    if DESTINATION not in destinations:
        return False, f"'wandb' is not in execution.auto_export.destinations ({destinations})"
    if section.get("enabled") is False:
        return False, "execution.auto_export.enabled is false"
    return True, "'wandb' is in execution.auto_export.destinations"


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


# --- the payload (no wandb needed) --------------------------------------------------------------


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
        for metric, score in row["metrics"].items():
            metrics[f"{task}/{metric}"] = float(score["value"])
            if score.get("stderr") is not None:
                metrics[f"{task}/{metric}_stderr"] = float(score["stderr"])
        metrics[f"{task}/n_samples"] = int(row["n_samples"])
        metrics[f"{task}/duration_s"] = float(row["duration_s"])
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


def run_id(paths: Sequence[Path]) -> str:
    """Same results, same id: a second export of them resumes the run instead of duplicating it."""
    h = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


# --- logging (a wandb run, real or fake) ----------------------------------------------------------


def _stage(src: Path, dest: Path, secret_names: Sequence[str]) -> Path:
    """A copy of `src` with secret env values scrubbed (text files; others copied as they are)."""
    data = src.read_bytes()
    try:
        data = scrub_env_values(data.decode("utf-8"), secret_names).encode("utf-8")
    except UnicodeDecodeError:
        pass
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    return dest


def log_evaluation(run: Any, wandb: Any, payload: Payload, *, offline: bool, staging: Path,
                   secret_names: Sequence[str] = ()) -> dict[str, Any]:
    """Log `payload` into `run`: the model artifact used (online, W&B models), metrics, summary table,
    and the result files as an `evaluation` artifact. Returns the receipt's `logged` and `lineage`."""
    model = payload.model
    qualified = model.get("qualified_name") if model.get("registry") == "wandb" else None
    lineage: dict[str, Any] = {"model_artifact": qualified, "linked": False}
    if model.get("registry") != "wandb":
        lineage["reason"] = f"model.registry is {model.get('registry')!r}: the model is not a W&B artifact"
    elif not qualified:
        lineage["reason"] = "model.qualified_name is empty in the results"
    elif offline:
        lineage["reason"] = (
            "wandb cannot use_artifact offline; export again online (after `wandb sync`) to add the "
            "model -> evaluation edge: the same run id resumes"
        )
    else:
        try:
            run.use_artifact(qualified)
        except Exception as e:
            raise UserError(f"model.qualified_name={qualified!r}: W&B cannot use this model artifact: {_first_line(e)}") from None
        lineage["linked"] = True

    table = wandb.Table(columns=payload.table_columns, data=payload.table_rows)
    run.log({**payload.metrics, TABLE_KEY: table})

    artifact = wandb.Artifact(
        name=payload.artifact_name, type=ARTIFACT_TYPE, metadata=payload.artifact_metadata,
        description=f"NeMo Evaluator results of {model.get('spec')} ({', '.join(payload.artifact_metadata['tasks'])})",
    )
    for name, src in payload.files.items():
        artifact.add_file(str(_stage(src, staging / name, secret_names)), name=name)
    run.log_artifact(artifact)
    logged = {
        "metrics": sorted(payload.metrics),
        "summary_table": {"key": TABLE_KEY, "columns": payload.table_columns, "rows": len(payload.table_rows)},
        "config": sorted(payload.config),
        "artifact": {"name": payload.artifact_name, "type": ARTIFACT_TYPE, "files": sorted(payload.files),
                     "uses": qualified if lineage["linked"] else None},
    }
    return {"logged": logged, "lineage": lineage}


REPORT_PREFIX = "comparison"
DELTA_COLUMNS = ["label", "task", "metric", "later", "earlier", "delta", "ci_low", "ci_high", "n_common", "gains",
                 "losses", "p_value", "verdict", "same_samples"]  # fmt: skip


def log_report(run: Any, report: Mapping[str, Any], *, wandb: Any = None, prefix: str = REPORT_PREFIX) -> dict[str, Any]:
    """Log a comparison report (`nemotron_eval.report.build_report`) into an open W&B `run`.

    Logs `<prefix>/table` (a wandb.Table of report.csv's rows and columns), `<prefix>/deltas` (one row per
    pair with a paired difference: label, task, metric, later, earlier, delta, 95% interval, counts, p-value,
    verdict) and `<prefix>/delta_chart` (wandb.plot.bar of the deltas by label; W&B's bar chart draws no
    intervals, the deltas table holds them). Returns what was logged: keys and row counts.
    """
    from nemotron_eval.report.render import CSV_COLUMNS, table_rows

    if wandb is None:
        wandb = _import_wandb()
    if not isinstance(report, Mapping) or not isinstance(report.get("tasks"), list):
        raise UserError("log_report: not a comparison report (expected build_report's dict with 'tasks')")
    rows = table_rows(report)
    deltas = []
    for task in report["tasks"]:
        for metric in task["metrics"]:
            for p in metric["pairs"]:
                if p["delta"] is None:
                    continue
                label = f"{task['task']}/{metric['metric']}: {p['b']} vs {p['a']}"
                deltas.append([label, task["task"], metric["metric"], p["b"], p["a"], p["delta"], p["ci_low"],
                               p["ci_high"], p["n_common"], p["gains"], p["losses"], p["p_value"], p["verdict"],
                               p["same_samples"]])  # fmt: skip
    table = wandb.Table(columns=list(CSV_COLUMNS), data=rows)
    delta_table = wandb.Table(columns=DELTA_COLUMNS, data=deltas)
    chart = wandb.plot.bar(delta_table, "label", "delta", title="Paired change (later - earlier) on common items")
    keys = {"table": f"{prefix}/table", "deltas": f"{prefix}/deltas", "chart": f"{prefix}/delta_chart"}
    run.log({keys["table"]: table, keys["deltas"]: delta_table, keys["chart"]: chart})
    return {"keys": keys, "rows": len(rows), "deltas": len(deltas), "columns": list(CSV_COLUMNS)}


# --- mode and credentials ----------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    return scrub_env_values((str(e).strip().splitlines() or [type(e).__name__])[0])


def credential_source(wandb: Any, environ: Mapping[str, str]) -> str | None:
    """Where W&B credentials come from ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "netrc"), or None."""
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        if environ.get(name):
            return name
    from wandb.sdk.lib import wbauth  # wandb's own netrc reader: the host it logs in to, the file it reads

    host = wandb.setup().settings.base_url
    try:
        return "netrc" if wbauth.read_netrc_auth(host=host) else None
    except Exception as e:
        raise UserError(f"the netrc login for {host} is not a valid W&B API key ({_first_line(e)}); run `wandb login --relogin`") from None


def choose_mode(wandb: Any, user_mode: str | None) -> tuple[str, str, str | None]:
    """(mode, why, credential source): the user's WANDB_MODE, else online with credentials, else offline."""
    if user_mode:
        return user_mode, f"WANDB_MODE={user_mode} is set", None
    source = credential_source(wandb, os.environ)
    if source:
        return "online", f"W&B credentials from {source}", source
    return "offline", "no W&B credentials (no WANDB_API_KEY, no netrc login)", None


def verify_login(wandb: Any, source: str | None) -> None:
    """Online only: check the credentials with the server before anything is logged."""
    where = "WANDB_API_KEY" if source in (None, "WANDB_API_KEY") else f"{source} (WANDB_API_KEY is unset)"
    try:
        ok = wandb.login(verify=True, prompt=False)
    except Exception as e:
        raise UserError(
            f"W&B did not accept the credentials from {where}: {_first_line(e)}; set a valid WANDB_API_KEY "
            "(or `wandb login --relogin`), or WANDB_MODE=offline to export without them; nothing was exported"
        ) from None
    if not ok:
        raise UserError("WANDB_MODE is online but there are no W&B credentials: set WANDB_API_KEY or run `wandb login`")


@contextlib.contextmanager
def _environ(changes: Mapping[str, str | None]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in changes}
    try:
        for k, v in changes.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise UserError(
            "execution.auto_export.destinations has 'wandb' but the wandb package is not installed: "
            "pip install 'wandb>=0.31,<0.32', or remove 'wandb' from the destinations"
        ) from None
    return wandb


# --- the export ----------------------------------------------------------------------------------


def export_model(
    results: Sequence[Path],
    summary: Path,
    receipt: Path,
    wandb_section: Mapping[str, Any] | None,
    auto_export: Mapping[str, Any] | None,
    *,
    wandb_dir: Path | None = None,
    secret_names: Sequence[str] = (),
    comparison: Path | None = None,
) -> dict[str, Any]:
    """Export one model's task results to W&B and write `receipt` (atomically); returns the receipt.

    `comparison`: a report.json (`nemotron_eval.report`) whose models include this one; its table and paired
    deltas are logged to the same run (`log_report`).

    `wandb_section` is the eval config's `export.wandb`, `auto_export` its `execution.auto_export`;
    `secret_names` are extra env var names whose values must not leak (the config's api_key_name values).
    Raises UserError for bad input; then no receipt is written and the results are untouched.
    """
    started = time.monotonic()
    results = [Path(p) for p in results]
    summary = Path(summary)
    rows = load_results(results)
    base: dict[str, Any] = {
        "schema_version": RECEIPT_VERSION,
        "destination": DESTINATION,
        "model": rows[0]["model"].get("spec"),
        "results": [str(p) for p in results],
        "summary": str(summary),
    }
    wanted, why = export_requested(auto_export)
    user_mode = os.environ.get("WANDB_MODE") or None
    if user_mode is not None and user_mode not in WANDB_MODES:
        raise UserError(f"WANDB_MODE={user_mode!r}: not a W&B mode; valid: {', '.join(WANDB_MODES)}")
    if wanted and user_mode == "disabled":
        wanted, why = False, "WANDB_MODE=disabled is set"
    if not wanted:
        out = {**base, "exported": False, "mode": None, "reason": why}
        _write_receipt(receipt, out, secret_names)
        return out

    cfg = parse_config(wandb_section)
    try:
        summary_doc = read_json(summary)
    except (OSError, ValueError) as e:
        raise UserError(f"{summary}: cannot read the summary ({e})") from None
    payload = build_payload(rows, summary_doc, results, summary, cfg)
    fields = name_fields(payload.model)
    name = render(cfg.name, fields, "export.wandb.name")
    group = render(cfg.group, fields, "export.wandb.group") if cfg.group else None

    hide_key = user_mode in OFFLINE_MODES  # an offline export never needs the key: wandb never sees it
    changes = {"WANDB_MODE": user_mode, "WANDB_SILENT": "true", **({"WANDB_API_KEY": None} if hide_key else {})}
    with _environ(changes):
        wandb = _import_wandb()
        mode, reason, source = choose_mode(wandb, user_mode)
        offline = mode in OFFLINE_MODES
        if not offline:
            verify_login(wandb, source)
        with tempfile.TemporaryDirectory(prefix="nemotron-wandb-") as staging:
            try:
                run = wandb.init(
                    entity=cfg.entity, project=cfg.project, name=name, group=group, job_type=cfg.job_type,
                    tags=list(cfg.tags), notes=cfg.description, config=payload.config,
                    id=run_id([*results, summary]), resume="allow", mode=mode,
                    dir=str(wandb_dir) if wandb_dir else None,
                    settings=wandb.Settings(console="off", silent=True, disable_git=True, save_code=False, x_disable_stats=True),
                )
            except Exception as e:  # online: no access to the entity/project, a deleted run id, ...
                raise UserError(
                    f"export.wandb: W&B could not start a run in {cfg.entity}/{cfg.project} ({mode}): {_first_line(e)}"
                ) from None
            try:
                logged = log_evaluation(run, wandb, payload, offline=offline, staging=Path(staging), secret_names=secret_names)
                report = _comparison_with(comparison, payload.model)
                if report is not None:
                    logged["comparison"] = log_report(run, report, wandb=wandb)
            except BaseException:
                run.finish(exit_code=1)
                raise
            run_dir = str(run.settings.sync_dir)
            info = {"id": run.id, "name": name, "group": group, "job_type": cfg.job_type, "tags": list(cfg.tags),
                    "url": None if offline else run.url, "dir": run_dir}
            run.finish()

    sync = shlex.join(["wandb", "sync", run_dir]) if offline else None
    out = {
        **base,
        "exported": True,
        "mode": "offline" if offline else "online",
        "mode_reason": reason,
        "entity": cfg.entity,
        "project": cfg.project,
        "run": info,
        **logged,
        "offline_dirs": [run_dir] if offline else [],
        "sync_command": sync,
        "notes": payload.notes,
        "ignored_keys": [f"export.wandb.{k}" for k in cfg.ignored],
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - started, 2),
    }
    _write_receipt(receipt, out, secret_names)
    if offline:
        _say(f"{reason}: exported offline to {run_dir}; upload later with: {sync}", secret_names)
    else:
        _say(f"exported to {info['url']}", secret_names)
    return out


def _say(line: str, secret_names: Sequence[str]) -> None:
    print(f"nemotron: wandb: {scrub_env_values(line, secret_names)}", file=sys.stderr)


def _write_receipt(path: Path, receipt: dict[str, Any], secret_names: Sequence[str]) -> None:
    write_json_atomic(Path(path), json.loads(scrub_env_values(json.dumps(receipt), secret_names)))


def _comparison_with(path: Path | None, model: Mapping[str, Any]) -> dict[str, Any] | None:
    """The comparison report at `path` when it compares this model (by its spec), else None."""
    if path is None or not Path(path).is_file():
        return None
    try:
        report = read_json(path)
    except ValueError:
        return None
    specs = {m.get("spec") for m in report.get("models", []) if isinstance(m, Mapping)}
    return report if model.get("spec") in specs and isinstance(report.get("tasks"), list) else None


# --- the step ------------------------------------------------------------------------------------


def export_from_files(results: Sequence[Path], config: Path, summary: Path, out: Path, wandb_dir: Path | None = None) -> dict[str, Any]:
    """The export step (`nemotron-step export`): the compiled eval config says where to, the files what."""
    try:
        cfg = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{config}: cannot read the eval config ({e})") from None
    return export_model(
        list(results), summary, out, (cfg.get("export") or {}).get("wandb"), (cfg.get("execution") or {}).get("auto_export"),
        wandb_dir=wandb_dir, secret_names=api_key_names(cfg),
        comparison=Path("results") / "report.json",  # read when there, as it is: a later report is logged next time
    )
