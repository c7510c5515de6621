"""Glue for the Snakefile: config validation and one-line errors instead of tracebacks."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import jsonschema
import yaml

from nemotron_eval.errors import UserError

T = TypeVar("T")
SCHEMA = Path(__file__).parent / "schemas" / "config.schema.yaml"


def fail(message: str) -> NoReturn:
    sys.stderr.write(f"nemotron: error: {message}\n")
    raise SystemExit(1)


def or_exit(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn`; a UserError becomes one line on stderr and exit status 1 (nothing is written)."""
    try:
        return fn(*args, **kwargs)
    except UserError as e:
        fail(str(e))


def validate_config(config: dict[str, Any]) -> None:
    """Snakemake's `validate` (which also fills schema defaults); its error retold in one line naming the key."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    try:
        validate(config, str(SCHEMA))
        return
    except WorkflowError:
        pass
    schema = yaml.safe_load(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.path))
    if not errors:
        fail("Snakemake config does not match " + str(SCHEMA))
    e = errors[0]
    key = ".".join(str(p) for p in e.path) or "config"
    if e.validator == "additionalProperties":
        valid = ", ".join(schema["properties"])
        fail(f"Snakemake config: {e.message}; valid keys: {valid}")
    if e.validator == "required":
        fail(f"Snakemake config: {e.message} (set it in the profile or with --config)")
    fail(f"Snakemake config key {key!r}: {e.message}")


def resolved_section(merged: dict[str, Any], key: str) -> dict[str, Any]:
    """A section of the merged config with its interpolations resolved (it must not use ${art:...})."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        node = OmegaConf.select(OmegaConf.create(merged), key)
        value = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    except OmegaConfBaseException as e:
        raise UserError(f"{key}: cannot resolve: {str(e).strip().splitlines()[0]}") from None
    assert isinstance(value, dict)
    return value


def image_to_squash(merged: dict[str, Any]) -> dict[str, str]:
    """{sqsh file name without .sqsh: image reference} for the deployment's image, when Slurm runs it squashed."""
    from nemotron_eval.images import needs_squash, sqsh_name

    cfg = {"execution": resolved_section(merged, "execution"), "deployment": {
        "type": merged["deployment"].get("type"),
        "image": resolved_section({"d": {"image": merged["deployment"].get("image")}}, "d").get("image"),
    }}
    if not needs_squash(cfg):
        return {}
    image = str(cfg["deployment"]["image"])
    return {sqsh_name(image).removesuffix(".sqsh"): image}


def staged_from_mirror(staged: Path) -> str | None:
    """The mirror folder a staged dataset came from, if it still exists."""
    import json

    try:
        source = str(json.loads((staged / "manifest.json").read_text()).get("source", ""))
    except (OSError, ValueError):
        return None
    path = source.removeprefix("mirror:") if source.startswith("mirror:") else None
    return path if path and Path(path).is_dir() else None


def embedded_record(spec: Any, folder: str) -> dict[str, Any]:
    """The embedded model's identity before it is resolved: the GGUF it is converted from (cheap: name, size,
    mtime), and the folder it is converted into."""
    from nemotron_eval.io import stat_fingerprint
    from nemotron_eval.model import find_smollm2_gguf

    gguf = find_smollm2_gguf()
    return {
        "spec": spec.spec,
        "registry": "local",
        "name": spec.name,
        "version": None,
        "digest": f"gguf:{stat_fingerprint(gguf)}",
        "path": str(Path(folder).resolve()),
        "qualified_name": None,
        "embedded": gguf.name,
    }
