from pathlib import Path

from snakemake.utils import min_version

from nemotron_eval import smk
from nemotron_eval.config.compose import ComposeRequest, compose, config_files
from nemotron_eval.config.compile import resolve_model
from nemotron_eval.config.envtoml import load_env_file
from nemotron_eval.spec import parse_spec, parse_wildcard

min_version("9.27")

smk.validate_config(config)

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


wildcard_constraints:
    model=r"[^/]+",


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
    }


def resolve_params(wildcards):
    """The checkpoint the spec points to now (aliases move): a new version reruns this model's chain."""
    spec = smk.or_exit(parse_wildcard, wildcards.model)
    return smk.or_exit(resolve_model, MERGED, spec).as_dict()
