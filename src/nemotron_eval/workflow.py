"""The functions Snakemake rules call: one per rule, each reading and writing files only."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from nemotron_eval.artifacts import Resolved
from nemotron_eval.config import compile as compile_mod
from nemotron_eval.config.compose import ComposeRequest, compose
from nemotron_eval.io import write_yaml_atomic
from nemotron_eval.spec import parse_wildcard

log = logging.getLogger("nemotron_eval")


def compose_config(request: ComposeRequest, out: Path) -> None:
    """build/{model}/merged.yaml"""
    cfg = compose(request)
    write_yaml_atomic(out, cfg)
    log.info("composed %s (+ env profile %s, %d overrides) -> %s", request.eval_config, request.env_profile, len(request.overrides), out)


def resolve_config(merged: Path, model: str, record: dict[str, Any], out: Path) -> None:
    """build/{model}/resolved.yaml; `record` is what the registry said at DAG-build time."""
    spec = parse_wildcard(model)
    resolved = compile_mod.materialize(Resolved(**record))
    cfg = compile_mod.resolve_artifacts(yaml.safe_load(merged.read_text()), spec, resolved)
    write_yaml_atomic(out, cfg)
    log.info("resolved %s -> %s %s (digest %s) at %s", spec.spec, resolved.registry, resolved.version, resolved.digest, resolved.path)


def compile_config(resolved: Path, job_out: Path, eval_out: Path) -> None:
    """build/{model}/job.yaml and build/{model}/eval.yaml"""
    job, eval_cfg = compile_mod.compile_job(yaml.safe_load(resolved.read_text()))
    write_yaml_atomic(job_out, job)
    write_yaml_atomic(eval_out, eval_cfg)
    log.info("compiled %s and %s", job_out, eval_out)


@contextmanager
def logged(path: str | Path) -> Iterator[None]:
    """Send this package's log lines to a rule's `log:` file (and stderr) while a rule runs."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handlers = [logging.FileHandler(path, mode="w"), logging.StreamHandler(sys.stderr)]
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    previous = log.level
    log.setLevel(logging.INFO)
    try:
        yield
    except Exception:
        log.exception("failed")
        raise
    finally:
        log.setLevel(previous)
        for h in handlers:
            log.removeHandler(h)
            h.close()
