"""The harness's settings for one task (`HarnessRun`; in its harness's container: `in_container`), and the deep
merge of `config.params`.

* `config.params` (`HarnessRun.params`): the pipeline's params are passed through (deep-merged,
  nested `extra` included); on top `harness_overrides` sets `task` (the staged name), `extra.args` (the
  framework's default args for the task, e.g. MMLU's `--trust_remote_code`, or the pipeline's,
  plus `--include_path <dir>`), `extra.tokenizer` (the checkpoint) and `extra.tokenizer_backend`.
* Env (`HarnessRun.env`): `NEMO_EVALUATOR_TELEMETRY_LEVEL=0`, `HF_HUB_OFFLINE=1`,
  `HF_DATASETS_OFFLINE=1`, `TRANSFORMERS_OFFLINE=1` (staged data and a local tokenizer need no
  network), `HF_DATASETS_CACHE` set to a throwaway folder per run (the json loader's cache),
  and `PATH` with the interpreter's folder first.
* `adapter_env`: the worker threads of NeMo Evaluator's adapter proxy, sized to the requests a harness has in
  flight (`config.params.parallelism`) unless the environment sets them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nemotron_eval.evaluate.framework import framework_defaults, harness_task_name
from nemotron_eval.evaluate.task_yamls import staged_name
from nemotron_eval.data.tasks import Task


@dataclass(frozen=True)
class HarnessRun:
    """Everything the harness needs for one task (on a staged dataset, or on the hub's)."""

    task_short: str
    eval_type: str  # NeMo Evaluator task (config.type), e.g. adlr_mmlu
    lm_eval_task: str  # passed as config.params.task; its metrics are read back
    is_group: bool  # MMLU: a group whose aggregate is the score
    include_dir: Path | None  # the staged task's wrapper YAMLs (--include_path); None: a hub task
    env: dict[str, str]  # set for the harness process
    params: dict[str, Any]  # config.params overrides, merged over the pipeline's params


def harness_overrides(
    task: Task,
    include_dir: Path | None,
    *,
    tokenizer_dir: Path,
    max_length: int,
    lm_eval_task: str | None = None,
    extra_args: str | None = None,
    cache_dir: Path | None = None,
) -> HarnessRun:
    """The harness run of one task: env vars, `config.params` overrides and the name to read back.

    A staged task (`include_dir` holds its wrapper YAMLs) runs offline on the staged data: `--include_path` is
    appended to `extra_args` (default: the framework's) and `lm_eval_task` defaults to `staged_<harness task>`.
    Any other task runs as the harness defines it, its data from the hub.
    """
    defaults = framework_defaults(task.launcher)
    env = {
        "NEMO_EVALUATOR_TELEMETRY_LEVEL": "0",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    if cache_dir is not None:
        env["HF_DATASETS_CACHE"] = str(cache_dir)
    base = defaults.get("extra", {}).get("args") if extra_args is None else extra_args
    if include_dir is not None:  # staged data and a local tokenizer: no network at all
        env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        lm_name = lm_eval_task or staged_name(harness_task_name(task))
        args = " ".join(a for a in (base, f"--include_path {include_dir}") if a)
    else:
        lm_name = lm_eval_task or str(defaults.get("task") or task.launcher)
        args = base or ""
    params = {
        "task": lm_name,
        "extra": {
            "args": args,
            "tokenizer": str(tokenizer_dir),
            # lm-eval reads model_args from this template slot: the only way to set max_length
            "tokenizer_backend": f"huggingface,max_length={int(max_length)}",
        },
    }
    return HarnessRun(
        task_short=task.short,
        eval_type=task.launcher,
        lm_eval_task=lm_name,
        is_group=task.group,
        include_dir=Path(include_dir) if include_dir is not None else None,
        env=env,
        params=params,
    )


# NeMo Evaluator's adapter proxy (waitress) starts ADAPTER_SERVER_THREADS worker threads, 2,048 by default: 0.44 s
# of every harness's start on an idle 2-core EPYC, about 1 s beside a loading model (2026-12-06). A harness has at
# most `parallelism` requests in flight (lm-eval's num_concurrent) and its interceptors post a few more: twice that
# many threads, at least ADAPTER_THREADS_MIN, serve them without a queue.
ADAPTER_THREADS_MIN = 16


def adapter_env(params: Mapping[str, Any]) -> dict[str, str]:
    """ADAPTER_SERVER_THREADS for a harness run with `params` (its `config.params`), unless this environment
    sets it."""
    if "ADAPTER_SERVER_THREADS" in os.environ:
        return {}
    parallelism = params.get("parallelism")
    in_flight = parallelism if isinstance(parallelism, int) and parallelism > 0 else 1
    return {"ADAPTER_SERVER_THREADS": str(max(ADAPTER_THREADS_MIN, 2 * in_flight))}


def in_container(task: Task) -> HarnessRun:
    """The harness run of a task in its harness's container: as that harness defines it (the container's NeMo
    Evaluator applies its own defaults; this environment's would not know the task), telemetry off; PATH and the
    rest of the environment are the image's."""
    return HarnessRun(
        task_short=task.short, eval_type=task.launcher, lm_eval_task=task.launcher, is_group=False, include_dir=None,
        env={"NEMO_EVALUATOR_TELEMETRY_LEVEL": "0"}, params={},
    )


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
