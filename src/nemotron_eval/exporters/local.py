"""Export one model's results as a table on disk: results/{model}/local.json (the receipt, with the table) and,
with `export.local.csv: true`, results/{model}/local.csv.

One row per task and metric: task, metric, value, stderr, n_samples, model (spec), version, digest. The same
table, for every model of a run, is what `nemotron export RUN_ID --dest local --format csv` writes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from nemotron_eval.config.validators import boolean
from nemotron_eval.exporters.base import (
    CURVE_COLUMNS, CurveJob, ExportJob, Exporter, begin_receipt, checked_section, curve_rows, register, write_receipt,
)  # fmt: skip
from nemotron_eval.core.io import csv_text, write_text_atomic

DESTINATION = "local"
COLUMNS = ["task", "metric", "value", "stderr", "n_samples", "model", "version", "digest"]


def parse_config(section: Mapping[str, Any] | None) -> dict[str, Any]:
    section = checked_section("local", section, LocalExporter.rules)
    return {"csv": bool(section.get("csv"))}


def table(rows: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """Task results -> the table's rows (COLUMNS), by task then metric as the result lists them."""
    out = []
    for row in sorted(rows, key=lambda r: r["task"]):
        model = row["model"]
        for metric, score in row["metrics"].items():
            out.append([row["task"], metric, score.get("value"), score.get("stderr"), row.get("n_samples"),
                        model.get("spec"), model.get("version"), model.get("digest")])
    return out


@register
class LocalExporter(Exporter):
    """The results as a JSON (and CSV) table next to them."""

    name = DESTINATION
    rules = {"csv": boolean}

    def check(self, section: Mapping[str, Any] | None) -> None:
        parse_config(section)

    def export_curve(self, job: CurveJob) -> dict[str, Any]:
        """A training curve's local copy is the curve's own files (results/curve/{name}.json, .csv, .html): the
        receipt names them and holds the line chart's points (base.curve_rows); nothing else is written."""
        out = {"destination": DESTINATION, "curve": job.curve["name"], "exported": True,
               "files": {ext: str(p) for ext, p in sorted(job.files.items())}, "columns": CURVE_COLUMNS,
               "rows": curve_rows(job.curve), "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        write_receipt(job.receipt, out, job.secret_names)
        return out

    def export(self, job: ExportJob) -> dict[str, Any]:
        rows, base, skipped = begin_receipt(job, DESTINATION, job.secret_names)
        if skipped is not None:
            return skipped
        cfg = parse_config(job.section)
        csv_path = job.receipt.with_suffix(".csv") if cfg["csv"] or job.options.get("csv") else None
        body = table(rows)
        if csv_path is not None:
            write_text_atomic(csv_path, csv_text(COLUMNS, body))
        out = {
            **base, "exported": True, "csv": str(csv_path) if csv_path else None, "columns": COLUMNS, "rows": body,
            "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_receipt(job.receipt, out, job.secret_names)
        return out
