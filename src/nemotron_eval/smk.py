"""Glue for the Snakefile: config validation and one-line errors instead of tracebacks (nothing is written)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import jsonschema
import yaml

from nemotron_eval.errors import PREFIX, UserError

T = TypeVar("T")
SCHEMA = Path(__file__).parent / "schemas" / "config.schema.yaml"


def fail(message: str) -> NoReturn:
    sys.stderr.write(f"{PREFIX}{message}\n")
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
