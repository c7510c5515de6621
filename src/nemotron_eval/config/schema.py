"""The schema of the evaluation config: the type and range of every key this project or NeMo Evaluator Launcher reads.

`check(resolved, merged)` is called by the Plan on the merged config with its interpolations resolved: once when
the plan is made (`${art:...}` still unknown: values holding it are skipped) and once per model on its job.yaml
(the checkpoint path known). A nonsense value fails there, before anything is written or submitted, in one line
naming the key, the value and what is valid:

    execution.num_nodes='two': a whole number >= 1

Rules, in one place:
* our sections are closed: an unknown key under `run` (but `run.env`, which holds the env.toml profile's keys),
  `data`, or a `local` deployment (ours entirely) is an error with a did-you-mean;
* the launcher's sections keep the launcher's rules: its own models validate `evaluation` and `execution.mounts`
  (unknown keys there are its errors, retold in one line), and only the keys we or it read are typed here;
* values that end up inside `deployment.command` (`${deployment.served_model_name}`, ...) hold only characters
  that need no quoting: the command is split into argv (local) or run by bash (in the container);
* NeMo Evaluator pastes `nemo_evaluator_config` params into the harness's bash script (its task templates):
  their strings hold no shell-special character (`extra.args`, a shell fragment by design, excepted);
* paths mounted into containers (checkpoint, mounts, dataset_dir) are absolute and hold no `,` (pyxis's mount
  separator) and no `:` in a host path (`/tmp/a,/etc:/host-etc` would mount the host's /etc); a checkpoint path,
  the default tokenizer too, holds only characters that need no quoting.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from nemotron_eval import executors
from nemotron_eval.deploy.runners import RUNNERS
from nemotron_eval.errors import UserError, did_you_mean
from nemotron_eval.model import DTYPES

# How a value known only per model (an ${art:...} reference) reads before it is resolved: a marker no user can
# type (a fresh nonce per process), so a value cannot skip the checks by looking pending.
PENDING = f"<art-pending-{secrets.token_hex(8)}:"

Rule = Callable[[Any], "str | None"]  # None when the value is valid, else what would be

# -- what is valid -------------------------------------------------------------------------------------------

_SAFE_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+,-]*")
_TEMPLATE_SAFE = re.compile(r"[A-Za-z0-9_./:@%+=,-]+")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]*")
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:]+\]")
_IMAGE = re.compile(r"[A-Za-z0-9~./][A-Za-z0-9_./:@+#-]*")
_PATH_SAFE = re.compile(r"[A-Za-z0-9_./~@%+=-][A-Za-z0-9_./~@%+=-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_URL = re.compile(r"https?://[A-Za-z0-9._~:/?#@%+=,\[\]-]+")
_MOUNT_FLAGS = re.compile(r"[a-z]+(?:\+[a-z]+)*")
SHELL_SPECIAL = "'\"`$\\;&|<>()\n\r"
SHELL_FRAGMENTS = frozenset({"deployment.command", "deployment.base_command", "deployment.extra_args"})
ENGINES = ("snakemake", "launcher")
EXECUTORS = executors.names()  # the registered ones (nemotron_eval.executors)
ENDPOINT_TYPES = ("completions", "chat")


def integer(lo: int, hi: int | None = None, *, null: bool = False) -> Rule:
    what = f"a whole number >= {lo}" if hi is None else f"a whole number from {lo} to {hi}"
    what += " or null" if null else ""

    def rule(v: Any) -> str | None:
        if v is None and null:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            return what
        return None

    return rule


def number(*, gt: float | None = None, ge: float | None = None, le: float | None = None, null: bool = False) -> Rule:
    bounds = [f"> {gt:g}" if gt is not None else "", f">= {ge:g}" if ge is not None else "", f"<= {le:g}" if le is not None else ""]
    what = "a number " + " and ".join(b for b in bounds if b) + (" or null" if null else "")

    def rule(v: Any) -> str | None:
        if v is None and null:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return what
        if (gt is not None and not v > gt) or (ge is not None and v < ge) or (le is not None and v > le):
            return what
        return None

    return rule


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def one_of(*choices: str, null: bool = False) -> Rule:
    what = "one of " + ", ".join(choices) + (" or null" if null else "")

    def rule(v: Any) -> str | None:
        if v is None and null:
            return None
        return None if v in choices else what + (did_you_mean(str(v), choices) if isinstance(v, str) else "")

    return rule


def text(pattern: re.Pattern[str] | None = None, what: str = "a string", *, null: bool = True) -> Rule:
    def rule(v: Any) -> str | None:
        if v is None and null:
            return None
        if not isinstance(v, str) or (pattern is not None and not pattern.fullmatch(v)):
            return what + (" or null" if null else "")
        return None

    return rule


def no_shell(v: Any) -> str | None:
    if isinstance(v, str) and any(c in SHELL_SPECIAL for c in v):
        return "text without shell-special characters (' \" ` $ \\ ; & | < > ( ) or line breaks): it is pasted into a shell script"
    return None


def walltime(v: Any) -> str | None:
    """A Slurm time, as the slurm executor reads it (executors.slurm.walltime_minutes)."""
    from nemotron_eval.executors.slurm import walltime_minutes

    if v is None:
        return None
    try:
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise UserError("")
        walltime_minutes(v)
    except UserError:
        return "a Slurm time: MM, HH:MM:SS, D-HH or D-HH:MM:SS, as a quoted string"
    return None


def gres(v: Any) -> str | None:
    """A GPU request, as the slurm executor reads it (executors.slurm.gpus_per_node)."""
    from nemotron_eval.executors.slurm import gpus_per_node

    if v is None:
        return None
    try:
        if not isinstance(v, str):
            raise UserError("")
        gpus_per_node(v)
    except UserError:
        return "gpu:N or gpu:TYPE:N"
    return None


def host_path(v: Any) -> str | None:
    """An absolute path that a container runner can mount: no ',' (pyxis's separator), no ':'."""
    if not isinstance(v, str) or not v.startswith("/"):
        return "an absolute path"
    if "," in v or ":" in v or any(c in v for c in "\n\r\0"):
        return "an absolute path without ',' or ':' (they split a container mount: /a,/etc:/x would mount /etc)"
    return None


def checkpoint_path(v: Any) -> str | None:
    """A checkpoint folder: mounted into containers and, as the tokenizer, pasted into the harness's command line."""
    if not isinstance(v, str) or not v.startswith("/") or not _PATH_SAFE.fullmatch(v):
        return (
            "an absolute path of letters, digits and _ . / ~ @ % + = - (',' and ':' split a container mount; "
            "quotes, spaces and '$' would reach the harness's command line)"
        )
    return None


def mount_target(v: Any) -> str | None:
    """`container_path[:flags]` (the value side of execution.mounts.*)."""
    if not isinstance(v, str):
        return "an absolute container path, optionally with :flags (e.g. /data or /data:ro)"
    path, _, flags = v.partition(":")
    if host_path(path) or (flags and not _MOUNT_FLAGS.fullmatch(flags)):
        return "an absolute container path without ',', optionally with :flags (e.g. /data or /data:ro)"
    return None


def mount_entry(v: Any) -> str | None:
    """`host_path:container_path[:flags]`, or one absolute path mounted at the same place."""
    what = "'host_path:container_path[:flags]' with absolute paths without ',' (or one absolute path)"
    if not isinstance(v, str):
        return what
    src, sep, rest = v.partition(":")
    if host_path(src) or (sep and mount_target(rest)):
        return what
    return None


def mounts_map(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, Mapping) or any(host_path(k) or mount_target(t) for k, t in v.items()):
        return "a mapping of absolute host paths (no ',' or ':') to container paths[:flags]"
    return None


def mount_list(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, list) or any(mount_entry(m) for m in v):
        return "a list of " + str(mount_entry(None))
    return None


def env_vars(v: Any) -> str | None:
    """NeMo Evaluator Launcher's env_vars: a mapping of variable names (each value checked by `env_var_value`)."""
    if v is None:
        return None
    if not isinstance(v, Mapping) or not all(isinstance(k, str) and _ENV_NAME.fullmatch(k) for k in v):
        return "a mapping of environment variable NAME: lit:VALUE | host:HOST_VARIABLE | runtime:NAME"
    return None


def env_var_value(v: Any) -> str | None:
    """One env_vars value, as the launcher parses it (its own message), with what a script can hold."""
    from nemotron_eval.launcher import module

    parse_env_var_value = module("nemo_evaluator_launcher.common.env_vars").parse_env_var_value
    if not isinstance(v, str):
        return "a string: lit:VALUE | host:HOST_VARIABLE | runtime:NAME"
    try:
        parse_env_var_value(v)
    except ValueError as e:
        return str(e).split(" Run the migration tool")[0].strip()
    kind, _, rest = v.partition(":")
    if kind != "lit" and not _ENV_NAME.fullmatch(rest):
        return f"{kind}: takes the NAME of an environment variable"
    if kind == "lit" and any(c in rest for c in "'\"`$\\\n\r"):
        return "a lit: value without quotes, backticks, '$', '\\' or line breaks (the launcher writes it into a script)"
    return None


def mapping(v: Any) -> str | None:
    return None if v is None or isinstance(v, Mapping) else "a mapping"


def string_list(v: Any) -> str | None:
    return None if isinstance(v, list) and all(isinstance(x, str) for x in v) else "a list of strings"


def model_spec(v: Any) -> str | None:
    from nemotron_eval.spec import parse_spec

    if not isinstance(v, str):
        return "an artifact spec NAME:ALIAS, e.g. rl:latest"
    try:
        parse_spec(v)
    except UserError:
        return "an artifact spec NAME:ALIAS, e.g. rl:latest"
    return None


def url_path(v: Any) -> str | None:
    return None if v is None or (isinstance(v, str) and re.fullmatch(r"/[A-Za-z0-9_./-]*", v)) else "a URL path starting with '/'"


_NAME_OR_NULL = text(_SAFE_WORD, "a name of letters, digits and . _ @ + , -")
_PARAMS = {
    "limit_samples": integer(1, null=True),
    "parallelism": integer(1),
    "request_timeout": number(gt=0),
    "max_retries": integer(0),
    "temperature": number(ge=0, null=True),
    "top_p": number(ge=0, le=1, null=True),
    "max_new_tokens": integer(1, null=True),
    "extra.tokenizer": text(_PATH_SAFE, "a path of letters, digits and _ . / ~ @ % + = -"),
}
_LOCAL_DEPLOYMENT_KEYS = (
    "type", "image", "checkpoint_path", "served_model_name", "host", "port", "dtype", "max_batch_size",
    "prefix_cache_mb", "readiness_timeout_s", "health_check_path", "endpoints", "command", "env_vars",
)


def _is(kind: str) -> Callable[[Mapping[str, Any]], bool]:
    return lambda cfg: (cfg.get("deployment") or {}).get("type") == kind


def _is_not(kind: str) -> Callable[[Mapping[str, Any]], bool]:
    return lambda cfg: (cfg.get("deployment") or {}).get("type") != kind


def _always(cfg: Mapping[str, Any]) -> bool:
    return True


# (key pattern with * for any key or list index, rule, when it applies)
RULES: list[tuple[str, Rule, Callable[[Mapping[str, Any]], bool]]] = [
    ("run", mapping, _always),
    ("run.model", model_spec, _always),
    ("run.engine", one_of(*ENGINES, null=True), _always),
    ("run.launcher", mapping, _always),
    ("run.launcher.dry_run", boolean, _always),
    ("run.tasks_at_once", integer(1, null=True), _always),
    ("run.env", mapping, _always),
    ("run.env.executor", one_of(*EXECUTORS, null=True), _always),
    ("run.env.time", walltime, _always),
    ("run.env.build_time", walltime, _always),
    ("run.env.mounts", mount_list, _always),
    ("run.env.account", _NAME_OR_NULL, _always),
    ("run.env.partition", _NAME_OR_NULL, _always),
    ("run.env.build_partition", _NAME_OR_NULL, _always),
    ("run.env.user", _NAME_OR_NULL, _always),
    ("run.env.host", text(_HOST, "a host name"), _always),
    ("run.env.container", text(_IMAGE, "an image reference"), _always),
    ("run.env.remote_job_dir", text(_PATH_SAFE, "a path of letters, digits and _ . / ~ @ % + = -"), _always),
    ("run.env.nodes", integer(1, null=True), _always),
    ("run.env.gpus_per_node", integer(0, null=True), _always),
    ("run.wandb", mapping, _always),
    ("run.wandb.entity", text(_SAFE_WORD, "a W&B entity name"), _always),
    ("run.wandb.project", text(_SAFE_WORD, "a W&B project name"), _always),
    ("data", mapping, _always),
    ("data.mirror", text(None, "a folder path"), _always),
    ("execution", mapping, _always),
    ("execution.type", one_of(*EXECUTORS), _always),
    ("execution.num_nodes", integer(1), _always),
    ("execution.num_instances", integer(1), _always),
    ("execution.ntasks_per_node", integer(1), _always),
    ("execution.deployment.n_tasks", integer(1), _always),
    ("execution.gres", gres, _always),
    ("execution.walltime", walltime, _always),
    ("execution.mem_mb", integer(1, null=True), _always),
    ("execution.container_runner", one_of(*RUNNERS), _always),
    ("execution.account", _NAME_OR_NULL, _always),
    ("execution.partition", _NAME_OR_NULL, _always),
    ("execution.username", _NAME_OR_NULL, _always),
    ("execution.hostname", text(_HOST, "a host name"), _always),
    ("execution.output_dir", text(_PATH_SAFE, "a path of letters, digits and _ . / ~ @ % + = -"), _always),
    ("execution.sbatch_comment", no_shell, _always),
    ("execution.mounts.deployment", mounts_map, _always),
    ("execution.mounts.evaluation", mounts_map, _always),
    ("execution.mounts.mount_home", boolean, _always),
    ("execution.auto_export.enabled", boolean, _always),
    ("execution.auto_export.destinations", string_list, _always),
    ("deployment", mapping, _always),
    ("deployment.checkpoint_path", checkpoint_path, _always),
    ("deployment.image", text(_IMAGE, "an image reference or an image file's path"), _always),
    ("deployment.served_model_name", text(_MODEL_NAME, "a name of letters, digits and _ . : / @ + -"), _always),
    ("deployment.port", integer(0, 65535), _is("local")),
    ("deployment.port", integer(1, 65535), _is_not("local")),
    ("deployment.host", text(_HOST, "a host name or address"), _always),
    ("deployment.dtype", one_of(*DTYPES), _is("local")),
    ("deployment.max_batch_size", integer(1), _always),
    ("deployment.prefix_cache_mb", integer(0), _is("local")),
    ("deployment.readiness_timeout_s", number(gt=0), _always),
    ("deployment.health_check_path", url_path, _always),
    ("deployment.endpoints.*", url_path, _always),
    ("deployment.command", text(None, "a command line", null=False), _is_not("none")),
    ("deployment.env_vars", env_vars, _always),
    ("deployment.env_vars.*", env_var_value, _always),
    ("deployment.tensor_parallel_size", integer(1), _always),
    ("deployment.pipeline_parallel_size", integer(1), _always),
    ("deployment.data_parallel_size", integer(1), _always),
    ("deployment.gpu_memory_utilization", number(gt=0, le=1), _always),
    ("env_vars", env_vars, _always),
    ("env_vars.*", env_var_value, _always),
    ("evaluation.env_vars", env_vars, _always),
    ("evaluation.env_vars.*", env_var_value, _always),
    ("evaluation.tasks.*.env_vars", env_vars, _always),
    ("evaluation.tasks.*.env_vars.*", env_var_value, _always),
    ("evaluation.tasks.*.endpoint_type", one_of(*ENDPOINT_TYPES, null=True), _always),
    ("evaluation.tasks.*.container", text(_IMAGE, "an image reference"), _always),
    ("evaluation.tasks.*.dataset_dir", lambda v: None if v is None else host_path(v), _always),
    *[(f"evaluation.nemo_evaluator_config.config.params.{k}", r, _always) for k, r in _PARAMS.items()],
    *[(f"evaluation.tasks.*.nemo_evaluator_config.config.params.{k}", r, _always) for k, r in _PARAMS.items()],
    ("target.api_endpoint.url", text(_URL, "an http(s) URL without quotes, spaces, '$', ';' or '&'"), _always),
    ("target.api_endpoint.model_id", text(_MODEL_NAME, "a name of letters, digits and _ . : / @ + -"), _always),
    ("target.api_endpoint.api_key_name", text(_ENV_NAME, "the NAME of an environment variable"), _always),
    ("export.wandb.entity", text(_SAFE_WORD, "a W&B entity name"), _always),
    ("export.wandb.project", text(_SAFE_WORD, "a W&B project name"), _always),
]

CLOSED: dict[str, tuple[str, ...]] = {
    "run": ("model", "engine", "launcher", "tasks_at_once", "env", "wandb", "compose", "artifacts", "tasks"),
    "run.launcher": ("dry_run",),
    "run.wandb": ("entity", "project"),
    "data": ("mirror",),
}


# -- checking ------------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _fail(key: str, value: Any, valid: str) -> UserError:
    return UserError(f"{key}={_show(value)}: {valid}")


def _matches(node: Any, parts: list[str], prefix: str = "") -> Iterator[tuple[str, Any]]:
    if not parts:
        yield prefix, node
        return
    head, rest = parts[0], parts[1:]
    if isinstance(node, Mapping):
        keys = list(node) if head == "*" else [head] if head in node else []
        for k in keys:
            yield from _matches(node[k], rest, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, list) and head == "*":
        for i, item in enumerate(node):
            yield from _matches(item, rest, f"{prefix}.{i}" if prefix else str(i))


def _strings(node: Any, prefix: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from _strings(v, f"{prefix}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{prefix}.{i}")
    elif isinstance(node, str):
        yield prefix, node


_REF = re.compile(r"\$\{([A-Za-z_.][A-Za-z0-9_.]*)\}")


def template_keys(merged: Mapping[str, Any]) -> list[str]:
    """The keys whose values `deployment.command` pastes in (`${deployment.port}`, through `base_command`)."""
    found: list[str] = []

    def walk(key: str, seen: frozenset[str]) -> None:
        value: Any = merged
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if not isinstance(value, str):
            return
        for ref in _REF.findall(value):
            ref = f"deployment{ref}" if ref.startswith(".") else ref
            if ref in SHELL_FRAGMENTS and ref not in seen:
                walk(ref, seen | {ref})
            elif ref not in SHELL_FRAGMENTS and ref not in found:
                found.append(ref)

    walk("deployment.command", frozenset({"deployment.command"}))
    return found


def _lookup(cfg: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in key.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def _check_closed(cfg: Mapping[str, Any]) -> None:
    sections = dict(CLOSED)
    if (cfg.get("deployment") or {}).get("type") == "local":
        sections["deployment"] = _LOCAL_DEPLOYMENT_KEYS
    for section, valid in sections.items():
        found, node = _lookup(cfg, section)
        if not found or not isinstance(node, Mapping):
            continue
        for key in node:
            if key not in valid:
                shown = [v for v in valid if v not in ("compose", "artifacts", "tasks")]
                owner = "the local deployment" if section == "deployment" else f"this project's section {section!r}"
                raise UserError(
                    f"{section}.{key}: unknown key in {owner}{did_you_mean(str(key), shown)}; valid: {', '.join(shown)}"
                )


def _check_launcher(cfg: Mapping[str, Any]) -> None:
    """The launcher's own models for `evaluation` and `execution.mounts` (extra keys forbidden), in one line."""
    from pydantic import ValidationError

    from nemotron_eval.launcher import module

    models = module("nemo_evaluator_launcher.common.config_models")
    EvaluationModel, MountsModel, TaskModel = models.EvaluationModel, models.MountsModel, models.TaskModel

    execution = cfg.get("execution") or {}
    if isinstance(execution, Mapping) and execution.get("env_vars") is not None:
        raise UserError(
            "execution.env_vars: not a key of NeMo Evaluator Launcher; use top-level env_vars (every job), "
            "deployment.env_vars or evaluation.env_vars"
        )
    checks = [("evaluation", EvaluationModel, cfg.get("evaluation"))]
    if isinstance(execution, Mapping) and execution.get("mounts") is not None:
        checks.append(("execution.mounts", MountsModel, execution["mounts"]))
    for section, model, value in checks:
        try:
            model.model_validate(value)
        except ValidationError as e:
            err = e.errors()[0]
            key = ".".join([section, *(str(p) for p in err["loc"])])
            if err["type"] == "extra_forbidden":
                loc = [str(p) for p in err["loc"]]
                sub: Any = model if len(loc) == 1 else TaskModel if loc[0] == "tasks" and len(loc) == 3 else None
                allowed = sorted(sub.model_fields) if sub is not None else []
                hint = f"{did_you_mean(key.rsplit('.', 1)[1], allowed)}; valid: {', '.join(allowed)}" if allowed else ""
                raise UserError(f"{key}: unknown key (NeMo Evaluator Launcher's {section} has no such key){hint}") from None
            raise UserError(f"{key}={_show(err.get('input'))}: {err['msg']} (NeMo Evaluator Launcher's rule)") from None


def check(resolved: Mapping[str, Any], merged: Mapping[str, Any] | None = None, *, pending: bool = False) -> None:
    """Raise a UserError naming the first invalid key of a resolved config (see the module docstring).
    `merged` (interpolations kept) tells which keys `deployment.command` pastes in. With `pending` (the plan's
    check before any model is resolved) values holding `PENDING` are skipped; a model's own check has none."""

    def _pending(value: Any) -> bool:
        return pending and PENDING in repr(value)

    for pattern, rule, applies in RULES:
        if not applies(resolved):
            continue
        for key, value in _matches(resolved, pattern.split(".")):
            if _pending(value):
                continue
            problem = rule(value)
            if problem:
                raise _fail(key, value, problem)
    _check_closed(resolved)
    _check_launcher(resolved)
    evaluation = resolved.get("evaluation") or {}
    sources = [("evaluation.nemo_evaluator_config", evaluation.get("nemo_evaluator_config"))]
    sources += [(f"evaluation.tasks.{i}.nemo_evaluator_config", t.get("nemo_evaluator_config"))
                for i, t in enumerate(evaluation.get("tasks") or []) if isinstance(t, Mapping)]
    for prefix, node in sources:
        for key, value in _strings(node, prefix):
            if not key.endswith(".params.extra.args") and not _pending(value) and no_shell(value):
                raise _fail(key, value, str(no_shell(value)))
    for key in template_keys(merged if merged is not None else resolved):
        found, value = _lookup(resolved, key)
        if not found or _pending(value) or value is None:
            continue
        if isinstance(value, (dict, list)) or not _TEMPLATE_SAFE.fullmatch(str(value)):
            raise _fail(key, value, "letters, digits and _ . / : @ % + = , - only (deployment.command pastes it into a command line)")
