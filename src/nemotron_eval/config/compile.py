"""From merged.yaml to resolved.yaml (artifacts resolved) to job.yaml + eval.yaml (what evaluation reads)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nemotron_eval.artifacts import Resolved, registry_from_env
from nemotron_eval.config.compose import ART_RE, _replace_art
from nemotron_eval.config.envtoml import load_env_file
from nemotron_eval.errors import UserError
from nemotron_eval.io import stat_fingerprint
from nemotron_eval.spec import ModelSpec

ART_MODEL = "${art:model,path}"


def explicit_checkpoint(merged: dict[str, Any]) -> str | None:
    """`deployment.checkpoint_path` when it was set to a path instead of `${art:model,path}`."""
    value = (merged.get("deployment") or {}).get("checkpoint_path")
    if isinstance(value, str) and value and not ART_RE.search(value):
        return value
    return None


def resolve_model(merged: dict[str, Any], spec: ModelSpec) -> Resolved:
    """Resolve the checkpoint for `spec` cheaply; called at every invocation (Snakemake params)."""
    explicit = explicit_checkpoint(merged)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_absolute() or not path.exists():
            raise UserError(f"deployment.checkpoint_path={explicit}: not an existing absolute path")
        return Resolved(
            spec=spec.spec, registry="explicit", name=spec.name, version=None,
            digest=f"stat:{stat_fingerprint(path)}", path=str(path),
        )
    env = load_env_file()
    wandb_cfg = (merged.get("run") or {}).get("wandb") or {}
    return registry_from_env(env, wandb_cfg).resolve(spec)


def materialize(resolved: Resolved) -> Resolved:
    if resolved.registry != "wandb":
        return resolved
    return registry_from_env(load_env_file()).materialize(resolved)


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


def compile_job(resolved_cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """job.yaml (everything, resolved) and eval.yaml (the same without `run`)."""
    try:
        job = OmegaConf.to_container(OmegaConf.create(resolved_cfg), resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "?")
        raise UserError(f"cannot resolve {key}: {str(e).strip().splitlines()[0]}") from None
    assert isinstance(job, dict)
    name_squashed_image(job)
    eval_cfg = {k: v for k, v in job.items() if k != "run"}
    leftover = _find_interpolation(eval_cfg)
    if leftover:
        raise UserError(f"eval.yaml: {leftover[0]} still holds an interpolation {leftover[1]!r}")
    return job, eval_cfg


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


def compile_eval(merged: dict[str, Any], spec: ModelSpec, resolved: Resolved) -> dict[str, Any]:
    """eval.yaml's content, computed in memory (the same steps as the resolve and compile rules)."""
    return compile_job(resolve_artifacts(merged, spec, resolved))[1]


def task_fingerprint(eval_cfg: dict[str, Any], harness_task: str, model_digest: str | None) -> str:
    """sha256 of what one task's scores depend on in the config: the model's content, the deployment, the
    harness params and the task's own entry. Export, cluster and data-source settings are left out, so changing
    them reruns no evaluation (the staged data is an input of its own, with its digest)."""
    import hashlib
    import json

    evaluation = eval_cfg.get("evaluation") or {}
    relevant = {
        "model_digest": model_digest,
        "deployment": eval_cfg.get("deployment"),
        "target": eval_cfg.get("target"),
        "nemo_evaluator_config": evaluation.get("nemo_evaluator_config"),
        "task": [t for t in evaluation.get("tasks") or [] if t.get("name") == harness_task],
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


IMAGES_DIR = "build/images"


def name_squashed_image(cfg: dict[str, Any]) -> None:
    """On Slurm with pyxis/enroot the deployment runs the squashed image: name the .sqsh in the config."""
    from nemotron_eval.images import needs_squash, sqsh_name

    if needs_squash(cfg):
        image = str(cfg["deployment"]["image"])
        cfg["deployment"]["source_image"] = image
        cfg["deployment"]["image"] = f"{IMAGES_DIR}/{sqsh_name(image)}"
