"""results/curve/{name}.html: the training curve as one self-contained page (inline CSS and SVG, no script, no
network), drawn from curve.json's dict (`report.curve`) with the report's charts (`charts.curve_chart`)."""

from __future__ import annotations

from typing import Any

from markupsafe import Markup

from nemotron_eval.report import charts
from nemotron_eval.report.render import templates


def to_html(curve: dict[str, Any]) -> str:
    env = templates()
    labels = [v["version"] for v in curve["versions"]]
    charts_by_task = {}
    for s in curve["tasks"]:
        best = (s["best"] or {}).get("version")
        for m in s["metrics"]:
            regressions = [p["b"] for p in m["steps"] if p["regression"]]
            charts_by_task[(s["task"], m["metric"])] = Markup(charts.curve_chart(
                f"{s['task']} {m['metric']}", labels, m["points"], best=best if m["metric"] == s["primary"] else None,
                regressions=regressions))
    overall = curve["overall"]
    overall_svg = Markup(charts.curve_chart("mean over tasks", labels, overall["points"],
                                            best=(overall["best"] or {}).get("version"))) if overall else None
    return env.get_template("curve.html.j2").render(curve=curve, charts=charts_by_task, overall_svg=overall_svg)
