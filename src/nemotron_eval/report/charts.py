"""Inline SVG charts for report.html, drawn here in Python: no script, no network, the same bytes every time.

Each chart is an <svg> string with classes the browser test counts: `chart-scores` holds one `rect.bar` per
(metric, model) with a score and one `line.errorbar` per bar with an interval; `chart-deltas` holds one
`circle.delta` per (metric, pair) with a paired difference and one `line.delta-ci` per interval. Every mark
carries a <title> with the exact numbers (the browser shows it on hover).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
VERDICT_COLOURS = {
    "better": "#009E73",
    "worse": "#D55E00",
    "no significant difference": "#555555",
    "not comparable": "#999999",
    "no item data": "#999999",
    "no common items": "#999999",
}
FONT = 'font-family="DejaVu Sans, Arial, sans-serif"'


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _f(x: float) -> str:
    return f"{x:.2f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _text_width(text: str, font_px: float = 11) -> float:
    """A generous estimate of a label's rendered width (DejaVu Sans averages about 0.6 em a character)."""
    return len(text) * font_px * 0.62


def _score_axis(left: float, width: float, y: Any) -> list[str]:
    """Grid lines and labels of a 0-to-1 score axis; `y` maps a score to its height."""
    parts = []
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line class="grid" x1="{left}" x2="{width - 8}" y1="{_f(y(tick))}" y2="{_f(y(tick))}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{_f(y(tick) + 4)}" text-anchor="end" fill="#444">{tick:.2f}</text>')
    return parts


def scores_chart(task: str, metrics: Sequence[dict[str, Any]], model_index: dict[str, int], names: dict[str, str]) -> str:
    """Grouped bars: one group per metric, one bar per model, whiskers for the 95% interval; y from 0 to 1."""
    n_models = max(1, max((len(m["scores"]) for m in metrics), default=1))
    bar_w, gap, group_gap = 28, 6, 36
    group_w = n_models * bar_w + (n_models - 1) * gap
    left, top, plot_h, bottom = 44, 14, 180, 40
    width = left + len(metrics) * group_w + (len(metrics) + 1) * group_gap
    height = top + plot_h + bottom

    def y(v: float) -> float:
        return top + plot_h * (1 - v)

    parts = [f'<svg class="chart chart-scores" data-task="{escape(task)}" role="img" '
             f'aria-label="{escape(task)} scores with 95% intervals" xmlns="http://www.w3.org/2000/svg" '
             f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" {FONT} font-size="11">']  # fmt: skip
    parts += _score_axis(left, width, y)
    for g, metric in enumerate(metrics):
        x0 = left + group_gap + g * (group_w + group_gap)
        for k, score in enumerate(metric["scores"]):
            value = score["value"]
            if value is None:
                continue
            x = x0 + k * (bar_w + gap)
            c = colour(model_index[score["model"]])
            tip = (f"{names[score['model']]} {metric['metric']}: {_pct(value)} "
                   f"(95% CI {_pct(score['ci_low'])} to {_pct(score['ci_high'])}, n={score['n']})")  # fmt: skip
            parts.append(f'<rect class="bar" data-model="{escape(score["model"])}" data-metric="{escape(metric["metric"])}" '
                         f'x="{x}" y="{_f(y(value))}" width="{bar_w}" height="{_f(max(plot_h * value, 0.5))}" fill="{c}">'
                         f'<title>{escape(tip)}</title></rect>')  # fmt: skip
            if score["ci_low"] is not None and score["ci_high"] is not None:
                cx = x + bar_w / 2
                lo, hi = y(score["ci_low"]), y(score["ci_high"])
                parts.append(f'<line class="errorbar" x1="{_f(cx)}" x2="{_f(cx)}" y1="{_f(lo)}" y2="{_f(hi)}" stroke="#222" stroke-width="1.5">'
                             f'<title>{escape(tip)}</title></line>')  # fmt: skip
                for yy in (lo, hi):
                    parts.append(f'<line class="whisker" x1="{_f(cx - 6)}" x2="{_f(cx + 6)}" y1="{_f(yy)}" y2="{_f(yy)}" stroke="#222" stroke-width="1.5"/>')
        label_x = x0 + group_w / 2
        parts.append(f'<text x="{_f(label_x)}" y="{top + plot_h + 16}" text-anchor="middle" fill="#222">{escape(metric["metric"])}</text>')
    parts.append(f'<line x1="{left}" x2="{width - 8}" y1="{_f(y(0))}" y2="{_f(y(0))}" stroke="#888"/>')
    parts.append("</svg>")
    return "".join(parts)


def deltas_chart(task: str, metrics: Sequence[dict[str, Any]], model_index: dict[str, int], names: dict[str, str]) -> str:
    """A forest plot: one row per (metric, pair), the paired difference b - a as a dot with its 95% interval,
    a vertical line at zero. Colour: the verdict. Rows without a paired difference say why instead."""
    rows = [(m["metric"], p) for m in metrics for p in m["pairs"]]
    span = 0.1
    for _, p in rows:
        for v in (p.get("delta"), p.get("ci_low"), p.get("ci_high")):
            if v is not None:
                span = max(span, abs(v))
    span = min(1.0, round(span * 1.15 + 0.005, 2))
    labels = [f"{metric}: {names[p['b']]} vs {names[p['a']]}" for metric, p in rows]
    notes = [f"{p['delta']:+.3f} {p['verdict']}" if p.get("delta") is not None and p.get("n_common") else p["verdict"] for _, p in rows]
    label_w = round(max([140.0] + [_text_width(t) + 16 for t in labels]))
    right = round(max([120.0] + [_text_width(t) + 16 for t in notes]))
    plot_w, row_h, top, bottom = 320, 24, 10, 34
    width = label_w + plot_w + right
    height = top + max(1, len(rows)) * row_h + bottom

    def x(v: float) -> float:
        return label_w + plot_w * (v + span) / (2 * span)

    parts = [f'<svg class="chart chart-deltas" data-task="{escape(task)}" role="img" '
             f'aria-label="{escape(task)} paired differences with 95% intervals" xmlns="http://www.w3.org/2000/svg" '
             f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" {FONT} font-size="11">']  # fmt: skip
    axis_y = top + max(1, len(rows)) * row_h
    for tick in (-span, -span / 2, 0.0, span / 2, span):
        stroke, dash = ("#666", ' stroke-dasharray="4 3"') if tick == 0 else ("#e4e4e4", "")
        parts.append(f'<line class="grid" x1="{_f(x(tick))}" x2="{_f(x(tick))}" y1="{top}" y2="{axis_y}" stroke="{stroke}"{dash}/>')
        parts.append(f'<text x="{_f(x(tick))}" y="{axis_y + 14}" text-anchor="middle" fill="#444">{tick:+.2f}</text>')
    parts.append(f'<text x="{_f(x(0))}" y="{axis_y + 28}" text-anchor="middle" fill="#444">difference (later - earlier)</text>')
    for r, (metric, p) in enumerate(rows):
        cy = top + r * row_h + row_h / 2
        parts.append(f'<text x="{label_w - 8}" y="{_f(cy + 4)}" text-anchor="end" fill="#222">{escape(labels[r])}</text>')
        c = VERDICT_COLOURS.get(p["verdict"], "#555555")
        if p.get("ci_low") is not None and p.get("ci_high") is not None:
            parts.append(f'<line class="delta-ci" x1="{_f(x(p["ci_low"]))}" x2="{_f(x(p["ci_high"]))}" y1="{_f(cy)}" y2="{_f(cy)}" '
                         f'stroke="{c}" stroke-width="2.5"/>')  # fmt: skip
        if p.get("delta") is not None and p.get("n_common"):
            tip = (f"{names[p['b']]} - {names[p['a']]} on {metric}: {p['delta']:+.3f} (95% CI {_pct(p['ci_low'])} to {_pct(p['ci_high'])}), "
                   f"{p['n_common']} common items, {p['gains']} gained, {p['losses']} lost, p={_p(p['p_value'])}: {p['verdict']}")  # fmt: skip
            parts.append(f'<circle class="delta" data-pair="{escape(p["b"])} vs {escape(p["a"])}" data-metric="{escape(metric)}" '
                         f'cx="{_f(x(p["delta"]))}" cy="{_f(cy)}" r="5" fill="{c}"><title>{escape(tip)}</title></circle>')  # fmt: skip
        parts.append(f'<text x="{label_w + plot_w + 8}" y="{_f(cy + 4)}" fill="{c}">{escape(notes[r])}</text>')
    if not rows:
        parts.append(f'<text x="{label_w}" y="{top + 16}" fill="#444">one model only: nothing to compare</text>')
    parts.append("</svg>")
    return "".join(parts)


def _p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def curve_chart(chart_id: str, labels: Sequence[str], points: Sequence[dict[str, Any]], *, best: str | None = None,
                regressions: Sequence[str] = ()) -> str:
    """A training curve: one `circle.point` per version in order (x) at its score (y, 0 to 1) joined by a line,
    a `line.errorbar` for each 95% interval; the best version ringed (`circle.best`), each version a regression
    reached marked in the verdict colour of `worse` (`circle.regression`). `points`: {version, value, ci_low,
    ci_high}, in the order of `labels`."""
    step = max(48, min(90, 900 // max(1, len(labels))))
    left, top, plot_h, bottom = 44, 14, 180, 56
    width = left + step * max(1, len(labels)) + 16
    height = top + plot_h + bottom

    def y(v: float) -> float:
        return top + plot_h * (1 - v)

    def x(i: int) -> float:
        return left + step * (i + 0.5)

    parts = [f'<svg class="chart chart-curve" data-chart="{escape(chart_id)}" role="img" '
             f'aria-label="{escape(chart_id)}: score of each version with 95% intervals" xmlns="http://www.w3.org/2000/svg" '
             f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" {FONT} font-size="11">']  # fmt: skip
    parts += _score_axis(left, width, y)
    at = {p["version"]: p for p in points if p.get("value") is not None}
    xy = [(x(i), y(at[v]["value"])) for i, v in enumerate(labels) if v in at]
    if len(xy) > 1:
        path = " ".join(f"{_f(a)},{_f(b)}" for a, b in xy)
        parts.append(f'<polyline class="curve" points="{path}" fill="none" stroke="{colour(0)}" stroke-width="2"/>')
    for i, version in enumerate(labels):
        parts.append(f'<text x="{_f(x(i))}" y="{top + plot_h + 16}" text-anchor="middle" fill="#222">{escape(version)}</text>')
        p = at.get(version)
        if p is None:
            continue
        tip = f"{version}: {_pct(p['value'])} (95% CI {_pct(p.get('ci_low'))} to {_pct(p.get('ci_high'))})"
        if p.get("ci_low") is not None and p.get("ci_high") is not None:
            parts.append(f'<line class="errorbar" x1="{_f(x(i))}" x2="{_f(x(i))}" y1="{_f(y(p["ci_low"]))}" '
                         f'y2="{_f(y(p["ci_high"]))}" stroke="#222" stroke-width="1.5"><title>{escape(tip)}</title></line>')  # fmt: skip
        fill = VERDICT_COLOURS["worse"] if version in regressions else colour(0)
        kind = "point regression" if version in regressions else "point"
        parts.append(f'<circle class="{kind}" data-version="{escape(version)}" cx="{_f(x(i))}" cy="{_f(y(p["value"]))}" '
                     f'r="4.5" fill="{fill}"><title>{escape(tip)}</title></circle>')  # fmt: skip
        if version == best:
            parts.append(f'<circle class="best" cx="{_f(x(i))}" cy="{_f(y(p["value"]))}" r="9" fill="none" '
                         f'stroke="{VERDICT_COLOURS["better"]}" stroke-width="2"><title>best: {escape(tip)}</title></circle>')  # fmt: skip
    parts.append(f'<line x1="{left}" x2="{width - 8}" y1="{_f(y(0))}" y2="{_f(y(0))}" stroke="#888"/>')
    parts.append("</svg>")
    return "".join(parts)
