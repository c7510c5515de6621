"""One plan per run: everything the DAG and its steps need, computed once from the request.

`Plan(request, configs_dir)` composes the config once (Hydra defaults, env.toml profile, overrides, task filter)
and knows what every model shares: the tasks, the data mirror, the images to squash (absolute paths), the
deployment job's resources. `plan.model(wildcard)` (cached) resolves one model's checkpoint and compiles its
configs in memory: the exact bytes of merged.yaml, resolved.yaml, job.yaml and eval.yaml, and each task's
fingerprint. Rules write these fields and take their digests as params, so a file is rewritten exactly when its
content would change; input and params functions are lookups into the plan; steps read the files.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nemotron_eval.artifacts import embedded
from nemotron_eval import executors, exporters
from nemotron_eval.executors.runners import runner_of
from nemotron_eval.data import tasks as task_table
from nemotron_eval.artifacts import Resolved, expand_models
from nemotron_eval.pipeline import compile as comp
from nemotron_eval.pipeline import plan_cache
from nemotron_eval.config import hydra_cache, schema
from nemotron_eval.config.validators import PATH_SAFE
from nemotron_eval.config.compose import ComposeRequest, compose, resolve_pending
from nemotron_eval.data import stage
from nemotron_eval.deploy import types as deploy_types
from nemotron_eval.evaluate import harness
from nemotron_eval.core import layout
from nemotron_eval.core.errors import UserError
from nemotron_eval.core.io import dump_yaml, sha256_bytes
from nemotron_eval.core.safeload import load_yaml_text
from nemotron_eval.pipeline.request import Request
from nemotron_eval.core.spec import ModelSpec, parse_spec, parse_wildcard

ENGINES = schema.ENGINES


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelPlan:
    """One model's compiled configs, as the rules write them."""

    wildcard: str
    spec: ModelSpec
    artifact: Resolved
    merged_text: str
    resolved_text: str
    job_text: str
    eval_text: str
    tasks: dict[str, dict[str, Any]]  # per task short name: its name in evaluation.tasks, staged or not, fingerprint
    merged: dict[str, Any]

    @property
    def embedded(self) -> embedded.Embedded | None:
        return embedded.lookup(self.spec.name) if self.artifact.registry == "embedded" else None

    @functools.cached_property
    def job(self) -> dict[str, Any]:
        """job.yaml as data (read from its text: a plan may come from the cache)."""
        return load_yaml_text(self.job_text, layout.JOB.format(model=self.wildcard))  # type: ignore[no-any-return]

    @functools.cached_property
    def eval(self) -> dict[str, Any]:
        """eval.yaml as data."""
        return load_yaml_text(self.eval_text, layout.EVAL.format(model=self.wildcard))  # type: ignore[no-any-return]

    def digest(self, which: str) -> str:
        """sha256 of one file's content ("merged", "resolved", "job", "eval")."""
        return sha256_bytes(getattr(self, f"{which}_text").encode())


def _under_the_project(e: schema.BadValue) -> UserError:
    """A refused path that the pipeline made under the project folder (results/, models/, build/): what the user
    set is the folder, so the message names the folder, not a path they never wrote."""
    root = str(Path.cwd())
    if not (isinstance(e.value, str) and e.value.startswith(f"{root}/")) or PATH_SAFE.fullmatch(root):
        return e
    return UserError(
        f"the project folder {root!r} holds a character a command line cannot take unquoted (a space?), and "
        f"{e.key} lies in it ({e.value[len(root) + 1:]}); move the project to a path of letters, digits and "
        "_ . / ~ @ % + = -"
    )


class Plan:
    """`keep_plans`: compiled models are kept in the plan cache (pipeline/plan_cache.py); a dry run reads it and
    writes nothing."""

    def __init__(self, request: Request, configs_dir: Path, *, keep_plans: bool = True) -> None:
        self.request = request
        self.keep_plans = keep_plans
        self._composition = hydra_cache.Kept(plan_cache.COMPOSED_DIR, keep=keep_plans)
        self.merged = compose(
            ComposeRequest(
                eval_config=request.eval_config, configs_dir=Path(configs_dir), env_profile=request.env_profile,
                overrides=list(request.overrides), tasks=list(request.tasks) if request.tasks is not None else None,
                env_file=Path(request.env_file) if request.env_file else None,
                kept=self._composition,
            )
        )
        # Every interpolation resolved but ${art:...} (per model): what is read before any model, and checked.
        self.resolved = resolve_pending(self.merged)
        self.deployment = deploy_types.get(self.merged["deployment"].get("type"))  # checked by compose
        execution = self.resolved.get("execution")
        executor = executors.for_execution(execution if isinstance(execution, dict) else {})  # unknown: one line
        # what the registries add to the schema's general rules (config.schema's hook: (key pattern, rule) pairs)
        # for this config: the deployment type's, the executor's, and every exporter's `export.<name>.*`
        self.schema_rules = [
            *self.deployment.rules, *executors.schema_rules(), *executor.rules, *exporters.schema_rules(),
        ]
        for cfg in (self.merged, self.resolved):  # 6e3 where a whole number is wanted: 6000 (before it is written)
            schema.whole_numbers(cfg, self.schema_rules)
        self.merged_text = dump_yaml(self.merged)
        schema.check(self.resolved, self.merged, pending=True, rules=self.schema_rules, closed=self.deployment.closed)
        self.deployment.check(self.resolved)  # what is known before any model (its execution, its endpoint, ...)
        # run.model: one model, or several and version sets (sft:v1,sft:v3; sft:v2..v5; sft:*), expanded here only
        self.models = [m.wildcard for m in expand_models(self.merged["run"]["model"], lambda: comp.registry_of(self.merged))]
        self.default_model = self.models[0]
        self.tasks = [task_table.resolve(e["name"]) for e in self.merged["evaluation"]["tasks"]]
        self.task_names = [t.short for t in self.tasks]
        self.engine = str(self.merged["run"].get("engine") or "snakemake")  # checked by the schema
        self.launcher_dry_run = bool((self.merged["run"].get("launcher") or {}).get("dry_run", False))
        self.force_squash_stamp: float | bool = time.time() if request.force_squash else False  # new each run
        run_env = self.resolved["run"].get("env") or {}
        self.execution: dict[str, Any] = self.resolved.get("execution") or {}
        self.deployment_type = str(self.merged["deployment"].get("type"))
        self.executor = executor
        self.executor.check_settings(self.execution, request.env_profile)
        self.deploy_resources = self.executor.deployment_resources(self.execution)
        self.squash_resources = self.executor.squash_resources(run_env)
        image = comp.squashed_image({
            "execution": self.execution,
            "deployment": {"type": self.deployment_type, "image": self.resolved["deployment"].get("image")},
        })
        self.images: dict[str, comp.Image] = {image.name: image} if image else {}
        self.mirror = stage.resolve_mirror((self.resolved.get("data") or {}).get("mirror"))
        if self.engine == "snakemake":
            self.check_tasks()
            self.images.update(self.harness_images())

    def check_tasks(self) -> None:
        """A task this pipeline cannot evaluate (its harness neither installed here nor in a container the runner
        starts, its data unreachable) is refused in one line naming it and why, before any deployment starts."""
        for task, entry in zip(self.tasks, self.resolved["evaluation"]["tasks"], strict=True):
            staged = task.offline and (self.mirror_for(task.short) is not None or Path(layout.STAGED.format(task=task.short)).is_dir())
            why = harness.refusal(task, self.execution, has_data=staged, entry=entry)
            if why:
                raise UserError(why)

    def harness_images(self) -> dict[str, comp.Image]:
        """The containers of the tasks whose harness is not installed here, squashed like the deployment's image
        (before the deployment starts: its job waits for every image of the plan)."""
        runner = runner_of(self.execution)
        found = {}
        for task, entry in zip(self.tasks, self.resolved["evaluation"]["tasks"], strict=True):
            reference = harness.harness_container(task, entry, runner)
            image = comp.harness_image(self.execution, reference) if reference else None
            if image is not None:
                found[image.name] = image
        return found

    @property
    def default_targets(self) -> list[str]:
        """What a bare `snakemake` builds (rule all): the default model's run."""
        return self.targets()

    def targets(self, per_task: bool = False) -> list[str]:
        """The files of a run, for each model of run.model: its launcher submission (run.engine launcher), else its
        summary, or with `per_task` (a run of chosen tasks) each task's result; and the receipt of each export that
        `execution.auto_export` asks for (as the recipe exports after evaluating), whose settings the exporter
        checks now rather than after hours of evaluation."""
        if self.engine == "launcher":
            return [f"build/{model}/launcher.json" for model in self.models]
        out = []
        for model in self.models:
            out += [f"results/{model}/{t}.json" for t in self.task_names] if per_task else [f"results/{model}/summary.json"]
            out += exporters.targets(model, self.execution.get("auto_export"), self.resolved.get("export"))
        return out

    def check_cluster(self) -> None:
        """The executor's checks (on Slurm: a GPU request larger than any node, or no account where one is
        required) fail before anything is submitted."""
        self.executor.check(self.execution, self.request.env_profile)

    # -- one model --------------------------------------------------------------------------------------------

    @functools.cache
    def model(self, wildcard: str) -> ModelPlan:
        """One model's plan: the checkpoint resolved now (aliases move), the rest compiled, or read from the plan
        cache when nothing it is computed from changed (pipeline/plan_cache.py)."""
        spec = parse_wildcard(wildcard)
        artifact = comp.resolve_model(self.merged, spec)
        key = plan_cache.key(
            merged_text=self.merged_text, env_file=comp.env_path(self.merged),
            artifact=artifact.as_dict(), env_names=self._env_names,
            # the Snakemake engine runs a task whose harness is not installed here in its container
            installed=[harness.installed_here(t) for t in self.tasks] if self.engine == "snakemake" else [],
        )
        fields = plan_cache.load(wildcard, key)
        if fields is None:
            fields = self._compile(spec, artifact)
            if self.keep_plans and plan_cache.cacheable(self.merged_text):
                plan_cache.store(wildcard, key, fields)
        self._composition.keep()  # the config passed every check (a model's plan kept or read back)
        return ModelPlan(wildcard=wildcard, spec=spec, artifact=artifact, merged_text=self.merged_text,
                         merged=self.merged, **{f: fields[f] for f in plan_cache.FIELDS})

    @functools.cached_property
    def _env_names(self) -> list[str]:
        return plan_cache.env_names(self.merged, self.merged_text)

    def _compile(self, spec: ModelSpec, artifact: Resolved) -> dict[str, Any]:
        """A model's configs compiled and checked: the fields plan_cache.FIELDS names."""
        resolved = comp.resolve_artifacts(self.merged, spec, artifact)
        job, eval_cfg = comp.compile_job(resolved, self.tasks)
        # now with the checkpoint path, the profile's mounts and the image the runner starts
        try:
            schema.check(job, self.merged, rules=self.schema_rules, closed=self.deployment.closed)
        except schema.BadValue as e:
            raise _under_the_project(e) from None
        self.deployment.check(eval_cfg)
        return {"resolved_text": dump_yaml(resolved), "job_text": dump_yaml(job), "eval_text": dump_yaml(eval_cfg),
                "tasks": job["run"]["tasks"]}

    @functools.cache
    def evaluation(self, wildcard: str, short: str) -> dict[str, Any]:
        """A task of a model as its evaluation job sees it (name, staged or not, fingerprint); a task or a
        checkpoint the deployment cannot serve (the local CPU server: a chat task, no tokenizer, ...) is refused
        here, before anything starts."""
        mp = self.model(wildcard)
        task = self.task(short)
        self.deployment.check_task(task, None if mp.artifact.registry == "embedded" else Path(mp.artifact.path))
        return mp.tasks[short]

    def task(self, short: str) -> task_table.Task:
        for t in self.tasks:
            if t.short == short:
                return t
        raise UserError(
            f"task {short!r} is not in the evaluation config's tasks ({', '.join(self.task_names)}); "
            "add it to evaluation.tasks or drop it from the target"
        )

    # -- the comparison report ------------------------------------------------------------------------------------

    @functools.cache
    def compare_models(self) -> list[str]:
        """The models of results/report.html (wildcards), baseline first: the request's `compare`, else every
        model with results for all the tasks (the default model first when it is one). A model with some of them
        is named, not evaluated further: the report never starts evaluations nobody asked for."""
        if self.request.compare is not None:
            models = [parse_spec(spec, where="compare").wildcard for spec in self.request.compare]
            if len(models) < 1 or len(set(models)) != len(models):
                raise UserError(f"compare={list(self.request.compare)}: name each model once")
            return models
        have: dict[str, int] = {}
        for task in self.task_names:
            for path in Path("results").glob(f"*/{task}.json"):
                have[path.parent.name] = have.get(path.parent.name, 0) + 1
        complete = [m for m, n in have.items() if n == len(self.task_names)]
        partial = sorted(f"{m} ({n}/{len(self.task_names)})" for m, n in have.items() if n < len(self.task_names))
        if partial:
            log.warning("results/report.html leaves out models without results for all of %s: %s; name them in "
                        "--config compare=[...] to evaluate the rest", ", ".join(self.task_names), ", ".join(partial))
        if not complete:
            raise UserError(f"results/report.html compares models with results for all of {', '.join(self.task_names)}, "
                            "and there are none yet; evaluate some or name them: --config compare='[\"sft:v2\",\"rl:latest\"]'")
        return sorted(complete, key=lambda m: (m != self.default_model, m))

    def report_inputs(self) -> list[str]:
        return [f"results/{m}/{t}{ext}" for m in self.compare_models() for t in self.task_names
                for ext in (".json", ".items.jsonl.gz")]

    # -- data -------------------------------------------------------------------------------------------------

    def mirror_for(self, short: str) -> Path | None:
        """The mirror a staged task is staged from: the configured one, else the one it was staged from before
        (forgetting NEMOTRON_DATA_MIRROR keeps the staged data), else None (the hub)."""
        return self.mirror or stage.staged_from_mirror(Path(layout.STAGED.format(task=short)))

    def mirror_files(self, short: str) -> list[str]:
        """The mirror files a task's staging reads: a changed source file restages it."""
        mirror = self.mirror_for(short)
        dataset = self.task(short).dataset
        if mirror is None or dataset is None:
            return []
        return [str(mirror / f.path) for f in dataset.mirror_files]


@functools.cache
def plan_for(request: Request, configs_dir: Path, keep_plans: bool = True) -> Plan:
    return Plan(request, configs_dir, keep_plans=keep_plans)


__all__ = ["ENGINES", "ModelPlan", "Plan", "plan_for"]
