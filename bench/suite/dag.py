"""P4 and P5: the DAG at scale (200 checkpoints x 5 tasks) and what reruns after a change.

The checkpoints are tiny folders (a config.json, a tokenizer.json and a few bytes of "weights", each with its own
content, so each has its own digest) registered with `nemotron artifacts add` in the workspace's local registry:
the DAG, the registry, the compile chain and the checks the plan makes are the real ones; no model is served.

* P4 dry run: `snakemake -n` of every model's results/{model}/{task}.json (1000 targets at 200 checkpoints, against
  the same at 50: growth), through the real profile, data mirror and registry.
* P4 no-op rerun: after building every model's compile chain and task fingerprints for real
  (build/{model}/tasks/{task}.json, what each evaluation reruns through, and build/{model}/eval.yaml), running the
  same targets again must find nothing to do. The results themselves would need 1000 real evaluations (hours here):
  the no-op is timed over the fingerprints, one per (checkpoint, task), 1000 of them, plus the 200 eval.yaml.
* P4 preview: build/{model}/eval.yaml from scratch for one model.
* P5 on the same workspace: move one model's alias to a new version (only that model's jobs may rerun); change one
  task's setting in the config (only that task's fingerprints, i.e. its evaluations, may rerun). The pipeline part
  checks the same task change against real results (`pipeline.rerun_after_task_change`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from nemotron_eval.pipeline.plan_cache import CACHE_DIR, COMPOSED_DIR

from .core import BIN, Progress, Row, Timed, copy_workflow, jobs_in_dry_run, snakemake, timed

CHANGED_LIMIT = 7  # the changed task's own limit_samples (the config sets 10, MMLU 2)


def task_names(work: Path) -> list[str]:
    """The short task names of the local config, in its order (the plan's own table resolves them)."""
    from nemotron_eval.data.tasks import resolve

    cfg = yaml.safe_load((work / "configs" / "local.yaml").read_text())
    return [resolve(entry["name"]).short for entry in cfg["evaluation"]["tasks"]]


@contextmanager
def task_setting_changed(work: Path, task: str) -> Iterator[None]:
    """While inside: the workflow copy's configs/local.yaml gives `task` its own limit_samples (CHANGED_LIMIT), as a
    user would edit it; the file's text is put back afterwards."""
    from nemotron_eval.data.tasks import resolve

    path = work / "configs" / "local.yaml"
    text = path.read_text()
    cfg = yaml.safe_load(text)
    entry = next(e for e in cfg["evaluation"]["tasks"] if resolve(e["name"]).short == task)
    entry.setdefault("nemo_evaluator_config", {}).setdefault("config", {}).setdefault("params", {})
    entry["nemo_evaluator_config"]["config"]["params"]["limit_samples"] = CHANGED_LIMIT
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    try:
        yield
    finally:
        path.write_text(text)


@dataclass
class Workspace:
    """A workflow copy with `n` registered tiny checkpoints."""

    work: Path
    models: list[str]
    tasks: list[str]
    mirror: Path
    built: int = 0  # models whose fingerprints are built

    @property
    def extra_env(self) -> dict[str, str]:
        return {"NEMOTRON_DATA_MIRROR": str(self.mirror)}

    def results(self, n: int) -> list[str]:
        return [f"results/{m}/{t}.json" for m in self.models[:n] for t in self.tasks]

    def fingerprints(self, n: int) -> list[str]:
        """Each (model, task)'s fingerprint and each model's eval.yaml: what an evaluation's rerun check reads."""
        return ([f"build/{m}/tasks/{t}.json" for m in self.models[:n] for t in self.tasks]
                + [f"build/{m}/eval.yaml" for m in self.models[:n]])

    def smk(self, *args: str, log: str) -> Timed:
        return snakemake(self.work, *args, log=self.work.parent / "logs" / f"{log}.log", extra_env=self.extra_env)


def unparse(model: str) -> str:
    """The artifact spec of a {model} wildcard (c000_latest -> c000:latest)."""
    name, _, alias = model.rpartition("_")
    return f"{name}:{alias}"


def first_output(cmd: list[str], cwd: Path, extra_env: dict[str, str]) -> tuple[float, str]:
    """Seconds from the start of `cmd` until the last line it printed on stdout arrived, and that output (its stderr
    is dropped: `nemotron eval -d` prints eval.yaml in one write, then runs Snakemake's dry run onto stderr)."""
    import os
    import subprocess
    import time

    started = time.monotonic()
    with subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **extra_env, "NEMO_EVALUATOR_TELEMETRY_LEVEL": "0"},
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        assert proc.stdout is not None
        lines, last = [], started
        for line in proc.stdout:
            lines.append(line)
            last = time.monotonic()
        if proc.wait() != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}")
    return last - started, "".join(lines)


def tiny_checkpoint(folder: Path, content: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "note": content}))
    (folder / "tokenizer.json").write_text("{}")
    (folder / "model.safetensors").write_text(content)
    return folder


def register(work: Path, name: str, folder: Path) -> str:
    return timed([str(BIN / "nemotron"), "artifacts", "add", name, str(folder)], work).check(
        f"nemotron artifacts add {name}").output.strip().splitlines()[-1]


def make_workspace(parent: Path, n: int, mirror: Path, progress: Progress) -> Workspace:
    with progress.step(f"DAG workspace: {n} checkpoints registered"):
        work = copy_workflow(parent)
        models = []
        for i in range(n):
            name = f"c{i:03d}"
            register(work, name, tiny_checkpoint(parent / "ckpts" / name, f"tiny checkpoint {i}"))
            models.append(f"{name}_latest")
    return Workspace(work, models, task_names(work), mirror)


def build(ws: Workspace, n: int, progress: Progress) -> float:
    """Build every model's compile chain and task fingerprints for real (the state a no-op rerun starts from)."""
    with progress.step(f"P4 build fingerprints, {n} checkpoints"):
        built = ws.smk(*ws.fingerprints(n), log="build").check("building the fingerprints")
    ws.built = n
    return built.seconds


def p4(ws: Workspace, sizes: tuple[int, int], progress: Progress) -> list[Row]:
    small, large = sizes
    rows: list[Row] = []
    model = ws.models[0]
    # the front door first: it writes nothing, so the Snakemake preview after it starts from scratch too
    with progress.step("P4 compiled-config preview, nemotron eval -d"):
        printed_s, printed = first_output(
            [str(BIN / "nemotron"), "eval", "-d", f"run.model={unparse(model)}"], ws.work, ws.extra_env)
    with progress.step("P4 compiled-config preview"):
        preview = ws.smk(f"build/{model}/eval.yaml", log="preview").check("the eval.yaml preview")
    written = (ws.work / f"build/{model}/eval.yaml").read_text()
    if printed != written:
        raise RuntimeError(f"nemotron eval -d printed another eval.yaml than Snakemake wrote for {model}")
    rows.append(Row("P4", "preview_s", "compiled-config preview: build/{model}/eval.yaml from scratch (one model)",
                    ours=preview.seconds, unit="s", ours_is="snakemake wall, Python start included", op="<=", goal=2.0))
    rows.append(Row("P4", "preview_front_s", "compiled-config preview through the recipe's front door: "
                    "`nemotron eval -d` until the compiled eval.yaml is printed (one model, nothing kept)",
                    ours=printed_s, unit="s", op="<=", goal=2.0,
                    ours_is="wall until eval.yaml is on stdout, Python start included (the same bytes Snakemake "
                    "writes; the dry run's job list follows on stderr)"))

    # a dry run reads the plan cache and writes nothing: cold before the build (which keeps every model's plan),
    # warm after it
    dry: dict[str, dict[int, float]] = {"cold": {}, "warm": {}}

    def dry_runs(state: str) -> None:
        for n in (small, large):
            with progress.step(f"P4 dry run, {n} checkpoints, plan cache {state}"):
                run = ws.smk("-n", *ws.results(n), log=f"dry-{n}-{state}").check(
                    f"snakemake -n of {n * len(ws.tasks)} targets")
            evaluations = sum(1 for j in jobs_in_dry_run(run.output) if j["rule"] == "evaluate_task")
            if evaluations != n * len(ws.tasks):
                raise RuntimeError(f"dry run of {n} checkpoints listed {evaluations} evaluate_task jobs, "
                                   f"not {n * len(ws.tasks)}")
            dry[state][n] = run.seconds

    for kept in (CACHE_DIR, COMPOSED_DIR):
        shutil.rmtree(ws.work / kept, ignore_errors=True)
    dry_runs("cold")
    build_s = build(ws, large, progress)
    dry_runs("warm")
    targets = large * len(ws.tasks)
    rows.append(Row("P4", "dry_run_s", f"snakemake -n, {large} checkpoints x {len(ws.tasks)} tasks ({targets} targets)",
                    ours=dry["warm"][large], unit="s", op="<=", goal=5.0,
                    ours_is="snakemake wall, Python start included, every model's plan kept by an earlier run",
                    details={"targets": targets, "evaluate_task_jobs": targets}))
    rows.append(Row("P4", "dry_run_cold_s", f"snakemake -n, {targets} targets, no plan kept (each model compiled)",
                    ours=dry["cold"][large], reference=dry["warm"][large], unit="s", ours_is="plan cache empty",
                    reference_is="every plan kept (the same targets after the build)"))
    rows.append(Row("P4", "dry_run_growth", f"dry run growth, {small} -> {large} checkpoints",
                    ours=dry["warm"][large], reference=dry["warm"][small], unit="s",
                    ours_is=f"{large * len(ws.tasks)} targets", reference_is=f"{small * len(ws.tasks)} targets",
                    op="<=", goal=large / small, note=f"linear would be {large / small:g}"))

    noop: dict[int, float] = {}
    for n in (small, large):
        with progress.step(f"P4 no-op rerun, {n} checkpoints"):
            run = ws.smk(*ws.fingerprints(n), log=f"noop-{n}").check("the no-op rerun")
        if "Nothing to be done" not in run.output:
            raise RuntimeError(f"the rerun of {n} checkpoints' fingerprints was not a no-op: "
                               f"{[j['rule'] for j in jobs_in_dry_run(run.output)][:10]}")
        noop[n] = run.seconds
    rows.append(Row("P4", "noop_s", f"no-op rerun, {large} checkpoints x {len(ws.tasks)} tasks "
                    f"({targets} fingerprints + {large} eval.yaml)",
                    ours=noop[large], unit="s", ours_is="snakemake wall over build/{model}/tasks/{task}.json and build/{model}/eval.yaml",
                    op="<=", goal=5.0, note="targets: the task fingerprints each evaluation reruns through "
                    "(results would need 1000 real evaluations)",
                    details={"build_all_s": round(build_s, 2)}))
    rows.append(Row("P4", "noop_growth", f"no-op rerun growth, {small} -> {large} checkpoints",
                    ours=noop[large], reference=noop[small], unit="s", ours_is=f"{large * len(ws.tasks)} targets",
                    reference_is=f"{small * len(ws.tasks)} targets", op="<=", goal=large / small,
                    note=f"linear would be {large / small:g}"))
    return rows


def rerun_rows(key: str, what: str, jobs: list[dict[str, str]], expected: set[tuple[str, str]],
                wrong: list[dict[str, str]], details: dict[str, object]) -> list[Row]:
    found = {(j["rule"], j.get("model", ""), j.get("task", "")) for j in jobs}
    hit = {e for e in expected if any(f[0] == e[0] and e[1] in f[1:] for f in found)}
    listing = sorted(f"{r}({', '.join(x for x in (m, t) if x)})" for r, m, t in found)
    details = {**details, "jobs": listing, "unexpected": sorted({f"{j['rule']}({j.get('model', '')}, {j.get('task', '')})"
                                                                  for j in wrong})}
    return [
        Row("P5", f"{key}_expected", f"{what}: jobs that must rerun and do", ours=len(hit), reference=len(expected),
            unit="jobs", ours_is="listed by snakemake -n", reference_is=", ".join(sorted(f"{r}({x})" for r, x in expected)),
            op="==", goal=1.0, details=details),
        Row("P5", f"{key}_unexpected", f"{what}: other jobs that rerun", ours=len(wrong), unit="jobs",
            ours_is="jobs of other models/tasks listed by snakemake -n", op="==", goal=0.0),
    ]


def p5(ws: Workspace, progress: Progress) -> list[Row]:
    """Alias move and one task's changed setting, on the workspace's built fingerprints (after P4, or built here)."""
    if ws.built == 0:
        build(ws, len(ws.models), progress)
    n = ws.built
    moved = ws.models[min(7, n - 1)]
    name = moved.rsplit("_", 1)[0]
    with progress.step("P5 alias moved"):
        version = register(ws.work, name, tiny_checkpoint(ws.work.parent / "ckpts" / f"{name}-next", "a new version"))
        run = ws.smk("-n", *ws.fingerprints(n), log="p5-alias").check("the dry run after the alias move")
        jobs = jobs_in_dry_run(run.output)
        ws.smk(*ws.fingerprints(n), log="p5-alias-build").check("building after the alias move")
    wrong = [j for j in jobs if j.get("model") != moved]
    expected = {("resolve_artifacts", moved), ("compile_eval", moved)} | {("task_fingerprint", t) for t in ws.tasks}
    rows = rerun_rows("alias_move", f"{name}:latest moved to {version}", jobs, expected, wrong,
                      {"models": n, "moved": moved})

    changed = ws.tasks[-1]
    with progress.step("P5 one task's setting changed"), task_setting_changed(ws.work, changed):
        run = ws.smk("-n", *ws.fingerprints(n), log="p5-task").check("the dry run after the task change")
    jobs = jobs_in_dry_run(run.output)
    evaluations = [j for j in jobs if j["rule"] == "task_fingerprint"]
    wrong = [j for j in evaluations if j.get("task") != changed]
    expected = {("task_fingerprint", f"{m}") for m in ws.models[:n]}
    rows += rerun_rows("task_change_dag", f"{changed}'s limit_samples changed ({n} checkpoints, fingerprints)",
                       evaluations, expected, wrong,
                       {"models": n, "changed_task": changed, "all_jobs": len(jobs)})
    return rows
