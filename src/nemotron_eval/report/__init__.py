"""A comparison report across checkpoints (pretrain -> sft -> rl): did this one get better, and is it real?

    from nemotron_eval.report import compare
    compare(results, items, out_dir)          # report.json, report.csv, report.html in out_dir

`results`: result files (`results/{model}/{task}.json`), every model's every task, in model order (the first
model is the baseline); `items[i]`: the items file of `results[i]` (`nemotron_eval.evaluate.items.extract_items`).

report.json (schema_version 1):
    settings   seed, bootstrap_draws, confidence, alpha, and the methods used
    models     [{key, spec, name, version, digest, path, registry, qualified_name}] in order; baseline: models[0].key
    tasks      [{task, harness_task, models, same_samples (true/false/null = unknown), not_same_reasons,
                 checks: [{check, what, same, blocking, values: {model: value}}],
                 runs: [{model, harness_task, n_samples, limit_samples, metrics, provenance, files{result, items, log, log_exists}}],
                 metrics: [{metric,
                            scores: [{model, value, stderr, n, ci_low, ci_high}],
                            pairs: [{a, b, vs_baseline, same_samples, not_same_reasons, a_score, b_score, n_common,
                                     a_value, b_value, delta (b - a on the common items), ci_low, ci_high,
                                     gains (b right, a wrong), losses, answers_changed (items where the picked answer differs; null
                                     when a pick could not be reproduced), p_value, test, verdict}]}]}]
    inputs     [{path, sha256}] of every file read
`verdict`: better | worse | no significant difference | not comparable | no item data | no common items.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nemotron_eval.report.compare import DEFAULT_DRAWS, DEFAULT_SEED, VERDICTS, build_report, model_key
from nemotron_eval.report.render import CSV_COLUMNS, FILES, table_rows, to_csv, to_html, write_report

__all__ = [
    "CSV_COLUMNS", "DEFAULT_DRAWS", "DEFAULT_SEED", "FILES", "VERDICTS", "build_report", "compare", "model_key",
    "table_rows", "to_csv", "to_html", "write_report",
]  # fmt: skip


def compare(
    results: Sequence[Path | str],
    items: Sequence[Path | str | None] | None,
    out_dir: Path | str,
    *,
    seed: int = DEFAULT_SEED,
    draws: int = DEFAULT_DRAWS,
    workdir: Path | str | None = None,
) -> dict[str, Any]:
    """Build the report and write report.json, report.csv and report.html into `out_dir`; return the report."""
    report = build_report(results, items, seed=seed, draws=draws, workdir=workdir)
    write_report(report, out_dir, workdir=workdir)
    return report
