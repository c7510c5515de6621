"""`nemotron export RUN_ID --dest NAME [--format json|csv]`: a finished run's results exported again, without
evaluating (as the launcher's `nel export <id>`).

The run's record (`runs/<id>/`) names its models and tasks and holds each model's eval.yaml as the run compiled
it; the results are the run's own (`runs.result_files`: a result a later config rewrote is not this run's). Each
model is exported by the exporter directly (no Snakemake), asked for explicitly (whatever the config's
`execution.auto_export` says), and its receipt is results/{model}/NAME.json as the pipeline writes it. The
summary is results/{model}/summary.json when it covers exactly these results, else one written for the export
under runs/<id>/export/{model}/. `--format csv` (local only) also writes the run's table, every model's rows,
to runs/<id>/export/local.csv.

`nemotron export --curve NAME --dest NAME [-c CONFIG]`: the training curve results/curve/NAME.json
(`report.curve`, as the watcher or the Snakemake target left it) exported as a line chart (`Exporter.export_curve`),
with the config's `export.DEST` section; the receipt is results/curve/NAME.DEST.json. The watcher does the same
after each rebuild of a curve, for each destination of its `execution.auto_export`.
"""

from __future__ import annotations

from pathlib import Path

from nemotron_eval.core import layout
from nemotron_eval.core.errors import UserError
from nemotron_eval.exporters import local
from nemotron_eval.exporters.base import CurveJob, Exporter, get, load_results
from nemotron_eval.core.io import csv_text, read_json, write_text_atomic

FORMATS = ("json", "csv")


def _summary(run_folder: Path, model: str, results: list[Path], root: Path) -> Path:
    """The model's summary when it covers exactly `results`' tasks, else one written for this export."""
    from nemotron_eval.evaluate.results import summarize

    tasks = {r["task"] for r in load_results(results)}
    summary = root / "results" / model / "summary.json"
    try:
        if set(read_json(summary).get("tasks") or {}) == tasks:
            return summary
    except (OSError, ValueError, AttributeError):
        pass
    summary = run_folder / "export" / model / "summary.json"
    summarize(results, summary, summary.with_suffix(".md"))
    return summary


def export_run(run_id: str, dest: str, fmt: str = "json", root: Path = Path(".")) -> list[Path]:
    """Export run `run_id`'s results to `dest`; returns the files written (receipts, then the CSV)."""
    from nemotron_eval.front import runs
    from nemotron_eval.exporters import job_for, read_eval_config

    if fmt not in FORMATS:
        raise UserError(f"--format={fmt!r}: valid: {', '.join(FORMATS)}")
    exporter = get(dest)
    if fmt == "csv" and exporter.name != local.DESTINATION:
        raise UserError(f"--format csv: only --dest local writes a CSV table (--dest {exporter.name} exports json receipts)")
    run = runs.load(run_id)
    found = {model: paths for model, paths in runs.result_files(run, root).items() if paths}
    if not found:
        raise UserError(
            f"run {run.id}: no results of its tasks ({', '.join(run.tasks)}) for {', '.join(run.models)} under "
            f"{(root / 'results').resolve()}; nothing to export (state: {runs.state(run)})"
        )
    written, rows = [], []
    for model, results in found.items():
        cfg = read_eval_config(run.folder / model / "eval.yaml")
        summary = _summary(run.folder, model, results, root)
        receipt = root / exporter.receipt(model)
        job = job_for(exporter.name, results, cfg, summary, receipt, auto_export={"destinations": [exporter.name]})
        exporter.export(job)
        written.append(receipt)
        rows += local.table(load_results(results))
    if fmt == "csv":
        table = run.folder / "export" / "local.csv"
        write_text_atomic(table, csv_text(local.COLUMNS, rows))
        written.append(table)
    return written




def export_curve(name: str, exporter: Exporter, cfg: dict, root: Path = Path(".")) -> Path | None:
    """The curve of `name` (results/curve/NAME.json, .csv, .html) to `exporter` with `cfg`'s `export.<dest>`
    section; returns the receipt, or None when the destination draws no curves."""
    from nemotron_eval.core.secrets import api_key_names

    files = layout.curve_files(name, root)
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise UserError(f"{missing[0]}: no training curve of {name!r} (`nemotron watch {name}` draws it, or "
                        f"`snakemake --profile profiles/local {layout.CURVE.format(name=name, ext='html')}`)")
    try:
        curve = read_json(files["json"])
    except (OSError, ValueError) as e:
        raise UserError(f"{files['json']}: cannot read the training curve ({e})") from None
    if not isinstance(curve, dict) or curve.get("name") != name or not isinstance(curve.get("tasks"), list):
        raise UserError(f"{files['json']}: not the training curve of {name!r} (report.curve's curve.json)")
    receipt = root / exporter.curve_receipt(name)
    job = CurveJob(curve=curve, files=files, receipt=receipt, section=(cfg.get("export") or {}).get(exporter.name),
                   secret_names=api_key_names(cfg))
    return receipt if exporter.export_curve(job) is not None else None
