"""From merged.yaml to resolved.yaml (artifacts resolved) to job.yaml + eval.yaml (what evaluation reads).

eval.yaml is a NeMo Evaluator Launcher config: the launcher's own validation accepts it (`nemo-evaluator-launcher
run --config eval.yaml --config-mode raw --dry-run`). Compiling
- resolves every interpolation (`${run.*}`, `${art:model,path}`), then drops `run`;
- adds the env.toml profile's `mounts` (`run.env.mounts`, "host:container" strings) to the deployment's and the
  evaluation's mounts (`execution.mounts.deployment` / `.evaluation`, the launcher's keys);
- makes `execution.output_dir` absolute (relative: to the project folder it compiles in), as the recipe's
  `${oc.env:PWD}/.nemotron`: the launcher's jobs start elsewhere;
- maps the credentials of the exporters `execution.auto_export` asks for by name (`export.env_vars`, where the
  launcher's export job reads them, as the recipe's `WANDB_API_KEY: WANDB_API_KEY`), as `runtime:NAME`: read
  from the job's environment, so the launcher writes no value into its `.secrets.env` either;
- names the squashed image: on Slurm with pyxis or enroot, `deployment.image` becomes the absolute path of
  `build/images/<name>.sqsh` (pyxis takes a file only by an absolute path; compute nodes start elsewhere) and
  `deployment.source_image` keeps the reference it is squashed from.
job.yaml is the same config with `run` kept, plus `run.tasks`: per task its name, whether its data is staged, and
the fingerprint of what its scores depend on (the evaluation step reads it from there).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nemotron_eval.artifacts import embedded
from nemotron_eval.artifacts import Registry, Resolved, registry_from_env
from nemotron_eval.config.compose import ART_RE, _replace_art
from nemotron_eval.config.envtoml import EnvFile, load_env_file
from nemotron_eval.core.errors import UserError
from nemotron_eval.core.io import stat_fingerprint
from nemotron_eval.core.spec import ModelSpec
from nemotron_eval.data.tasks import Task

IMAGES_DIR = Path("build/images")


def explicit_checkpoint(merged: dict[str, Any]) -> str | None:
    """`deployment.checkpoint_path` when it was set to a path instead of `${art:model,path}`."""
    value = (merged.get("deployment") or {}).get("checkpoint_path")
    if isinstance(value, str) and value and not ART_RE.search(value):
        return value
    return None


def resolve_model(merged: dict[str, Any], spec: ModelSpec) -> Resolved:
    """The checkpoint `spec` points to now (aliases move): an explicit path, an embedded model, or the registry's."""
    explicit = explicit_checkpoint(merged)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_absolute() or not path.exists():
            raise UserError(f"deployment.checkpoint_path={explicit}: not an existing absolute path")
        return Resolved(
            spec=spec.spec, registry="explicit", name=spec.name, version=None,
            digest=f"stat:{stat_fingerprint(path)}", path=str(path),
        )
    model = embedded.lookup(spec.name)
    if model is not None:
        return model.resolved(spec)
    return registry_of(merged).resolve(spec)


def registry_of(merged: dict[str, Any]) -> Registry:
    """The registry a composed config resolves `run.model` in: env.toml [artifacts], with run.wandb's settings."""
    return registry_from_env(env_of(merged), (merged.get("run") or {}).get("wandb") or {})


def env_path(merged: dict[str, Any]) -> str | None:
    """The path of the env.toml the composition read (recorded in run.compose.env_file), or None."""
    return ((merged.get("run") or {}).get("compose") or {}).get("env_file")


def env_of(merged: dict[str, Any]) -> EnvFile:
    """The env.toml the composition read, or none."""
    path = env_path(merged)
    return load_env_file(Path(path)) if path else EnvFile(None)


def materialize(resolved: Resolved, merged: dict[str, Any]) -> Resolved:
    """Make the checkpoint available here (a W&B download); others are on disk already."""
    if resolved.registry != "wandb":
        return resolved
    return registry_from_env(env_of(merged)).materialize(resolved)


def resolve_artifacts(merged: dict[str, Any], spec: ModelSpec, resolved: Resolved) -> dict[str, Any]:
    """resolved.yaml: run.model set, `${art:model,*}` replaced by the resolved values, and recorded."""
    cfg = copy.deepcopy(merged)
    cfg["run"]["model"] = spec.spec
    record = resolved.as_dict()

    def value_of(key: str, field: str) -> str:
        if key != "model":
            raise UserError(f"${{art:{key},{field}}}: unknown artifact {key!r}; the only artifact is 'model' (run.model)")
        if field not in record or field == "spec":
            valid = ", ".join(k for k in record if k != "spec")
            raise UserError(f"${{art:model,{field}}}: unknown field {field!r}; valid: {valid}")
        return "" if record[field] is None else str(record[field])

    _replace_art(cfg, value_of)
    cfg["run"]["artifacts"] = {"model": record}
    return cfg


@dataclass(frozen=True)
class Image:
    """A deployment image squashed once with enroot: `build/images/<name>.sqsh`."""

    name: str  # the file's stem
    reference: str  # what it is squashed from
    path: Path  # absolute: what eval.yaml names (pyxis and compute nodes need it)
    target: str  # the same file as the Snakemake target that builds it (relative to the working directory)


def squashed_image(cfg: dict[str, Any], images_dir: Path = IMAGES_DIR) -> Image | None:
    """The image the deployment of a resolved config runs squashed (Slurm with pyxis or enroot), or None."""
    from nemotron_eval.deploy.types import get
    from nemotron_eval.deploy.images import needs_squash

    if not needs_squash(cfg, runs_image=get(cfg["deployment"]["type"]).runs_image):
        return None
    return _image(str(cfg["deployment"]["image"]), images_dir)


def harness_image(execution: dict[str, Any], reference: str, images_dir: Path = IMAGES_DIR) -> Image | None:
    """A harness's container squashed like the deployment's image, or None (the runner takes it as it is)."""
    from nemotron_eval.deploy.images import squashes

    return _image(reference, images_dir) if squashes(execution, reference) else None


def _image(reference: str, images_dir: Path) -> Image:
    from nemotron_eval.deploy.images import sqsh_name

    name = sqsh_name(reference)
    target = Path(images_dir) / name
    return Image(name.removesuffix(".sqsh"), reference, target.absolute(), str(target))


def _resolve(cfg: dict[str, Any]) -> dict[str, Any]:
    try:
        out = OmegaConf.to_container(OmegaConf.create(cfg), resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "?")
        raise UserError(f"cannot resolve {key}: {str(e).strip().splitlines()[0]}") from None
    assert isinstance(out, dict)
    return out


def parse_mount(entry: Any, where: str) -> tuple[str, str]:
    """"host:container[:flags]" or "path" (mounted at the same place) -> (host, container[:flags])."""
    text = str(entry)
    src, sep, dst = text.partition(":")
    if not isinstance(entry, str) or not src.startswith("/") or (sep and not dst.startswith("/")):
        raise UserError(f"{where}: {entry!r} is not an absolute 'host_path:container_path' (or one absolute path)")
    return src, dst or src


def _add_profile_mounts(job: dict[str, Any]) -> None:
    mounts = job.get("execution", {}).get("mounts")
    extra = ((job.get("run") or {}).get("env") or {}).get("mounts") or []
    if not isinstance(mounts, dict) or not extra:
        return
    for entry in extra:
        src, dst = parse_mount(entry, "run.env.mounts (env.toml profile 'mounts')")
        for section in ("deployment", "evaluation"):
            mounts.setdefault(section, {})
            mounts[section] = mounts[section] or {}
            mounts[section].setdefault(src, dst)


def _export_credentials(job: dict[str, Any]) -> None:
    from nemotron_eval import exporters

    names = [n for e in exporters.requested((job.get("execution") or {}).get("auto_export")) for n in e.credentials]
    if names:
        export = job.setdefault("export", {})
        env_vars = export.setdefault("env_vars", {})
        for name in names:
            env_vars.setdefault(name, f"runtime:{name}")


def _absolute_output_dir(job: dict[str, Any]) -> None:
    execution = job.get("execution")
    if isinstance(execution, dict) and isinstance(execution.get("output_dir"), str):
        execution["output_dir"] = str(Path(execution["output_dir"]).expanduser().absolute())


# Settings that change how a task is sent, never what it scores: the harness's request concurrency, timeout and
# retries (the deployment's own, where it listens, how long to wait for it, ...: its type's `not_scoring`).
NOT_SCORING_PARAMS = ("parallelism", "request_timeout", "max_retries")
MASKED = "<not scoring>"


def _mask_not_scoring(cfg: dict[str, Any]) -> dict[str, Any]:
    """A copy of the config with the settings that cannot change a score replaced by one placeholder, before
    interpolation: a deployment command that writes `--port ${deployment.port}` does not change with the port.
    The deployment's are its type's (`deploy.types.Deployment.not_scoring`): the served model name is one of them
    where this pipeline deploys the model; against an existing endpoint (`none`) it picks the model and counts."""
    from nemotron_eval.deploy.types import get

    masked = copy.deepcopy(cfg)
    deployment = masked.get("deployment")
    if isinstance(deployment, dict):
        for key in get(deployment.get("type")).not_scoring:
            if key in deployment:
                deployment[key] = MASKED
    evaluation = masked.get("evaluation") or {}
    blocks = [evaluation] + [t for t in evaluation.get("tasks") or [] if isinstance(t, dict)]
    for block in blocks:
        params = ((block.get("nemo_evaluator_config") or {}).get("config") or {}).get("params")
        if isinstance(params, dict):
            for key in NOT_SCORING_PARAMS:
                if key in params:
                    params[key] = MASKED
    return masked


def _drop_masked(node: Any) -> Any:
    """After interpolation: the placeholders removed, and the blocks that held only them, so a setting added
    (`+key=...`) weighs the same as one never written."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if value == MASKED:
                continue
            kept = _drop_masked(value)
            if isinstance(value, dict) and value and not kept:
                continue
            out[key] = kept
        return out
    if isinstance(node, list):
        return [_drop_masked(v) for v in node]
    return node


def fingerprint(eval_cfg: dict[str, Any], task_name: str, model_digest: str | None, container: str | None = None) -> str:
    """sha256 of what one task's scores depend on: the model's content, the deployment (the image it is squashed
    from, not where the file lies), the endpoint, the environment, the harness params and the task's own entry.
    Where the checkpoint lies is left out (its digest says what it is), and so are export, cluster and
    data-source settings: changing them reruns no evaluation (the staged data is an input with its own digest).
    `eval_cfg` is resolved from `_mask_not_scoring`'s copy, so serving settings are left out too. `container`:
    the image a task's harness runs in (the reference, not the squashed file), where it runs in one."""
    evaluation = eval_cfg.get("evaluation") or {}
    deployment = dict(eval_cfg.get("deployment") or {})
    if deployment.get("source_image"):
        deployment["image"] = deployment.pop("source_image")
    checkpoint = str(deployment.get("checkpoint_path") or "")
    relevant = {
        "model_digest": model_digest,
        "deployment": deployment,
        "target": eval_cfg.get("target"),
        "env_vars": eval_cfg.get("env_vars"),
        "evaluation": {k: v for k, v in evaluation.items() if k != "tasks"},
        "task": [t for t in evaluation.get("tasks") or [] if t.get("name") == task_name],
        **({"harness_container": container} if container else {}),
    }
    text = json.dumps(relevant, sort_keys=True, default=str)
    if checkpoint:
        text = text.replace(json.dumps(checkpoint)[1:-1], "<checkpoint>")
    return hashlib.sha256(text.encode()).hexdigest()


def compile_job(resolved_cfg: dict[str, Any], tasks: list[Task], *, images_dir: Path = IMAGES_DIR) -> tuple[dict[str, Any], dict[str, Any]]:
    """job.yaml (everything, resolved, with `run.tasks`) and eval.yaml (the same without `run`).

    `tasks` are the Task objects of evaluation.tasks, in order."""
    job = _resolve(resolved_cfg)
    _add_profile_mounts(job)
    _absolute_output_dir(job)
    _export_credentials(job)
    image = squashed_image(job, images_dir)
    if image is not None:
        job["deployment"]["source_image"] = image.reference
        job["deployment"]["image"] = str(image.path)
    eval_cfg = {k: v for k, v in job.items() if k != "run"}
    leftover = _find_interpolation(eval_cfg)
    if leftover:
        raise UserError(f"eval.yaml: {leftover[0]} still holds an interpolation {leftover[1]!r}")
    digest = ((job.get("run") or {}).get("artifacts") or {}).get("model", {}).get("digest")
    entries = eval_cfg["evaluation"]["tasks"]
    if len(entries) != len(tasks):
        raise ValueError(f"compile_job: {len(tasks)} tasks for {len(entries)} evaluation.tasks entries")
    scoring = _drop_masked(_resolve(_mask_not_scoring(resolved_cfg)))
    if image is not None:
        scoring["deployment"]["source_image"] = image.reference
    scoring.pop("run", None)
    # per task: what its evaluation step reads (its name, whether its data is staged, the fingerprint of what its
    # scores depend on) and, where its harness is not installed here, the container it runs in
    from nemotron_eval.evaluate.harness import harness_container
    from nemotron_eval.executors.runners import runner_of

    # (the Snakemake engine's evaluation step: the launcher's jobs start a task's container themselves)
    runner = runner_of(job.get("execution") or {})
    engine = str(job["run"].get("engine") or "snakemake")
    job["run"]["tasks"] = {}
    for task, entry in zip(tasks, entries):
        container = harness_container(task, entry, runner) if engine == "snakemake" else None
        item = {"name": entry["name"], "offline": task.offline, "fingerprint": fingerprint(scoring, entry["name"], digest, container)}
        if container:
            item["container"] = _container(job["execution"], runner, container, images_dir)
        job["run"]["tasks"][task.short] = item
    return job, eval_cfg


def _container(execution: dict[str, Any], runner: str, reference: str, images_dir: Path) -> dict[str, str]:
    """A harness's container as its evaluation step starts it: the runner, the image as the runner names it (the
    squashed file on Slurm with pyxis or enroot), the reference it comes from."""
    from nemotron_eval.deploy.types import runner_image

    squashed = harness_image(execution, reference, images_dir)
    image = runner_image(runner, str(squashed.path) if squashed else reference)
    return {"runner": runner, "image": str(image), "source_image": reference}


def _find_interpolation(node: Any, path: str = "") -> tuple[str, str] | None:
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return (path, node) if isinstance(node, str) and "${" in node else None
    for k, v in items:
        found = _find_interpolation(v, f"{path}.{k}" if path else str(k))
        if found:
            return found
    return None
