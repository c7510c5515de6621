"""Write a built report as report.json, report.csv (the same numbers, one row per score or pair) and
report.html (one self-contained page: inline CSS and SVG, no script, no network; opens offline from a cluster
file system and from an archive).

The page's links to each run's log and result file are relative to the folder the report is written to, so
they keep working when the working directory (results/, logs/, report) is copied or mounted elsewhere.
The same report gives the same bytes in all three files: no time of writing, no absolute paths of this run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from markupsafe import Markup

from nemotron_eval.core.io import csv_text, write_text_atomic
from nemotron_eval.report import charts

FILES = ("report.json", "report.csv", "report.html")
CSV_COLUMNS = (
    "task", "metric", "row", "model", "baseline", "value", "ci_low", "ci_high", "stderr", "n",
    "n_common", "a_value", "b_value", "gains", "losses", "answers_changed", "p_value", "test", "verdict",
    "same_samples",
)  # fmt: skip


def table_rows(report: Mapping[str, Any]) -> list[list[Any]]:
    """The report as rows of `CSV_COLUMNS`: one per model score (row=score) and one per pair (row=pair,
    model=b, baseline=a, value=b-a on the common items). report.csv and the W&B table are these rows."""
    rows: list[list[Any]] = []
    for task in report["tasks"]:
        for metric in task["metrics"]:
            for s in metric["scores"]:
                rows.append([
                    task["task"], metric["metric"], "score", s["model"], None, s["value"], s["ci_low"], s["ci_high"],
                    s["stderr"], s["n"], None, None, None, None, None, None, None, None, None, task["same_samples"],
                ])  # fmt: skip
            for p in metric["pairs"]:
                rows.append([
                    task["task"], metric["metric"], "pair", p["b"], p["a"], p["delta"], p["ci_low"], p["ci_high"],
                    None, None, p["n_common"], p["a_value"], p["b_value"], p["gains"], p["losses"], p["answers_changed"],
                    p["p_value"], p["test"], p["verdict"], p["same_samples"],
                ])  # fmt: skip
    return rows


def to_csv(report: Mapping[str, Any]) -> str:
    """`table_rows` as CSV; floats written in full (repr), as in report.json; names guarded against formulas."""
    return csv_text(list(CSV_COLUMNS), table_rows(report))


def _href(path: str | None, workdir: Path, out_dir: Path) -> str | None:
    if not path:
        return None
    target = Path(path) if os.path.isabs(path) else workdir / path
    return quote(Path(os.path.relpath(target, out_dir)).as_posix())


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _signed(value: Any) -> str:
    return "–" if value is None else f"{value:+.3f}"


def _pvalue(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


def _value(value: Any) -> str:
    """A check's value as shown: yes/no for booleans, a dash for nothing."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _short(value: Any, n: int = 12) -> str:
    text = "" if value is None else str(value)
    return text.split(":")[-1][:n] if text else "–"


def templates() -> Any:
    """The Jinja environment of the report's pages (templates/): escaped, strict, with the number filters."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=PackageLoader("nemotron_eval.report", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(fmt=_fmt, signed=_signed, pvalue=_pvalue, short=_short, value=_value)
    return env


def to_html(report: Mapping[str, Any], *, workdir: Path, out_dir: Path) -> str:
    env = templates()
    model_index = {m["key"]: i for i, m in enumerate(report["models"])}
    names = {m["key"]: str(m["spec"]) for m in report["models"]}
    tasks = []
    for task in report["tasks"]:
        links = {
            r["model"]: {k: _href(r["files"].get(k), workdir, out_dir) for k in ("result", "items", "log")}
            for r in task["runs"]
        }
        tasks.append({
            **task,
            "scores_svg": Markup(charts.scores_chart(task["task"], task["metrics"], model_index, names)),
            "deltas_svg": Markup(charts.deltas_chart(task["task"], task["metrics"], model_index, names)),
            "links": links,
        })  # fmt: skip
    models = [{**m, "colour": charts.colour(i)} for i, m in enumerate(report["models"])]
    return env.get_template("report.html.j2").render(
        report=report, tasks=tasks, models=models, names=names, verdict_colours=charts.VERDICT_COLOURS,
        n_pairs=sum(len(m["pairs"]) for t in report["tasks"] for m in t["metrics"]),
    )  # fmt: skip


def write_report(report: Mapping[str, Any], out_dir: Path | str, *, workdir: Path | str | None = None) -> dict[str, Path]:
    """Write report.json, report.csv and report.html into `out_dir` (each atomically); return their paths.

    `workdir` (default: the current directory) is the folder the report's file paths are relative to."""
    out_dir = Path(os.path.abspath(out_dir))
    root = Path(os.path.abspath(workdir or os.getcwd()))
    paths = {name: out_dir / name for name in FILES}
    write_text_atomic(paths["report.json"], json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(paths["report.csv"], to_csv(report))
    write_text_atomic(paths["report.html"], to_html(report, workdir=root, out_dir=out_dir))
    return paths
