"""The schema's general rules: the type and range of every key this project or NeMo Evaluator Launcher reads,
whatever the deployment, and the sections that are ours entirely (closed: an unknown key is an error).

A deployment type's own rules (its port range, its closed key set, ...) live with the type
(`deploy.types.Deployment.rules`), the keys whose values are registered names (`execution.type`,
`run.env.executor`, `execution.container_runner`) with the executors (`executors.schema_rules`), an exporter's
with the exporter; the Plan passes them to `config.schema.check` with these.
"""

from __future__ import annotations

from nemotron_eval.config.validators import (
    ENV_NAME, HOST, IMAGE, MODEL_NAME, PATH_SAFE, SAFE_WORD, URL, Rule, boolean, checkpoint_path, env_var_value,
    env_vars, gres, host_path, integer, mapping, model_spec, mount_list, mounts_map, no_shell, number, one_of,
    string_list, text, url_path, walltime,
)

ENGINES = ("snakemake", "launcher")
ENDPOINT_TYPES = ("completions", "chat")

_NAME_OR_NULL = text(SAFE_WORD, "a name of letters, digits and . _ @ + , -")
_PARAMS = {
    "limit_samples": integer(1, null=True),
    "parallelism": integer(1),
    "request_timeout": number(gt=0),
    "max_retries": integer(0),
    "temperature": number(ge=0, null=True),
    "top_p": number(ge=0, le=1, null=True),
    "max_new_tokens": integer(1, null=True),
    "extra.tokenizer": text(PATH_SAFE, "a path of letters, digits and _ . / ~ @ % + = -"),
}

# (key pattern with * for any key or list index, rule)
RULES: list[tuple[str, Rule]] = [
    ("run", mapping),
    ("run.model", model_spec),
    ("run.engine", one_of(*ENGINES, null=True)),
    ("run.launcher", mapping),
    ("run.launcher.dry_run", boolean),
    ("run.tasks_at_once", integer(1, null=True)),
    ("run.tasks_starting_at_once", integer(1, null=True)),
    ("run.env", mapping),
    ("run.env.time", walltime),
    ("run.env.build_time", walltime),
    ("run.env.mounts", mount_list),
    ("run.env.account", _NAME_OR_NULL),
    ("run.env.partition", _NAME_OR_NULL),
    ("run.env.build_partition", _NAME_OR_NULL),
    ("run.env.user", _NAME_OR_NULL),
    ("run.env.host", text(HOST, "a host name")),
    ("run.env.container", text(IMAGE, "an image reference")),
    ("run.env.remote_job_dir", text(PATH_SAFE, "a path of letters, digits and _ . / ~ @ % + = -")),
    ("run.env.nodes", integer(1, null=True)),
    ("run.env.gpus_per_node", integer(0, null=True)),
    ("run.wandb", mapping),
    ("run.wandb.entity", text(SAFE_WORD, "a W&B entity name")),
    ("run.wandb.project", text(SAFE_WORD, "a W&B project name")),
    ("data", mapping),
    ("data.mirror", text(None, "a folder path")),
    ("execution", mapping),
    ("execution.num_nodes", integer(1)),
    ("execution.num_instances", integer(1)),
    ("execution.ntasks_per_node", integer(1)),
    ("execution.deployment.n_tasks", integer(1)),
    ("execution.gres", gres),
    ("execution.walltime", walltime),
    ("execution.mem_mb", integer(1, null=True)),
    ("execution.account", _NAME_OR_NULL),
    ("execution.partition", _NAME_OR_NULL),
    ("execution.username", _NAME_OR_NULL),
    ("execution.hostname", text(HOST, "a host name")),
    ("execution.output_dir", text(PATH_SAFE, "a path of letters, digits and _ . / ~ @ % + = -")),
    ("execution.sbatch_comment", no_shell),
    ("execution.mounts.deployment", mounts_map),
    ("execution.mounts.evaluation", mounts_map),
    ("execution.mounts.mount_home", boolean),
    ("execution.auto_export.enabled", boolean),
    ("execution.auto_export.destinations", string_list),
    ("deployment", mapping),
    ("deployment.checkpoint_path", checkpoint_path),
    ("deployment.image", text(IMAGE, "an image reference or an image file's path")),
    ("deployment.served_model_name", text(MODEL_NAME, "a name of letters, digits and _ . : / @ + -")),
    ("deployment.host", text(HOST, "a host name or address")),
    ("deployment.max_batch_size", integer(1)),
    ("deployment.readiness_timeout_s", number(gt=0)),
    ("deployment.health_check_path", url_path),
    ("deployment.endpoints.*", url_path),
    ("deployment.env_vars", env_vars),
    ("deployment.env_vars.*", env_var_value),
    ("deployment.tensor_parallel_size", integer(1)),
    ("deployment.pipeline_parallel_size", integer(1)),
    ("deployment.data_parallel_size", integer(1)),
    ("deployment.gpu_memory_utilization", number(gt=0, le=1)),
    ("env_vars", env_vars),
    ("env_vars.*", env_var_value),
    ("evaluation.env_vars", env_vars),
    ("evaluation.env_vars.*", env_var_value),
    ("evaluation.tasks.*.env_vars", env_vars),
    ("evaluation.tasks.*.env_vars.*", env_var_value),
    ("evaluation.tasks.*.endpoint_type", one_of(*ENDPOINT_TYPES, null=True)),
    ("evaluation.tasks.*.container", text(IMAGE, "an image reference")),
    ("evaluation.tasks.*.dataset_dir", lambda v: None if v is None else host_path(v)),
    *[(f"evaluation.nemo_evaluator_config.config.params.{k}", r) for k, r in _PARAMS.items()],
    *[(f"evaluation.tasks.*.nemo_evaluator_config.config.params.{k}", r) for k, r in _PARAMS.items()],
    ("target.api_endpoint.url", text(URL, "an http(s) URL without quotes, spaces, '$', ';' or '&'")),
    ("target.api_endpoint.model_id", text(MODEL_NAME, "a name of letters, digits and _ . : / @ + -")),
    ("target.api_endpoint.api_key_name", text(ENV_NAME, "the NAME of an environment variable")),
]

CLOSED: dict[str, tuple[str, ...]] = {
    "run": ("model", "engine", "launcher", "tasks_at_once", "tasks_starting_at_once", "env", "wandb", "compose", "artifacts", "tasks"),
    "run.launcher": ("dry_run",),
    "run.wandb": ("entity", "project"),
    "data": ("mirror",),
}
