"""`python -m nemotron_eval.steps STEP ...`: the shell rules' entry points, one package function each.

Each step logs to its rule's `log:` file and to stderr; a UserError ends it with one line and status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nemotron_eval import workflow as wf
from nemotron_eval.errors import UserError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nemotron_eval.steps")
    sub = p.add_subparsers(dest="step", required=True)
    s = sub.add_parser("register-default", help="convert and register the embedded SmolLM2")
    s.add_argument("--folder", type=Path, required=True)
    s.add_argument("--receipt", type=Path, required=True)
    s = sub.add_parser("stage", help="stage one task's dataset")
    s.add_argument("--task", required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--mirror", default="")
    s = sub.add_parser("evaluate", help="one task against the running deployment")
    for name in ("eval", "job", "data", "endpoint", "deployment-log", "out"):
        s.add_argument(f"--{name}", type=Path, required=True)
    s.add_argument("--task", required=True)
    for s in sub.choices.values():
        s.add_argument("--log", type=Path, required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        with wf.logged(a.log):
            if a.step == "register-default":
                wf.register_default_model(a.folder, a.receipt)
            elif a.step == "stage":
                wf.stage(a.task, a.out, a.mirror)
            elif a.step == "evaluate":
                wf.evaluate(a.task, a.eval, a.job, a.data, a.endpoint, a.deployment_log, a.out)
    except UserError as e:
        print(f"nemotron: error: {e}", file=sys.stderr)
        with open(a.log, "a") as f:
            f.write(f"nemotron: error: {e}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
