"""A training curve (`report.curve`) to W&B: results/curve/{name}.wandb.json is the receipt.

One run per curve, named `curve-{name}` (group `curve-{name}`, job_type "training-curve") in `export.wandb`'s
entity and project, its id derived from the curve's content: the same curve exported again resumes its run, a
curve with a new version is a new run of the group. Logged:
- `curve/table`: a wandb.Table of (version, order, task, metric, value, ci_low, ci_high) (`base.curve_rows`);
- `curve/chart`: wandb.plot.line_series, one line per task (its first metric) and one for the mean over the
  tasks, x = the version's order (its `step` when the curve is ordered by step, else 1, 2, ...);
- each version's `task/metric` (and the mean as `mean/score`) logged at W&B step = its order, so W&B's own line
  charts draw the same curve (only when the orders increase, as W&B steps must);
- the curve's json, csv and html as an artifact `curve-{name}` of type `training-curve`.
The mode (online, offline, the user's WANDB_MODE) and credentials: as the model export (`wandb_session.session`).
"""

from __future__ import annotations

import datetime as dt
import shlex
from collections.abc import Sequence
from typing import Any

from nemotron_eval.core.errors import UserError
from nemotron_eval.exporters.base import CURVE_COLUMNS, CurveJob, curve_rows, first_line, run_id, say, write_receipt
from nemotron_eval.exporters.wandb_payload import parse_config
from nemotron_eval.exporters.wandb_session import OFFLINE_MODES, run_settings, session, user_mode

DESTINATION = "wandb"
TABLE = "curve/table"
CHART = "curve/chart"
ARTIFACT_TYPE = "training-curve"


def series(rows: Sequence[Sequence[Any]], primary: dict[str, str]) -> tuple[list[list[Any]], list[list[float]], list[str]]:
    """(xs, ys, keys) for wandb.plot.line_series: one line per task's first metric and the mean, in curve order."""
    keys = [*primary, *(["(mean)"] if any(r[2] == "(mean)" for r in rows) else [])]
    xs, ys = [], []
    for task in keys:
        points = [r for r in rows if r[2] == task and (task == "(mean)" or r[3] == primary[task])]
        xs.append([r[1] for r in points])
        ys.append([r[4] for r in points])
    return xs, ys, keys


def step_metrics(rows: Sequence[Sequence[Any]]) -> dict[int, dict[str, float]] | None:
    """Per version's order, its `task/metric` values and `mean/score`, in increasing order: what is logged at W&B
    step = order. Every task's rows count (a version may lack one task's result). None when the orders are not
    one distinct whole number per version (W&B steps must increase)."""
    orders = sorted({r[1] for r in rows})
    if len(orders) != len({r[0] for r in rows}) or not all(isinstance(x, int) and x >= 0 for x in orders):
        return None
    return {x: {f"{r[2]}/{r[3]}" if r[2] != "(mean)" else "mean/score": r[4] for r in rows if r[1] == x} for x in orders}


def export_curve(job: CurveJob) -> dict[str, Any]:
    curve = job.curve
    name = str(curve["name"])
    if user_mode() == "disabled":
        out = {"destination": DESTINATION, "curve": name, "exported": False, "reason": "WANDB_MODE=disabled is set"}
        write_receipt(job.receipt, out, job.secret_names)
        return out
    cfg = parse_config(job.section)
    rows = curve_rows(curve)
    primary = {s["task"]: s["primary"] for s in curve["tasks"]}
    xs, ys, keys = series(rows, primary)
    run_name = f"curve-{name}"
    with session() as (wandb, mode, reason):
        offline = mode in OFFLINE_MODES
        try:
            run = wandb.init(entity=cfg.entity, project=cfg.project, name=run_name, group=run_name,
                             job_type="training-curve", tags=list(cfg.tags), config={"curve": name, "order": curve["order"],
                             "versions": [v["version"] for v in curve["versions"]]},
                             id=run_id(list(job.files.values())), resume="allow", mode=mode,
                             settings=run_settings(wandb))  # fmt: skip
        except Exception as e:
            raise UserError(f"export.wandb: W&B could not start a run in {cfg.entity}/{cfg.project} ({mode}): {first_line(e)}") from None
        try:
            steps = step_metrics(rows)
            for x, at in (steps or {}).items():
                run.log(at, step=x)
            table = wandb.Table(columns=CURVE_COLUMNS, data=rows)
            chart = wandb.plot.line_series(xs=xs, ys=ys, keys=keys, title=f"{name}: each version's score",
                                           xname="step" if curve["order"] == "step" else "version (in order)")
            run.log({TABLE: table, CHART: chart})
            artifact = wandb.Artifact(name=run_name, type=ARTIFACT_TYPE, description=f"the training curve of {name}",
                                      metadata={"versions": [v["version"] for v in curve["versions"]]})
            for ext, path in sorted(job.files.items()):
                artifact.add_file(str(path), name=f"{name}.{ext}")
            run.log_artifact(artifact)
        except BaseException:
            run.finish(exit_code=1)
            raise
        info = {"id": run.id, "name": run_name, "url": None if offline else run.url, "dir": str(run.settings.sync_dir)}
        run.finish()
    sync = shlex.join(["wandb", "sync", info["dir"]]) if offline else None
    out = {
        "destination": DESTINATION, "curve": name, "exported": True, "mode": "offline" if offline else "online",
        "mode_reason": reason, "entity": cfg.entity, "project": cfg.project, "run": info,
        "logged": {"table": {"key": TABLE, "columns": CURVE_COLUMNS, "rows": len(rows)}, "chart": {"key": CHART, "lines": keys},
                   "step_metrics": steps is not None, "artifact": {"name": run_name, "files": sorted(f"{name}.{e}" for e in job.files)}},
        "sync_command": sync, "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    write_receipt(job.receipt, out, job.secret_names)
    say(DESTINATION, f"curve {name} exported {'offline to ' + info['dir'] + '; upload later with: ' + sync if offline else 'to ' + str(info['url'])}",
        job.secret_names)
    return out
