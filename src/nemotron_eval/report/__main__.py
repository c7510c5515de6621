"""`python -m nemotron_eval.report --out DIR --results R1 R2 ... [--items I1 I2 ...]`: write report.json,
report.csv and report.html. `--items` pairs with `--results` by position ("-" for a run without items);
the first model among the results is the baseline. Bad input: one `nemotron: error:` line, status 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nemotron_eval.errors import exit_code
from nemotron_eval.report import DEFAULT_DRAWS, DEFAULT_SEED, compare


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nemotron_eval.report", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for report.json, report.csv, report.html")
    p.add_argument("--results", type=Path, nargs="+", required=True, help="results/{model}/{task}.json, baseline model first")
    p.add_argument("--items", nargs="+", help="one items file per result, in the same order ('-': none)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--draws", type=int, default=DEFAULT_DRAWS)
    p.add_argument("--workdir", type=Path, default=None, help="where results/ and logs/ live (default: here)")
    a = p.parse_args(argv)
    items = None if a.items is None else [None if i == "-" else Path(i) for i in a.items]

    def run() -> int:
        report = compare(a.results, items, a.out, seed=a.seed, draws=a.draws, workdir=a.workdir)
        calls = [p for t in report["tasks"] for m in t["metrics"] for p in m["pairs"] if p["verdict"] in ("better", "worse")]
        print(f"{a.out / 'report.html'}: {len(report['models'])} models, {len(report['tasks'])} tasks, "
              f"{len(calls)} significant difference(s)")
        return 0

    return exit_code(run)


if __name__ == "__main__":
    sys.exit(main())
