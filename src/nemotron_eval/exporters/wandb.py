"""Export one model's results to Weights & Biases; results/{model}/wandb.json is the receipt.

    nemotron-step export --dest wandb --config build/{model}/eval.yaml \\
        --summary results/{model}/summary.json --out results/{model}/wandb.json results/{model}/{task}.json ...

This module is the exporter (`export_model`); `wandb_payload` builds what is logged, `wandb_session` holds
the wandb session (mode, credentials) and the logging into a run.


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

import datetime as dt
import os
import shlex
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nemotron_eval.config.validators import SAFE_WORD, text
from nemotron_eval.core.errors import UserError
from nemotron_eval.exporters.base import (
    RECEIPT_VERSION, CurveJob, ExportJob, Exporter, comparison_with, export_requested, first_line, load_results, name_fields, register, render, run_id, say,
    write_receipt,
)
from nemotron_eval.exporters.wandb_payload import (
    ARTIFACT_TYPE, DEFAULT_NAME, KEYS, LAUNCHER_ONLY_KEYS, TABLE_KEY, Payload, WandbConfig, build_payload, parse_config,
)
from nemotron_eval.exporters.wandb_session import (
    DELTA_COLUMNS, OFFLINE_MODES, REPORT_PREFIX, WANDB_MODES, choose_mode, credential_source,
    import_wandb, log_evaluation, log_report, login_host, run_settings, session, user_mode, verify_login,
)
from nemotron_eval.core.io import read_json

__all__ = [  # the W&B export's names, wherever they live
    "ARTIFACT_TYPE", "DEFAULT_NAME", "DELTA_COLUMNS", "KEYS", "LAUNCHER_ONLY_KEYS", "OFFLINE_MODES", "REPORT_PREFIX",
    "TABLE_KEY", "WANDB_MODES", "Payload", "WandbConfig", "WandbExporter", "build_payload", "choose_mode",
    "credential_source", "export_model", "load_results", "log_evaluation", "log_report", "name_fields",
    "parse_config", "render", "run_id", "verify_login",
]  # fmt: skip

DESTINATION = "wandb"


@register
class WandbExporter(Exporter):
    """W&B: one run per model (see the module docstring)."""

    name = DESTINATION
    rules = {"entity": text(SAFE_WORD, "a W&B entity name"), "project": text(SAFE_WORD, "a W&B project name")}
    credentials = ("WANDB_API_KEY",)

    def login_for_submission(self) -> None:
        """The key wandb itself would use here: WANDB_API_KEY, else its netrc login for the W&B host (read with
        wandb's own reader), into this process's environment. WANDB_MODE offline, dryrun or disabled, or an
        identity token file, need no key."""
        if user_mode() in (*OFFLINE_MODES, "disabled"):
            return
        wandb = import_wandb()
        source = credential_source(wandb, os.environ)  # wandb's netrc reader; an invalid entry is one line there
        if source is None:
            raise UserError(
                f"execution.auto_export.destinations has 'wandb' and there is no W&B login here (no WANDB_API_KEY, "
                f"no `wandb login` for {login_host(wandb)}): run `wandb login`, or set WANDB_MODE=offline "
                "to export offline (`wandb sync` later); nothing was submitted"
            )
        if source == "netrc":
            from wandb.sdk.lib import wbauth

            os.environ["WANDB_API_KEY"] = str(wbauth.read_netrc_auth(host=login_host(wandb)))

    def check(self, section: Mapping[str, Any] | None) -> None:
        cfg = parse_config(section)
        # an unknown placeholder in the run's name or group fails now, not after the evaluation
        render(cfg.name, name_fields({}), "export.wandb.name")
        if cfg.group:
            render(cfg.group, name_fields({}), "export.wandb.group")

    def export_curve(self, job: CurveJob) -> dict[str, Any]:
        from nemotron_eval.exporters.wandb_curve import export_curve

        return export_curve(job)

    def export(self, job: ExportJob) -> dict[str, Any]:
        return export_model(job.results, job.summary, job.receipt, job.section, job.auto_export,
                            wandb_dir=job.options.get("wandb_dir"), secret_names=job.secret_names,
                            comparison=job.comparison)


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
    wanted, why = export_requested(auto_export, DESTINATION)
    if wanted and user_mode() == "disabled":
        wanted, why = False, "WANDB_MODE=disabled is set"
    if not wanted:
        out = {**base, "exported": False, "mode": None, "reason": why}
        write_receipt(receipt, out, secret_names)
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

    with session() as (wandb, mode, reason):
        offline = mode in OFFLINE_MODES
        with tempfile.TemporaryDirectory(prefix="nemotron-wandb-") as staging:
            try:
                run = wandb.init(
                    entity=cfg.entity, project=cfg.project, name=name, group=group, job_type=cfg.job_type,
                    tags=list(cfg.tags), notes=cfg.description, config=payload.config,
                    id=run_id([*results, summary]), resume="allow", mode=mode,
                    dir=str(wandb_dir) if wandb_dir else None,
                    settings=run_settings(wandb),
                )
            except Exception as e:  # online: no access to the entity/project, a deleted run id, ...
                raise UserError(
                    f"export.wandb: W&B could not start a run in {cfg.entity}/{cfg.project} ({mode}): {first_line(e)}"
                ) from None
            try:
                logged = log_evaluation(run, wandb, payload, offline=offline, staging=Path(staging), secret_names=secret_names)
                report = comparison_with(comparison, payload.model)
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
    write_receipt(receipt, out, secret_names)
    if offline:
        say(DESTINATION, f"{reason}: exported offline to {run_dir}; upload later with: {sync}", secret_names)
    else:
        say(DESTINATION, f"exported to {info['url']}", secret_names)
    return out

