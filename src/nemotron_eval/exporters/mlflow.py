"""Export one model's results to MLflow; results/{model}/mlflow.json is the receipt.

`export.mlflow`: `tracking_uri` (default: MLFLOW_TRACKING_URI when set, else this project's own store,
sqlite:///<project>/mlruns/mlflow.db with artifacts in <project>/mlruns/artifacts), `experiment_name`
("nemotron-eval"), `run_name` (a template with {model} {spec} {name} {version} {digest} {registry}; default
"eval-{name}-{version}"), `tags` (a mapping, added to the run's tags).

One MLflow run per model and results: params (the model's artifact spec, version, digest, registry; each task's
config sha256 and data digest), metrics named like W&B's (`hellaswag/acc`, `hellaswag/acc_stderr`,
`hellaswag/n_samples`, `hellaswag/duration_s`), the result JSONs (`results/`), the summary and, when it compares
this model, the comparison page (`comparison/`: report.json, .csv, .html) as artifacts, and lineage tags
(`nemotron.model.*`, `nemotron.results_digest`). The same results exported again find their finished run by
`nemotron.results_digest` instead of adding a second one.

Credentials by name only: MLflow reads MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD from the
environment itself; a tracking_uri holding a password is refused, the receipt's URI carries no user info, and
copied files, the receipt and every message pass through `scrub_env_values`, params and tags through `redact`.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nemotron_eval.core.errors import UserError
from nemotron_eval.exporters.base import (
    CurveJob, ExportJob, Exporter, begin_receipt, checked_section, comparison_with, curve_rows, first_line, name_fields, register, render,
    run_id, say, stage, task_metrics, write_receipt,
)
from nemotron_eval.core.secrets import redact

DESTINATION = "mlflow"
DEFAULT_EXPERIMENT = "nemotron-eval"
DEFAULT_RUN_NAME = "eval-{name}-{version}"
STORE = Path("mlruns")  # the project's own store, under the working directory (the project)
DIGEST_TAG = "nemotron.results_digest"
CREDENTIAL_NAMES = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
MAX_PARAM = 6000  # MLflow's limit on a param's value


def _string(v: Any) -> str | None:
    return None if v is None or (isinstance(v, str) and v.strip()) else "a non-empty string or null"


def _tags(v: Any) -> str | None:
    ok = v is None or (isinstance(v, Mapping) and all(isinstance(k, str) and isinstance(x, (str, int, float, bool))
                                                      for k, x in v.items()))
    return None if ok else "a mapping of tag names to values"


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///" + str((STORE / "mlflow.db").resolve())


def shown_uri(uri: str) -> str:
    """`uri` without user info (user:password@), as receipts and messages show it."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))


def parse_config(section: Mapping[str, Any] | None) -> dict[str, Any]:
    section = checked_section("mlflow", section, MlflowExporter.rules)
    uri = section.get("tracking_uri") or default_tracking_uri()
    if urllib.parse.urlsplit(uri).password is not None:
        raise UserError(
            f"export.mlflow.tracking_uri={shown_uri(uri)!r} (password hidden): holds a password; put credentials in "
            "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN (MLflow reads them by name)"
        )
    run_name = section.get("run_name") or DEFAULT_RUN_NAME
    render(run_name, name_fields({}), "export.mlflow.run_name")  # an unknown placeholder fails now
    return {
        "tracking_uri": uri,
        "experiment_name": section.get("experiment_name") or DEFAULT_EXPERIMENT,
        "run_name": run_name,
        "tags": {k: str(v) for k, v in (section.get("tags") or {}).items()},
    }


def run_content(rows: list[dict[str, Any]], model: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, str], dict[str, str]]:
    """(metrics, params, lineage tags) of one model's task results."""
    metrics: dict[str, float] = {}
    params = {f"model.{k}": str(model.get(k)) for k in ("spec", "name", "version", "digest", "registry")}
    tags = {f"nemotron.model.{k}": str(model.get(k) or "") for k in ("spec", "version", "digest", "registry",
                                                                     "qualified_name", "path")}
    for row in sorted(rows, key=lambda r: r["task"]):
        task = row["task"]
        metrics.update(task_metrics(row))
        params[f"{task}.harness_task"] = str(row.get("harness_task"))
        params[f"{task}.config_sha256"] = str(row.get("config_sha256"))
        params[f"{task}.data_digest"] = str((row.get("data") or {}).get("digest"))
        params[f"{task}.data_source"] = str((row.get("data") or {}).get("source"))
    versions = rows[0].get("versions") or {}
    params.update({f"version.{k}": str(v) for k, v in sorted(versions.items())})
    params = {k: v[:MAX_PARAM] for k, v in redact(params).items()}
    return metrics, params, redact(tags)


def _client(uri: str) -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UserError(
            "execution.auto_export.destinations has 'mlflow' but the mlflow package is not installed: "
            "pip install mlflow, or remove 'mlflow' from the destinations"
        ) from None
    logging.getLogger("alembic").setLevel(logging.WARNING)  # a new sqlite store's migrations, one line each
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def _experiment(client: Any, name: str, uri: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = None
    if uri == "sqlite:///" + str((STORE / "mlflow.db").resolve()):  # the project's store: artifacts beside it
        location = (STORE / "artifacts").resolve().as_uri()
    return str(client.create_experiment(name, artifact_location=location))


@register
class MlflowExporter(Exporter):
    """MLflow: one run per model (see the module docstring)."""

    name = DESTINATION
    rules = {"tracking_uri": _string, "experiment_name": _string, "run_name": _string, "tags": _tags}

    def check(self, section: Mapping[str, Any] | None) -> None:
        parse_config(section)

    def export_curve(self, job: CurveJob) -> dict[str, Any]:
        """A training curve: one run (`curve-{name}`, tag nemotron.curve) holding each version's `task/metric`
        (`_ci_low`, `_ci_high`; the mean over the tasks as `mean/score`) at step = the version's order, so
        MLflow's metric chart draws the line, and the curve's json/csv/html as artifacts (`curve/`). The same
        curve again finds its run (by content digest)."""
        secret_names = [*job.secret_names, *CREDENTIAL_NAMES]
        cfg = parse_config(job.section)
        name = str(job.curve["name"])
        history: dict[str, list[tuple[int, float]]] = {}
        for version, x, task, metric, value, low, high in curve_rows(job.curve):
            key = "mean/score" if task == "(mean)" else f"{task}/{metric}"
            for suffix, v in (("", value), ("_ci_low", low), ("_ci_high", high)):
                if v is not None:
                    history.setdefault(key + suffix, []).append((int(x), float(v)))
        digest = run_id(list(job.files.values()))
        files = {f"curve/{Path(p).name}": Path(p) for p in job.files.values()}
        uri = cfg["tracking_uri"]
        try:
            info = self._log(uri, cfg, f"curve-{name}", {**cfg["tags"], "nemotron.curve": name, DIGEST_TAG: digest},
                             history, {"curve": name, "order": str(job.curve["order"])}, files, digest, secret_names)
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"export.mlflow: MLflow at {shown_uri(uri)} refused the curve of {name}: {first_line(e)}") from None
        out = {"destination": DESTINATION, "curve": name, "exported": True, "tracking_uri": shown_uri(uri), **info,
               "metrics": sorted(history), "artifacts": sorted(files),
               "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        write_receipt(job.receipt, out, secret_names)
        say(DESTINATION, f"curve {name}: {'found' if info['reused'] else 'logged'} run {info['run_id']}", secret_names)
        return out

    def export(self, job: ExportJob) -> dict[str, Any]:
        started = time.monotonic()
        secret_names = [*job.secret_names, *CREDENTIAL_NAMES]
        rows, base, skipped = begin_receipt(job, DESTINATION, secret_names)
        if skipped is not None:
            return skipped
        cfg = parse_config(job.section)
        if not Path(job.summary).is_file():
            raise UserError(f"{job.summary}: no summary (results/{{model}}/summary.json); run the summary first")
        model = rows[0]["model"]
        metrics, params, tags = run_content(rows, model)
        digest = run_id([*job.results, job.summary])
        run_name = render(cfg["run_name"], name_fields(model), "export.mlflow.run_name")
        uri = cfg["tracking_uri"]
        files = {f"results/{Path(p).name}": Path(p) for p in job.results}
        files["summary.json"] = Path(job.summary)
        if Path(job.summary).with_suffix(".md").is_file():
            files["summary.md"] = Path(job.summary).with_suffix(".md")
        if comparison_with(job.comparison, model) is not None:
            for suffix in (".json", ".csv", ".html"):
                page = Path(job.comparison).with_suffix(suffix)
                if page.is_file():
                    files[f"comparison/{page.name}"] = page
        try:
            info = self._log(uri, cfg, run_name, {**tags, **cfg["tags"], DIGEST_TAG: digest}, metrics, params, files,
                             digest, secret_names)
        except UserError:
            raise
        except Exception as e:  # no server, refused credentials, a store it cannot write, ...
            raise UserError(f"export.mlflow: MLflow at {shown_uri(uri)} refused the export: {first_line(e)}") from None
        out = {
            **base, "exported": True, "tracking_uri": shown_uri(uri), **info,
            "metrics": sorted(metrics), "params": sorted(params), "artifacts": sorted(files),
            "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "duration_s": round(time.monotonic() - started, 2),
        }
        write_receipt(job.receipt, out, secret_names)
        say(DESTINATION, f"{'found' if info['reused'] else 'logged'} run {info['run_id']} in experiment "
            f"{cfg['experiment_name']!r} at {shown_uri(uri)}", secret_names)
        return out

    @staticmethod
    def _log(uri: str, cfg: Mapping[str, Any], run_name: str, tags: dict[str, str],
             metrics: Mapping[str, float | list[tuple[int, float]]], params: dict[str, str], files: dict[str, Path],
             digest: str, secret_names: list[str]) -> dict[str, Any]:
        """One run: params, metrics (a value, or its (step, value) history), files as artifacts; a finished run
        with the same `digest` is found instead."""
        from mlflow.entities import Metric, Param

        client = _client(uri)
        experiment_id = _experiment(client, cfg["experiment_name"], uri)
        same = client.search_runs([experiment_id], filter_string=f"tags.`{DIGEST_TAG}` = '{digest}' and "
                                  "attributes.status = 'FINISHED'", max_results=1)
        if same:
            run = same[0]
            return {"experiment_id": experiment_id, "experiment_name": cfg["experiment_name"], "run_id": run.info.run_id,
                    "run_name": run.info.run_name, "reused": True}
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        rid = run.info.run_id
        try:
            now = int(time.time() * 1000)
            items = list(params.items())
            for i in range(0, len(items), 100):  # MLflow's batch limit
                client.log_batch(rid, params=[Param(k, v) for k, v in items[i:i + 100]])
            points = [Metric(k, y, now, x) for k, v in metrics.items() for x, y in (v if isinstance(v, list) else [(0, v)])]
            for i in range(0, len(points), 1000):  # MLflow's batch limit
                client.log_batch(rid, metrics=points[i:i + 1000])
            with tempfile.TemporaryDirectory(prefix="nemotron-mlflow-") as staging:
                for name, src in files.items():
                    copy = stage(src, Path(staging) / name, secret_names)
                    client.log_artifact(rid, str(copy), artifact_path=str(Path(name).parent) if "/" in name else None)
        except BaseException:
            client.set_terminated(rid, status="FAILED")
            raise
        client.set_terminated(rid)
        return {"experiment_id": experiment_id, "experiment_name": cfg["experiment_name"], "run_id": rid,
                "run_name": run_name, "reused": False}
