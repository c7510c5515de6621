import os
import sys
import time
from pathlib import Path

from snakemake.utils import min_version

from nemotron_eval import cluster, smk
from nemotron_eval import tasks as task_registry
from nemotron_eval.artifacts import Resolved
from nemotron_eval.artifacts import backend as artifact_backend
from nemotron_eval.config.compile import compile_eval, explicit_checkpoint, resolve_model, task_fingerprint
from nemotron_eval.config.compose import ComposeRequest, compose, config_files, env_references, resolved_value
from nemotron_eval.config.envtoml import load_env_file
from nemotron_eval.data import stage
from nemotron_eval.model import check_checkpoint
from nemotron_eval.spec import parse_spec, parse_wildcard

min_version("9.27")

smk.validate_config(config)

PYTHON = sys.executable  # jobs run with the interpreter (and venv) snakemake runs with
CONFIGS = Path(workflow.basedir) / "configs"
REQUEST = ComposeRequest(
    eval_config=config["eval_config"],
    configs_dir=CONFIGS,
    env_profile=config.get("env_profile"),
    overrides=list(config.get("overrides") or []),
    tasks=config.get("tasks"),
)
# Compose once at start-up: every config error is reported here, before anything is written.
MERGED = smk.or_exit(compose, REQUEST)
DEFAULT_MODEL = smk.or_exit(parse_spec, MERGED["run"]["model"]).wildcard
TASKS = [task_registry.BY_HARNESS[t["name"]].short for t in MERGED["evaluation"]["tasks"]]
DATA_MIRROR = str(smk.or_exit(stage.resolve_mirror, resolved_value(MERGED, "data.mirror")) or "")
EMBEDDED_MODEL = "smollm2"  # registered by the register_default_model rule when first asked for
EMBEDDED_FOLDER = "models/smollm2"
EMBEDDED_RECEIPT = "models/smollm2.json"

# Slurm: the deployment job's resources, the image to squash, and the checks that must fail before submitting.
EXECUTION = smk.or_exit(smk.resolved_section, MERGED, "execution")
DEPLOY_RESOURCES = smk.or_exit(cluster.deployment_resources, EXECUTION)
SQUASH = smk.or_exit(smk.image_to_squash, MERGED)  # {sqsh name: image reference}, or {}
SQUASH_RESOURCES = smk.or_exit(cluster.squash_resources, smk.or_exit(smk.resolved_section, MERGED, "run.env"))
FORCE_SQUASH = time.time() if config.get("force_squash") else False  # a new value each run: squash again
if EXECUTION.get("type") == "slurm":
    _enforce, _node_gres = cluster.slurm_facts(EXECUTION.get("partition"))
    smk.or_exit(cluster.check_account, EXECUTION.get("account"), REQUEST.env_profile, _enforce)
    smk.or_exit(cluster.check_gpus, EXECUTION.get("gres"), EXECUTION.get("partition"), _node_gres)


wildcard_constraints:
    model=r"[^/]+",
    task="|".join(task_registry.TASKS),


def compose_inputs(wildcards):
    return [str(p) for p in smk.or_exit(config_files, REQUEST)]


def compose_params(wildcards):
    """What the composition depends on besides files: a change reruns merged.yaml and what follows."""
    env = smk.or_exit(load_env_file)
    profile = smk.or_exit(env.profile, REQUEST.env_profile) if REQUEST.env_profile else {}
    return {
        "overrides": REQUEST.overrides,
        "tasks": REQUEST.tasks,
        "env_profile": REQUEST.env_profile,
        "profile": profile,
        "wandb": env.settings("wandb"),
        "environment": {name: os.environ.get(name) for name in env_references(MERGED)},
    }


def is_embedded(wildcards):
    """The embedded default model, registered by the register_default_model rule (not by hand)."""
    spec = smk.or_exit(parse_wildcard, wildcards.model)
    uses_registry = explicit_checkpoint(MERGED) is None and artifact_backend(load_env_file()) == "local"
    return spec.name == EMBEDDED_MODEL and uses_registry


def embedded_registration(wildcards):
    return [EMBEDDED_RECEIPT] if is_embedded(wildcards) else []


def resolve_inputs(wildcards):
    return [f"build/{wildcards.model}/merged.yaml", *embedded_registration(wildcards)]


_RESOLVED = {}


def resolve_params(wildcards):
    """The checkpoint the spec points to now (aliases move): a new version reruns this model's chain.
    The embedded model is identified by its source (the GGUF): stable before and after its registration,
    which happens in this DAG; resolve_artifacts then reads the registry when it runs."""
    if wildcards.model not in _RESOLVED:
        spec = smk.or_exit(parse_wildcard, wildcards.model)
        if is_embedded(wildcards):
            _RESOLVED[wildcards.model] = smk.or_exit(smk.embedded_record, spec, EMBEDDED_FOLDER)
        else:
            _RESOLVED[wildcards.model] = smk.or_exit(resolve_model, MERGED, spec).as_dict()
    return _RESOLVED[wildcards.model]


def compiled_config(wildcards):
    """eval.yaml and job.yaml for an evaluation. Once its result exists they count as ancient(): a rewrite that
    leaves the task's own settings alone (export, cluster) reruns nothing; task_config (a param) decides.
    While the result is missing they are plain inputs, so the job is scheduled after a recompile."""
    result = Path(f"results/{wildcards.model}/{wildcards.task}.json")
    mark = ancient if result.exists() else (lambda path: path)
    return {
        "eval": mark(f"build/{wildcards.model}/eval.yaml"),
        "job": mark(f"build/{wildcards.model}/job.yaml"),
    }


def task_config(wildcards):
    """What this task's scores depend on (model content, deployment, params), as a digest: evaluate_task
    reruns when it changes, and only then (eval.yaml is an ancient() input, so export or cluster settings
    do not rerun evaluations)."""
    record = {k: v for k, v in resolve_params(wildcards).items() if k != "embedded"}
    if MERGED["deployment"]["type"] == "local" and not is_embedded(wildcards):
        smk.or_exit(check_checkpoint, record["path"])  # e.g. no tokenizer: say so before anything starts
    spec = parse_wildcard(wildcards.model)
    eval_cfg = smk.or_exit(compile_eval, MERGED, spec, Resolved(**record))
    harness_task = task_registry.TASKS[wildcards.task].harness
    return task_fingerprint(eval_cfg, harness_task, record["digest"])


def task_mirror(wildcards):
    """The mirror a task is staged from: the configured one, else the one it was staged from before (so that
    forgetting NEMOTRON_DATA_MIRROR keeps the staged data), else '' (the hub)."""
    if DATA_MIRROR:
        return DATA_MIRROR
    return smk.staged_from_mirror(Path("data") / wildcards.task) or ""


def mirror_inputs(wildcards):
    """The mirror files a task's staging reads: a changed source file restages it."""
    mirror = task_mirror(wildcards)
    if not mirror:
        return []
    return [str(Path(mirror) / f.path) for f in stage.spec(wildcards.task).mirror_files]


def task_data(wildcards):
    if wildcards.task not in TASKS:
        smk.fail(
            f"task {wildcards.task!r} is not in the evaluation config's tasks ({', '.join(TASKS)}); "
            "add it to evaluation.tasks or drop it from the target"
        )
    return f"data/{wildcards.task}"
