"""The comparison report logged to W&B: the real wandb library offline (no W&B server here), read back from
the offline run's files and with wandb's own reader (`wandb leet inspect`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nemotron_eval.core.errors import UserError
from nemotron_eval.exporters.wandb import DELTA_COLUMNS, log_report
from nemotron_eval.report import CSV_COLUMNS, build_report, table_rows

from test_export_wandb import clean_env, leet
from test_report import inputs, make_workdir

LOG = """
import json, sys
import wandb
from nemotron_eval.exporters.wandb import log_report
report = json.load(open(sys.argv[1]))
run = wandb.init(entity="team", project="evals", name="compare", mode="offline",
                 settings=wandb.Settings(console="off", silent=True, disable_git=True, save_code=False, x_disable_stats=True))
logged = log_report(run, report)
run_dir = str(run.settings.sync_dir)
run.finish()
print(json.dumps({"logged": logged, "dir": run_dir}))
"""


def _table(run_dir: Path, key: str) -> dict[str, Any]:
    (path,) = (run_dir / "files" / "media" / "table").glob(f"{key}_*.table.json")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_log_report_offline(tmp_path: Path) -> None:
    work = make_workdir(tmp_path)
    report = build_report(*inputs(work), workdir=work)
    report_file = tmp_path / "report.json"
    report_file.write_text(json.dumps(report))
    proc = subprocess.run([sys.executable, "-c", LOG, str(report_file)], cwd=tmp_path, env=clean_env(tmp_path, WANDB_MODE="offline"),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    run_dir = Path(out["dir"])
    rows = table_rows(report)
    pairs = [p for t in report["tasks"] for m in t["metrics"] for p in m["pairs"]]
    assert out["logged"]["rows"] == len(rows) and out["logged"]["deltas"] == len(pairs) > 0

    summary = json.loads(leet(str(run_dir), "--summary", "--json"))["summary"]
    assert summary["comparison/table"]["_type"] == "table-file" and summary["comparison/table"]["nrows"] == len(rows)
    assert summary["comparison/deltas"]["nrows"] == len(pairs)
    assert any(k.startswith("comparison/delta_chart") for k in summary), sorted(summary)

    table = _table(run_dir, "comparison/table")
    assert table["columns"] == list(CSV_COLUMNS) and table["data"] == json.loads(json.dumps(rows))
    deltas = _table(run_dir, "comparison/deltas")
    assert deltas["columns"] == DELTA_COLUMNS
    for row, p in zip(deltas["data"], pairs):
        assert (row[3], row[4], row[5], row[6], row[7], row[12]) == (p["b"], p["a"], p["delta"], p["ci_low"], p["ci_high"], p["verdict"])


def test_log_report_refuses_what_is_not_a_report() -> None:
    with pytest.raises(UserError, match="not a comparison report"):
        log_report(object(), {"models": []}, wandb=object())
