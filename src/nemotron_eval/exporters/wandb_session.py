"""W&B export, part two: the wandb session (mode, credentials, the import) and what is logged into a run: the
evaluation (lineage, metrics, table, results artifact) and a comparison report."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from nemotron_eval.core import wandb_service
from nemotron_eval.core.errors import UserError
from nemotron_eval.exporters.base import first_line as _first_line
from nemotron_eval.exporters.base import stage as _stage
from nemotron_eval.exporters.wandb_payload import ARTIFACT_TYPE, TABLE_KEY, Payload

WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")
OFFLINE_MODES = ("offline", "dryrun")

# --- logging (a wandb run, real or fake) ----------------------------------------------------------


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
        wandb = import_wandb()
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


def credential_source(wandb: Any, environ: Mapping[str, str]) -> str | None:
    """Where W&B credentials come from ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "netrc"), or None."""
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        if environ.get(name):
            return name
    from wandb.sdk.lib import wbauth  # wandb's own netrc reader: the host it logs in to, the file it reads

    host = login_host(wandb)
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


def user_mode() -> str | None:
    """WANDB_MODE as the user set it (None when unset); a value wandb does not know is one line."""
    mode = os.environ.get("WANDB_MODE") or None
    if mode is not None and mode not in WANDB_MODES:
        raise UserError(f"WANDB_MODE={mode!r}: not a W&B mode; valid: {', '.join(WANDB_MODES)}")
    return mode


@contextlib.contextmanager
def session() -> Iterator[tuple[Any, str, str]]:
    """(wandb, mode, why) for one export: the user's WANDB_MODE, else online with credentials (verified with the
    server first), else offline. Offline, WANDB_API_KEY is out of the environment while wandb runs (wandb never
    holds it, so its files cannot contain it); wandb is silent."""
    mode_set = user_mode()
    changes = {"WANDB_MODE": mode_set, "WANDB_SILENT": "true", **({"WANDB_API_KEY": None} if mode_set in OFFLINE_MODES else {})}
    with wandb_service.private(), environ_changed(changes):
        wandb = import_wandb()
        mode, reason, source = choose_mode(wandb, mode_set)
        if mode not in OFFLINE_MODES:
            verify_login(wandb, source)
        yield wandb, mode, reason


def login_host(wandb: Any) -> str:
    """The W&B host wandb logs in to (its settings files and environment), the service it starts for that kept
    to this process (`core.wandb_service`)."""
    with wandb_service.private():
        return str(wandb.setup().settings.base_url)


def run_settings(wandb: Any) -> Any:
    """What an export run records beside its data: nothing (no console, stats, git or code)."""
    return wandb.Settings(console="off", silent=True, disable_git=True, save_code=False, x_disable_stats=True)


@contextlib.contextmanager
def environ_changed(changes: Mapping[str, str | None]) -> Iterator[None]:
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


def import_wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise UserError(
            "execution.auto_export.destinations has 'wandb' but the wandb package is not installed: "
            "pip install 'wandb>=0.31,<0.32', or remove 'wandb' from the destinations"
        ) from None
    return wandb


