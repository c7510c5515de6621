"""The bench's outputs: bench/results/<date>.json (every row with its details), <date>.md (a short table) and the
same table on stdout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nemotron_eval.core.io import write_json_atomic, write_text_atomic

from .core import Row

SCHEMA_VERSION = 1


def number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        text = f"{value:.3g}"
    elif float(value).is_integer():
        text = f"{int(value)}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    else:
        text = f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return f"{text} {unit}".rstrip()


def cells(row: Row) -> list[str]:
    if row.not_measured:
        return [f"{row.part} {row.measure}", number(row.ours, row.unit), "not measured", "-", row.target or "-",
                f"- ({row.not_measured.splitlines()[0][:160]})"]
    met = {True: "yes", False: "NO", None: "-"}[row.met]
    return [f"{row.part} {row.measure}", number(row.ours, row.unit), number(row.reference, row.unit),
            "-" if row.ratio is None else f"{row.ratio:.3g}", row.target or "-", met]


HEADER = ["measure", "ours", "reference", "ratio", "target", "met?"]


def markdown(data: dict[str, Any], rows: list[Row]) -> str:
    m = data["machine"]
    lines = [
        f"# Bench {data['date']}{' (quick)' if data['quick'] else ''}",
        "",
        f"Machine: {m['cores']} cores, load average at start {m['load_average_at_start']}, {m['memory_gib']} GiB; "
        f"torch {m['torch']}, snakemake {m['snakemake']}. Parts: {', '.join(data['parts'])}; "
        f"the whole bench took {data['duration_s']:.0f} s. One run; ratios are ours / reference.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|---|---:|---:|---:|---|---|",
    ]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in cells(r)) + " |" for r in rows]
    compared = [f"- {r.part} {r.key}: ours = {r.ours_is or '-'}; reference = {r.reference_is or '-'}"
                + (f" ({r.note})" if r.note else "") for r in rows if r.ours_is or r.reference_is or r.note]
    if compared:
        lines += ["", "What each number is:", "", *compared]
    missing = [f"- {r.part} {r.key}: {r.not_measured}" for r in rows if r.not_measured]
    if missing:
        lines += ["", "Not measured:", "", *missing]
    return "\n".join(lines) + "\n"


def table(rows: list[Row]) -> str:
    body = [HEADER, *[cells(r) for r in rows]]
    widths = [min(70, max(len(r[i]) for r in body)) for i in range(len(HEADER))]
    return "\n".join("  ".join(c[:70].ljust(w) for c, w in zip(r, widths)).rstrip() for r in body)


def write(out_dir: Path, data: dict[str, Any], rows: list[Row]) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{data['date']}.json", out_dir / f"{data['date']}.md"
    write_json_atomic(json_path, {"schema_version": SCHEMA_VERSION, **data, "rows": [r.as_dict() for r in rows]})
    write_text_atomic(md_path, markdown(data, rows))
    return json_path, md_path
