"""What the installed harness defines: a NeMo Evaluator task's `config.params` defaults (its framework.yml),
lm-eval's task folder and task YAMLs, and the lm-eval task a NeMo Evaluator task runs."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

from nemotron_eval.core.errors import UserError
from nemotron_eval.data.tasks import Task


def framework_defaults(eval_type: str) -> dict[str, Any]:
    """`config.params` defaults of a NeMo Evaluator task, from the installed framework.yml."""
    return copy.deepcopy(_framework_params(eval_type))


@functools.cache
def _framework_params(eval_type: str) -> dict[str, Any]:
    from nemotron_eval.core.launcher import keep_root_logging, module

    with keep_root_logging():
        _, _, by_name = module("nemo_evaluator.core.input").get_available_evaluations()
    ev = by_name.get(eval_type)
    if isinstance(ev, list):
        ev = ev[0]
    if ev is None:
        raise UserError(f"NeMo Evaluator has no task {eval_type!r} (is nvidia-lm-eval installed?)")
    params: dict[str, Any] = ev.config.params.model_dump()
    return params


def lm_eval_tasks_dir() -> Path:
    """The installed harness's task folder, found without importing lm_eval (slow)."""
    import importlib.util

    found = importlib.util.find_spec("lm_eval")
    if found is None or not found.submodule_search_locations:
        raise UserError("lm_eval (nvidia-lm-eval) is not installed in this environment")
    return Path(list(found.submodule_search_locations)[0]) / "tasks"


class _Loader(yaml.SafeLoader):
    """Reads task YAMLs, keeping `!function x.y` as the string 'x.y'."""


_Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def load_task_yaml(path: Path) -> dict[str, Any]:
    """A task YAML with its `include:` chain merged (as lm-eval does); functions left as names."""
    with open(path, encoding="utf-8") as f:
        cfg: dict[str, Any] = yaml.load(f, Loader=_Loader) or {}
    includes = cfg.pop("include", [])
    merged: dict[str, Any] = {}
    for inc in [includes] if isinstance(includes, str) else includes:
        inc_path = Path(inc) if Path(inc).is_file() else path.parent / inc
        merged.update(load_task_yaml(inc_path))
    merged.update(cfg)
    return merged


def harness_task_name(task: Task) -> str:
    """The lm-eval task/group name NeMo Evaluator runs for `task`, checked against framework.yml."""
    name = framework_defaults(task.launcher).get("task")
    expected = task.lm_eval
    if name != expected:
        raise UserError(
            f"NeMo Evaluator task {task.launcher!r} runs lm-eval task {name!r}, not {expected!r}: "
            "installed nemo-evaluator/nvidia-lm-eval do not match this pipeline"
        )
    return str(expected)
