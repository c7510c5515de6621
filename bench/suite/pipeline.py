"""P1, P2, P3 (our side): the default 5-task run of the embedded SmolLM2, and each task alone by hand.

The run happens in a copy of the workflow, as a user runs it (`snakemake --profile profiles/local`), with the data
mirror. The model conversion and data staging run first, untimed (what a second model's run would not pay again);
the timed run is the default target: compile, one deployment, the five task jobs, the summary.

* P1: model loads per checkpoint = serve_model jobs in the run's Snakemake log x the deployment's `loads`
  (run/{model}/stats.json); the deployment log's "loaded" lines are recorded beside it.
* P2: the server's busy seconds against the run's wall, and the wall by phase from the deployment's log (before it
  serves, computing, idle and why, after it stopped: `p2_phases`, from the server's statistics); each task's harness wall in the run against the same task
  run alone by hand: `evaluate.harness.run_harness` (NeMo Evaluator's `run_eval`, the pipeline's own call) with the task's
  params from eval.yaml, against a fresh server started with eval.yaml's deployment command, one per task.
* P3: computed / requested prompt tokens of the run, and the trie floor of the same requests: the harness's samples
  files rebuilt into the request bodies it sent (tests/fixtures/prompts/extract.py, lm-eval's own client code) and
  tokenized with the checkpoint's tokenizer.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from nemotron_eval.deploy.stats import IDLE_LISTED_S

from .core import (REPO, Progress, Row, copy_workflow, free_port, jobs_in_dry_run, not_measured, snakemake,
                   snakemake_progress)
from .dag import rerun_rows, task_names, task_setting_changed

MODEL = "smollm2_latest"
QUICK_TASKS = ("openbookqa", "winogrande")
QUICK_LIMIT = 2


@dataclass
class PipelineRun:
    """A finished default run: where it is and what it measured."""

    work: Path
    mirror: Path
    tasks: list[str]
    config_args: list[str]
    wall_s: float
    started_at: dt.datetime
    snakemake_log: Path  # the run's own log (.snakemake/log/)
    prep_s: float
    stats: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def eval_yaml(self) -> Path:
        return self.work / "build" / MODEL / "eval.yaml"

    @property
    def eval_cfg(self) -> dict[str, Any]:
        return dict(yaml.safe_load(self.eval_yaml.read_text()))

    @property
    def checkpoint(self) -> Path:
        return Path(self.eval_cfg["deployment"]["checkpoint_path"])


def config_args(tasks: list[str], every: list[str], quick: bool) -> list[str]:
    """Snakemake's --config for a run of `tasks` (of the config's `every`), with tiny limits when `quick`."""
    args = [] if tasks == every else [f"tasks=[{','.join(tasks)}]"]
    if quick:
        args.append(f'overrides=["evaluation.nemo_evaluator_config.config.params.limit_samples={QUICK_LIMIT}"]')
    return ["--config", *args, "--"] if args else []


def run_pipeline(parent: Path, mirror: Path, tasks: list[str], quick: bool, progress: Progress, *,
                 seed_models: Path | None = None) -> PipelineRun:
    """The default run of `tasks` (all of the config's unless a subset is asked for); `seed_models`: a models/
    folder whose converted smollm2 the run starts with (hard links where the file system allows)."""
    work = copy_workflow(parent)
    if seed_models is not None:
        from support.smollm2 import seed_models as seed

        seed(seed_models, work / "models")
    extra = {"NEMOTRON_DATA_MIRROR": str(mirror)}
    every = task_names(work)
    tasks = [t for t in every if t in tasks]
    args = config_args(tasks, every, quick)
    logs = parent / "logs"
    with progress.step("pipeline: model conversion and data staging (untimed)"):
        prep = snakemake(work, *args, "models/smollm2.json", *[f"data/{t}" for t in tasks], log=logs / "prep.log",
                         echo=snakemake_progress, extra_env=extra).check("the model conversion and data staging")
    with progress.step("pipeline: the default run"):
        started = dt.datetime.now(dt.timezone.utc)
        run = snakemake(work, *args, log=logs / "pipeline.log", echo=snakemake_progress,
                        extra_env=extra).check("the pipeline run")
    smk_logs = sorted((work / ".snakemake" / "log").glob("*.snakemake.log"))  # named by start time
    pr = PipelineRun(work, mirror, tasks, args, run.seconds, started, smk_logs[-1], prep.seconds)
    pr.stats = json.loads((work / "run" / MODEL / "stats.json").read_text())
    pr.summary = json.loads((work / "results" / MODEL / "summary.json").read_text())
    pr.results = {t: json.loads((work / "results" / MODEL / f"{t}.json").read_text()) for t in tasks}
    return pr


def p1(pr: PipelineRun) -> list[Row]:
    jobs = jobs_in_dry_run(pr.snakemake_log.read_text(errors="replace"))
    serve_jobs = sum(1 for j in jobs if j["rule"] == "serve_model" and j.get("model") == MODEL)
    loads = int(pr.stats["loads"])
    log = pr.work / "logs" / "serve_model" / f"{MODEL}.log"
    loaded_lines = sum(1 for line in log.read_text(errors="replace").splitlines() if " loaded " in line)
    return [Row("P1", "model_loads", f"model loads per checkpoint, {len(pr.tasks)}-task run",
                ours=serve_jobs * loads, unit="loads", ours_is="serve_model jobs in the Snakemake log x stats.json loads",
                op="==", goal=1.0,
                details={"snakemake_log": pr.snakemake_log.name, "serve_model_jobs": serve_jobs, "stats_loads": loads,
                         "deployment_log_loaded_lines": loaded_lines, "model_load_s": pr.stats.get("model_load_s")})]


def p2_busy(pr: PipelineRun) -> list[Row]:
    s = pr.stats
    return [
        Row("P2", "busy_over_wall", f"server busy / pipeline wall, {len(pr.tasks)}-task run",
            ours=s["busy_s"], reference=pr.wall_s, unit="s", ours_is="stats.json busy_s",
            reference_is="wall of `snakemake --profile profiles/local` (model converted, data staged before)",
            op=">=", goal=0.95, details={"prep_untimed_s": round(pr.prep_s, 1), "requests": s["requests"],
                                         "prompt_tokens": s["prompt_tokens"], "computed_tokens": s["computed_tokens"]}),
        Row("P2", "busy_over_deployment_wall", "server busy / deployment wall (model loaded to stopped)",
            ours=s["busy_s"], reference=s["wall_s"], unit="s", ours_is="stats.json busy_s",
            reference_is="stats.json wall_s"),
    ]


def p2_phases(pr: PipelineRun) -> list[Row]:
    """The run's wall by phase, each against the wall, no target: before the deployment was ready, after its
    statistics' last write (its stop) and, in between, what its statistics say (deploy/stats.py: busy, and the
    idle time until its first batch, in stretches of a second or more, in shorter gaps and after its last batch).
    The server accounts busy and idle time from its batches and the span from its clock: the phases add up to the
    wall only where the two agree."""
    s, idle = pr.stats, pr.stats["idle"]
    before = (dt.datetime.fromisoformat(s["ready_at"]) - pr.started_at).total_seconds()
    after = pr.wall_s - before - (s["wall_s"] - s["ready_s"])
    long_s = sum(length for _, length in idle["stretches"])
    rows = [
        ("before_serving", "before the deployment serves (Snakemake's start and first jobs, the server's start and "
                           "model load)", before, {"model_load_s": s["model_load_s"]}),
        ("computing", "the deployment computing (its batches and decoding steps)", s["busy_s"], {}),
        ("idle_first", "serving, idle until its first batch (the harnesses starting)", idle["before_first_s"], {}),
        ("idle_long", f"serving, idle stretches of {IDLE_LISTED_S:g} s or more between batches (a task's harness "
                      "starting while no other had prompts)", long_s,
         {"stretches_after_ready_s_and_length_s": idle["stretches"]}),
        ("idle_short", f"serving, idle under {IDLE_LISTED_S:g} s between batches (requests' turnarounds)",
         idle["short_s"], {}),
        ("idle_end", "after the last batch until the deployment stopped (the last harness's end, its result "
                     "written, Snakemake stopping the deployment)", idle["since_last_s"], {}),
        ("after_stop", "after the deployment stopped (Snakemake's end: the summary)", after, {}),
    ]
    return [Row("P2", f"phase_{key}", f"pipeline wall: {what}", ours=seconds, reference=pr.wall_s, unit="s",
                ours_is="run/{model}/stats.json (busy, idle, ready_at) and the run's start", reference_is="the default run's wall",
                details=details) for key, what, seconds, details in rows]


def _client_figures(pr: PipelineRun, task: str) -> dict[str, Any]:
    return dict((pr.stats.get("clients") or {}).get(task) or {})


def run_alone(pr: PipelineRun, task: str, out: Path) -> dict[str, Any]:
    """One task by hand: a fresh server from eval.yaml's deployment command, then `run_harness` as the task job
    calls it (same params, data, tokenizer); returns the harness's wall and the server's figures."""
    from nemotron_eval.deploy.process import start, stop
    from nemotron_eval.deploy.types import get_json
    from nemotron_eval.evaluate.harness import run_harness
    from nemotron_eval.data.tasks import resolve
    from nemotron_eval.pipeline.workflow import harness_environment, task_params
    from support.server_process import wait_for_endpoint

    cfg = pr.eval_cfg
    job = yaml.safe_load((pr.work / "build" / MODEL / "job.yaml").read_text())
    entry = job["run"]["tasks"][task]
    params = task_params(cfg, entry["name"], pr.eval_yaml)
    extra = dict(params.get("extra") or {})
    tokenizer = Path(str(extra.pop("tokenizer", None) or cfg["deployment"]["checkpoint_path"]))
    params = {**params, "extra": extra}
    argv = shlex.split(cfg["deployment"]["command"])
    if argv[0] == "python":
        argv[0] = sys.executable
    out.mkdir(parents=True)
    endpoint_file = out / "endpoint.json"
    argv += ["--endpoint-file", str(endpoint_file), "--stats-file", str(out / "stats.json")]
    server_log = out / "server.log"
    proc = start(argv, log_file=server_log, env={**os.environ, "NEMO_EVALUATOR_TELEMETRY_LEVEL": "0"})
    saved = dict(os.environ)
    try:
        info = wait_for_endpoint(endpoint_file, pid=proc.pid, log_file=server_log, timeout_s=300)
        os.environ["ADAPTER_PORT"] = str(free_port())  # as the task job does: the harness's proxy port
        os.environ.update(harness_environment(cfg))
        started = time.monotonic()
        run_harness(resolve(entry["name"]), pr.work / "data" / task if entry["offline"] else None,
                    endpoint_url=info["completions_url"], model_id=info["model_id"], tokenizer_dir=tokenizer,
                    params=params, output_dir=out / "harness", log=out / "harness.log")
        seconds = time.monotonic() - started
        stats = get_json(info["stats_url"])
    finally:
        os.environ.clear()
        os.environ.update(saved)
        stop(proc)
    return {"seconds": seconds, "busy_s": stats["busy_s"], "requests": stats["requests"],
            "prompt_tokens": stats["prompt_tokens"], "computed_tokens": stats["computed_tokens"]}


def p2_alone(pr: PipelineRun, parent: Path, progress: Progress, tasks: list[str]) -> list[Row]:
    """Each of `tasks` (of the run's) alone by hand, against its wall in the pipeline."""
    rows = []
    alone_total = 0.0
    for task in tasks:
        with progress.step(f"P2 {task} alone"):
            alone = run_alone(pr, task, parent / "alone" / task)
        alone_total += alone["seconds"]
        result = pr.results[task]
        finished = dt.datetime.fromisoformat(result["finished_at"])
        rows.append(Row(
            "P2", f"task_wall_{task}", f"{task}: harness wall in the pipeline / alone by hand",
            ours=result["duration_s"], reference=alone["seconds"], unit="s",
            ours_is="results/{model}/{task}.json duration_s (the task job's harness run)",
            reference_is="harness.run_harness alone against one fresh server",
            details={"pipeline_done_after_s": round((finished - pr.started_at).total_seconds(), 1),
                     "pipeline_server": _client_figures(pr, task), "alone_server": alone}))
    name = "pipeline wall / the tasks alone one after another"
    if list(tasks) != list(pr.tasks):
        rows.append(not_measured("P2", "wall_over_tasks_alone", name, f"only {', '.join(tasks)} ran alone (--quick)"))
        return rows
    rows.append(Row("P2", "wall_over_tasks_alone", name, ours=pr.wall_s, reference=alone_total, unit="s",
                    ours_is="the default run's wall", reference_is="sum of the harness walls alone (server starts not counted)"))
    return rows


def _extractor() -> ModuleType:
    """tests/fixtures/prompts/extract.py: rebuilds the request bodies the harness sent from its samples files."""
    path = REPO / "tests" / "fixtures" / "prompts" / "extract.py"
    spec = importlib.util.spec_from_file_location("prompt_extract", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sent_prompts(pr: PipelineRun) -> dict[str, list[str]]:
    """Per task, every prompt the harness sent in the run: each item's requests (all answer choices, generations
    too), rebuilt from its samples files, and NeMo Evaluator's capability probe for each request the server counted
    beyond those (it checks the endpoint once before the harness starts; the probe is in no samples file)."""
    from nemo_evaluator.api.capabilities import LOGPROBS

    extract = _extractor()
    lm = extract.client(pr.checkpoint)
    out: dict[str, list[str]] = {}
    for task in pr.tasks:
        folder = pr.work / pr.results[task]["raw"]
        prompts = []
        for path in extract.latest_samples(folder):
            for line in path.read_text().splitlines():
                prompts += [b["prompt"] for b in extract.bodies(lm, json.loads(line)["arguments"])]
        probes = int(_client_figures(pr, task).get("prompts") or 0) - len(prompts)
        out[task] = prompts + [str(LOGPROBS.payload["prompt"])] * max(0, probes)
    return out


def p3_tokens(pr: PipelineRun, progress: Progress) -> list[Row]:
    from transformers import AutoTokenizer

    from support.request_mix import trie_floor

    with progress.step("P3 trie floor of the run's prompts"):
        prompts = sent_prompts(pr)
        tokenizer = AutoTokenizer.from_pretrained(pr.checkpoint)
        ids = {t: [tokenizer(p)["input_ids"] for p in ps] for t, ps in prompts.items()}
        floor = trie_floor(x for t in ids for x in ids[t])
        requested = sum(len(x) for t in ids for x in ids[t])
    per_task = {t: {"prompts": len(ids[t]), "requested": sum(map(len, ids[t])), "floor": trie_floor(ids[t]),
                    "server_prompt_tokens": _client_figures(pr, t).get("prompt_tokens"),
                    "server_computed_tokens": _client_figures(pr, t).get("computed_tokens")} for t in ids}
    s = pr.stats
    return [
        Row("P3", "computed_over_requested", "computed / requested prompt tokens, the run",
            ours=s["computed_tokens"], reference=s["prompt_tokens"], unit="tokens", ours_is="stats.json computed_tokens",
            reference_is="stats.json prompt_tokens"),
        Row("P3", "computed_over_floor", "computed prompt tokens / trie floor of the same requests",
            ours=s["computed_tokens"], reference=floor, unit="tokens", ours_is="stats.json computed_tokens",
            reference_is="distinct token prefixes of every prompt sent (samples files, checkpoint's tokenizer)",
            op="<=", goal=1.1,
            note="" if requested == s["prompt_tokens"] else
            f"the rebuilt prompts hold {requested} tokens, the server counted {s['prompt_tokens']}",
            details={"bench_requested_tokens": requested, "server_prompt_tokens": s["prompt_tokens"],
                     "prompts": sum(len(p) for p in prompts.values()), "server_prompts": s.get("prompts"),
                     "per_task": per_task}),
    ]


def rerun_after_task_change(pr: PipelineRun, progress: Progress) -> list[Row]:
    """P5 on real results: one task's own setting changed in the config; only its evaluation may rerun."""
    changed = pr.tasks[-1]
    with progress.step("P5 one task's setting changed, real results"), task_setting_changed(pr.work, changed):
        run = snakemake(pr.work, "-n", *pr.config_args, log=pr.work.parent / "logs" / "p5-real.log",
                        extra_env={"NEMOTRON_DATA_MIRROR": str(pr.mirror)}).check("the dry run after the task change")
    jobs = jobs_in_dry_run(run.output)
    evaluations = [j for j in jobs if j["rule"] == "evaluate_task"]
    wrong = [j for j in evaluations if j.get("task") != changed]
    return rerun_rows("task_change_results", f"{changed}'s limit_samples changed (the {len(pr.tasks)}-task run's results)",
                      evaluations, {("evaluate_task", changed)}, wrong, {"all_jobs": sorted({j["rule"] for j in jobs})})


__all__ = ["PipelineRun", "run_pipeline", "p1", "p2_busy", "p2_phases", "p2_alone", "p3_tokens", "rerun_after_task_change"]
