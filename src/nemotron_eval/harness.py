"""Run one task through NeMo Evaluator (in-process harness, no container) on a staged dataset.

How a run is put together
-------------------------
* Data: `write_task_yamls` writes wrapper task YAMLs into `<output_dir>/lm_eval_tasks/` that
  `include:` the harness's own task files (installed `lm_eval/tasks/...`) and override only the
  data source (`dataset_path: json`, `dataset_name: null`, `dataset_kwargs.data_files` -> the
  staged `<config>/<split>.jsonl`). The task is renamed `staged_<harness task>` (MMLU: 57
  `staged_mmlu_str_<subject>` tasks, tags `staged_mmlu_str_<category>`, group `staged_mmlu_str`
  built from the harness's `mmlu_str.yaml`). Only when a staged dataset lacks the split the
  harness draws few-shot examples from (HellaSwag from the mirror: no train) does the wrapper
  also set `fewshot_split` = `test_split` = the evaluation split, which makes lm-eval draw one
  example more and drop the item being asked. See `nemotron_eval.data.stage` for why route B.
* Harness: `nemo-evaluator run_eval --run_config <file>`, started as `python -c ...` with this
  interpreter (same venv; `lm-eval` found on PATH next to it) as a child of the current job.
  Not `nemo_evaluator.api.evaluate()` in-process because that installs SIGTERM/SIGINT handlers
  that `sys.exit` and kill every child of the caller, starts its adapter proxy with the `spawn`
  method (which re-imports the caller's `__main__`: it must sit under `if __name__ ==
  "__main__"`), and its env vars (telemetry, offline flags, caches) would leak into the caller.
  A child also gets its own log file, exit status and timeout.
  A YAML run config avoids the comma/quote parsing of `--overrides`.
* `config.params` (`HarnessPlan.params`): the pipeline's params are passed through (deep-merged,
  nested `extra` included); on top the plan sets `task` (the staged name), `extra.args` (the
  framework's default args for the task, e.g. MMLU's `--trust_remote_code`, or the pipeline's,
  plus `--include_path <dir>`), `extra.tokenizer` (the checkpoint) and `extra.tokenizer_backend`.
* Env (`HarnessPlan.env`): `NEMO_EVALUATOR_TELEMETRY_LEVEL=0`, `HF_HUB_OFFLINE=1`,
  `HF_DATASETS_OFFLINE=1`, `TRANSFORMERS_OFFLINE=1` (staged data and a local tokenizer need no
  network), `HF_DATASETS_CACHE` set to a throwaway folder per run (the json loader's cache),
  and `PATH` with the interpreter's folder first.

Context length: never silently truncated
----------------------------------------
lm-eval's `local-completions` truncates log-likelihood prompts from the left to `max_length`
(default 2048, whatever the model) with only a log warning, and does not check generation
prompts at all when `tokenized_requests=false` (the framework default). The framework's
command template has no `max_length` field, so the checkpoint's context length (config.json
`max_position_embeddings`, or `context_length_tokens=`) is appended to the model_args through
`extra.tokenizer_backend` ("huggingface,max_length=N"): lm-eval then truncates only what the
model truly cannot take. After the run, `check_context` fails the task (`ContextOverflowError`)
if the harness log shows lm-eval's truncation warning or if any logged request
(samples_*.jsonl: context + continuation, or context + max_gen_toks) tokenizes to more than the
context length; prompts whose UTF-8 size already fits are not tokenized.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nemotron_eval.data.stage import read_manifest
from nemotron_eval.deploy.process import die_with_parent
from nemotron_eval.errors import UserError
from nemotron_eval.io import log_tail
from nemotron_eval.tasks import Task

STAGED_PREFIX = "staged_"
INCLUDE_DIR = "lm_eval_tasks"
RUN_CONFIG = "nemotron_run_config.yml"
RESULTS = "results.yml"
# `nemo-evaluator run_eval` (its console script) for this interpreter, wherever it is installed.
_ENTRYPOINT = "from nemo_evaluator.core.entrypoint import run_eval; run_eval()"

# lm-eval's warnings when it left-truncates a prompt.
TRUNCATION_MARKERS = ("Left truncating context", "were left truncated")
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


class HarnessError(UserError):
    """The harness failed or wrote no usable result: the first line says why (the user sees it), the rest is
    the harness log's tail (it goes to the step's log)."""


class ContextOverflowError(UserError):
    """A prompt of the task does not fit the model's context length."""


@dataclass(frozen=True)
class HarnessPlan:
    """Everything the harness needs for one task (on a staged dataset, or on the hub's)."""

    task_short: str
    eval_type: str  # NeMo Evaluator task (config.type), e.g. adlr_mmlu
    lm_eval_task: str  # passed as config.params.task; its metrics are read back
    is_group: bool  # MMLU: a group whose aggregate is the score
    include_dir: Path | None  # the staged task's wrapper YAMLs (--include_path); None: a hub task
    env: dict[str, str]  # set for the harness process
    params: dict[str, Any]  # config.params overrides, merged over the pipeline's params


# --- the harness's own definitions ----------------------------------------------------------


def framework_defaults(eval_type: str) -> dict[str, Any]:
    """`config.params` defaults of a NeMo Evaluator task, from the installed framework.yml."""
    return copy.deepcopy(_framework_params(eval_type))


@functools.cache
def _framework_params(eval_type: str) -> dict[str, Any]:
    from nemotron_eval.launcher import keep_root_logging, module

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


# --- wrapper YAMLs --------------------------------------------------------------------------


def staged_name(name: str) -> str:
    return STAGED_PREFIX + name


def _data_files(manifest: dict[str, Any], config: str, data_dir: Path) -> dict[str, str]:
    splits = manifest["configs"].get(config)
    if not splits:
        raise UserError(
            f"staged dataset {manifest['task']!r} has no config {config!r}; "
            f"staged: {', '.join(manifest['configs'])}"
        )
    return {split: str(data_dir / info["file"]) for split, info in sorted(splits.items())}


def _split_overrides(harness: dict[str, Any], staged: set[str], where: str) -> dict[str, Any]:
    """Overrides so lm-eval reads only staged splits: nothing, or few-shot from the eval split."""
    eval_split = harness.get("test_split") or harness.get("validation_split")
    if eval_split not in staged:
        raise UserError(f"{where}: the staged data has no {eval_split!r} split to evaluate on")
    shots = harness.get("fewshot_split") or harness.get("training_split")
    if shots is None or shots in staged:
        return {}
    # No few-shot pool: draw from the eval split itself; lm-eval then skips the doc being asked.
    return {
        "training_split": None,
        "validation_split": None,
        "test_split": eval_split,
        "fewshot_split": eval_split,
    }


def _wrapper(
    harness_yaml: Path, include: Path, new_name: str, data_files: dict[str, str], tag: str | None
) -> dict[str, Any]:
    """A task YAML including `harness_yaml` (read here; `include` as the harness sees it)."""
    harness = load_task_yaml(harness_yaml)
    cfg: dict[str, Any] = {
        "include": str(include),
        "task": new_name,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": data_files},
    }
    cfg.update(_split_overrides(harness, set(data_files), str(harness_yaml)))
    if tag is not None or "tag" in harness:
        cfg["tag"] = tag if tag is not None else []  # never join the harness's own tags
    return cfg


def write_task_yamls(
    task: Task,
    staged_dir: Path,
    include_dir: Path,
    *,
    tasks_dir: Path | None = None,
    data_dir: Path | None = None,
) -> str:
    """Write the wrapper YAMLs for a staged `task` into `include_dir`; return the task/group name.

    `tasks_dir` is the harness's lm_eval/tasks folder and `data_dir` the staged folder as the
    harness process sees them (both default to this machine's paths).
    """
    assert task.lm_eval and task.lm_eval_yaml, f"{task.short} is not a staged task"
    manifest = read_manifest(staged_dir)
    if manifest.get("task") != task.short:
        raise UserError(
            f"{Path(staged_dir) / 'manifest.json'}: staged for task {manifest.get('task')!r}, "
            f"not {task.short!r}"
        )
    local_tasks = lm_eval_tasks_dir()
    tasks_dir = Path(tasks_dir) if tasks_dir else local_tasks
    data_dir = Path(data_dir) if data_dir else Path(staged_dir).resolve()
    lm_name = harness_task_name(task)
    harness_yaml = local_tasks / task.lm_eval_yaml
    top = load_task_yaml(harness_yaml)
    if top.get("group", top.get("task")) != lm_name:
        raise UserError(f"{harness_yaml}: does not define {lm_name!r}; harness version mismatch?")

    if include_dir.exists():
        shutil.rmtree(include_dir)
    include_dir.mkdir(parents=True)
    files: dict[str, dict[str, Any]] = {}
    if "group" in top:  # MMLU: one wrapper per subtask of the group, plus the group
        members = set(top["task"])
        for sub in sorted(harness_yaml.parent.glob("*.yaml")):
            cfg = load_task_yaml(sub)
            tags = cfg.get("tag", [])
            tags = [tags] if isinstance(tags, str) else tags
            hits = [t for t in tags if t in members]
            if "group" in cfg or not (hits or cfg.get("task") in members):
                continue
            data = _data_files(manifest, cfg["dataset_name"], data_dir)
            tag = staged_name(hits[0]) if hits else None
            name = staged_name(cfg["task"])
            include = tasks_dir / sub.relative_to(local_tasks)
            files[f"{name}.yaml"] = _wrapper(sub, include, name, data, tag)
        group = {k: v for k, v in top.items() if k not in ("group", "task")}
        files[f"{staged_name(lm_name)}.yaml"] = {
            "group": staged_name(lm_name),
            "task": [staged_name(t) for t in top["task"]],
            **group,
        }
        n_sub = len(files) - 1
        if n_sub != len(manifest["configs"]):
            raise UserError(
                f"{harness_yaml.parent}: {n_sub} subtasks but {len(manifest['configs'])} staged "
                "configs; harness version mismatch?"
            )
    else:
        config = next(iter(manifest["configs"]))  # single-config datasets
        data = _data_files(manifest, config, data_dir)
        name = staged_name(lm_name)
        include = tasks_dir / harness_yaml.relative_to(local_tasks)
        files[f"{name}.yaml"] = _wrapper(harness_yaml, include, name, data, None)
    for name, cfg in files.items():
        (include_dir / name).write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return staged_name(lm_name)


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


# --- plan -----------------------------------------------------------------------------------


def context_length(checkpoint_dir: Path) -> int:
    """The model's context length from the checkpoint's config.json."""
    path = Path(checkpoint_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read the model's context length ({e})") from None
    cfg = {**cfg.get("text_config", {}), **cfg}
    for key in CONTEXT_KEYS:
        if isinstance(cfg.get(key), int) and cfg[key] > 0:
            return int(cfg[key])
    raise UserError(f"{path}: none of {', '.join(CONTEXT_KEYS)} is set; give context_length_tokens")


def harness_overrides(
    task: Task,
    include_dir: Path | None,
    *,
    tokenizer_dir: Path,
    max_length: int,
    lm_eval_task: str | None = None,
    extra_args: str | None = None,
    cache_dir: Path | None = None,
) -> HarnessPlan:
    """The plan for one task: env vars, `config.params` overrides and the name to read back.

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
    return HarnessPlan(
        task_short=task.short,
        eval_type=task.launcher,
        lm_eval_task=lm_name,
        is_group=task.group,
        include_dir=Path(include_dir) if include_dir is not None else None,
        env=env,
        params=params,
    )


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# --- run ------------------------------------------------------------------------------------


def run_harness(
    task: Task,
    staged_dir: Path | None,
    *,
    endpoint_url: str,
    model_id: str,
    tokenizer_dir: Path,
    params: Mapping[str, Any],
    output_dir: Path,
    log: Path | None = None,
    context_length_tokens: int | None = None,
    timeout_s: float | None = None,
    progress_url: str | None = None,
    abort: Callable[[], str | None] | None = None,
) -> None:
    """Run `task` against `endpoint_url` (the full /v1/completions URL): a staged task on `staged_dir`, any other
    task on the data the harness fetches from the hub (`staged_dir` None).

    The harness counts its answered requests into `output_dir/progress` (NeMo Evaluator's progress-tracking
    interceptor, see `nemotron_eval.progress`) and posts the count to `progress_url` when given. `abort` is asked
    every second while the harness runs: a reason (the deployment died) stops it (HarnessAborted).

    Writes the harness's outputs (results.yml, ...) to `output_dir` and its log to `log`
    (default `output_dir/harness.log`). Raises HarnessError (with the log's tail) when the
    harness fails, ContextOverflowError when a prompt does not fit the model, UserError when a hub task
    cannot reach the hub.
    """
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    log = Path(log) if log else output_dir / "harness.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = Path(tokenizer_dir).resolve()
    n_ctx = context_length_tokens or context_length(tokenizer_dir)
    include_dir: Path | None = None
    lm_name: str | None = None
    if staged_dir is not None:
        include_dir = output_dir / INCLUDE_DIR
        lm_name = write_task_yamls(task, Path(staged_dir), include_dir)
    else:
        check_hub_reachable(task)

    user_extra = dict(params.get("extra") or {})
    with tempfile.TemporaryDirectory(prefix="nemotron-harness-") as work:
        plan = harness_overrides(
            task,
            include_dir,
            tokenizer_dir=tokenizer_dir,
            max_length=n_ctx,
            lm_eval_task=lm_name,
            extra_args=user_extra.get("args"),
            cache_dir=Path(work) / "hf_datasets" if include_dir is not None else None,
        )
        run_config = {
            "config": {
                "type": plan.eval_type,
                "output_dir": str(output_dir),
                "params": deep_merge(params, plan.params),
            },
            "target": {
                "api_endpoint": {
                    "url": endpoint_url, "model_id": model_id, "type": task.endpoint_type,
                    "adapter_config": progress_tracking(progress_url),
                }
            },
        }
        cfg_path = output_dir / RUN_CONFIG
        cfg_path.write_text(yaml.safe_dump(run_config, sort_keys=False))
        cmd = [sys.executable, "-c", _ENTRYPOINT, "run_eval", "--run_config", str(cfg_path)]
        # cwd empty: a folder named like a task there would be read as a task path
        try:
            rc = _run_child(cmd, cwd=Path(work), env={**os.environ, **plan.env}, log=log,
                            timeout_s=timeout_s, abort=abort)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise HarnessError(
                f"{task.short}: harness still running after {timeout_s} s; "
                f"log {log}:\n{log_tail(log)}"
            ) from None
    if rc != 0:
        if include_dir is None and _hub_unreachable(log):
            raise UserError(_no_offline_data(task, "the harness could not reach the Hugging Face hub"))
        raise HarnessError(
            f"{task.short}: nemo-evaluator exited with status {rc}; log {log}:\n{log_tail(log)}"
        )
    if not (output_dir / RESULTS).is_file():
        raise HarnessError(f"{task.short}: harness wrote no {RESULTS}; log {log}:\n{log_tail(log)}")
    check_context(task.short, output_dir, log, tokenizer_dir=tokenizer_dir, n_ctx=n_ctx)


def progress_tracking(url: str | None) -> dict[str, Any]:
    """The adapter settings that make NeMo Evaluator count answered requests (`progress`) and post the count."""
    return {"use_progress_tracking": True, "progress_tracking_interval": 1,
            "progress_tracking_url": url or "http://127.0.0.1:9/progress"}  # port 9 (discard): nobody listens


HUB_HOST = "huggingface.co"
_HUB_ERRORS = ("Couldn't reach", "ConnectionError", "LocalEntryNotFoundError", "OfflineModeIsEnabled")


def _no_offline_data(task: Task, why: str) -> str:
    return (
        f"task {task.short!r} has no offline data (only the staged tasks mmlu, arc_challenge, winogrande, "
        f"hellaswag, openbookqa read the data mirror); its harness reads the dataset from the hub, and {why}"
    )


def check_hub_reachable(task: Task, timeout_s: float = 5.0) -> None:
    """A hub task needs the hub: fail in one line at once when it is off (HF_HUB_OFFLINE) or does not answer,
    instead of after the harness's 30 s of retries. The endpoint is `HF_ENDPOINT` when set."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise UserError(_no_offline_data(task, "HF_HUB_OFFLINE is set"))
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or f"https://{HUB_HOST}")
    host, port = endpoint.hostname or HUB_HOST, endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        raise UserError(_no_offline_data(task, f"{host}:{port} does not answer ({e.strerror or e})")) from None


def _hub_unreachable(log: Path) -> bool:
    try:
        text = log.read_bytes()[-200_000:].decode("utf-8", "replace")
    except OSError:
        return False
    return any(marker in text for marker in _HUB_ERRORS)


class HarnessAborted(HarnessError):
    """The harness was stopped because what it talks to is gone (the message says why)."""


def _run_child(
    cmd: list[str], *, cwd: Path, env: dict[str, str], log: Path, timeout_s: float | None,
    abort: Callable[[], str | None] | None = None,
) -> int:
    """Run `cmd` with output to `log`; on timeout, interrupt or `abort()` returning a reason (checked every
    second), stop it and its children."""
    import psutil

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with open(log, "wb") as out:
        # The harness gets SIGTERM when this step dies, however it dies (Snakemake kills a failed group's jobs
        # with SIGKILL): NeMo Evaluator then stops lm-eval and its adapter itself.
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        try:
            while True:
                try:
                    return proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise subprocess.TimeoutExpired(cmd, timeout_s) from None
                    reason = abort() if abort is not None else None
                    if reason:
                        raise HarnessAborted(reason) from None
        except BaseException:  # timeout, abort, KeyboardInterrupt, SIGTERM: leave no adapter or lm-eval behind
            procs = _descendants(psutil, proc.pid)
            for child in procs:
                with contextlib.suppress(psutil.Error):
                    child.terminate()
            _, alive = psutil.wait_procs(procs, timeout=5)
            for child in alive:
                with contextlib.suppress(psutil.Error):
                    child.kill()
            raise


def _descendants(psutil: Any, pid: int) -> list[Any]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


# --- context check --------------------------------------------------------------------------


def check_context(
    task_short: str, output_dir: Path, log: Path, *, tokenizer_dir: Path, n_ctx: int
) -> None:
    """Raise ContextOverflowError if the harness truncated, or would have had to, any prompt."""
    text = log.read_bytes().decode("utf-8", errors="replace") if log.is_file() else ""
    hits = sum(text.count(m) for m in TRUNCATION_MARKERS)
    if hits:
        raise ContextOverflowError(
            f"{task_short}: lm-eval left-truncated {hits} request(s) to the model's context of "
            f"{n_ctx} tokens (see {log}); use fewer few-shot examples or a longer-context model"
        )
    n_requests, too_long = 0, 0
    worst: tuple[int, str] = (0, "")
    long: list[tuple[str, str, int]] = []
    for doc, prompt, extra in _logged_requests(output_dir):
        n_requests += 1
        # A token is at least one UTF-8 byte: only prompts longer than that bound are tokenized.
        if len(prompt.encode()) + extra > n_ctx:
            long.append((doc, prompt, extra))
    if long:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        for start in range(0, len(long), 512):
            chunk = long[start : start + 512]
            ids = tok([p for _, p, _ in chunk], add_special_tokens=False)["input_ids"]
            for (doc, _, extra), i in zip(chunk, ids):
                if len(i) + extra > n_ctx:
                    too_long += 1
                    worst = max(worst, (len(i) + extra, doc))
    if too_long:
        raise ContextOverflowError(
            f"{task_short}: {too_long} of {n_requests} request(s) need more than the model's "
            f"context of {n_ctx} tokens (longest {worst[0]}: {worst[1]}); use fewer few-shot "
            "examples or a longer-context model"
        )


def _logged_requests(output_dir: Path) -> Iterator[tuple[str, str, int]]:
    """("<task> doc <id>", prompt text, extra tokens) per request in lm-eval's samples_*.jsonl.

    Log-likelihood: context + continuation, plus the one token the server generates.
    Generation: context, plus max_gen_toks.
    """
    for path in sorted(output_dir.rglob("samples_*.jsonl")):
        task = path.stem.removeprefix("samples_").rsplit("_", 1)[0]  # samples_<task>_<time>
        with open(path, encoding="utf-8") as f:
            for line in f:
                sample = json.loads(line)
                doc = f"{task} doc {sample.get('doc_id')}"
                for req in sample.get("arguments", {}).values():
                    ctx, second = req.get("arg_0", ""), req.get("arg_1")
                    if isinstance(second, dict):  # generate_until: (context, gen_kwargs)
                        yield doc, ctx, int(second.get("max_gen_toks", 256))
                    else:
                        yield doc, ctx + (second or ""), 1


# --- results --------------------------------------------------------------------------------


def parse_harness_output(output_dir: Path, task: Task) -> dict[str, Any]:
    """Scores of one run from the harness's results.yml (MMLU: the group's aggregate).

    Returns {"metrics": {name: {"value", "stderr"}}, "n_samples", "lm_eval_task", "raw"}.
    """
    path = Path(output_dir) / RESULTS
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise HarnessError(f"{path}: cannot read the harness's results ({e})") from None
    try:
        name = str(doc["config"]["params"]["task"])
        results = doc["results"]
    except (KeyError, TypeError):
        raise HarnessError(f"{path}: no config.params.task or results") from None
    if task.lm_eval is not None and name.removeprefix(STAGED_PREFIX) != task.lm_eval:
        raise HarnessError(f"{path}: results are for lm-eval task {name!r}, not {task.short!r}")
    section = (results.get("groups") or {}).get(name) or (results.get("tasks") or {}).get(name)
    if not section or not section.get("metrics"):
        raise HarnessError(f"{path}: no metrics for {name!r}")
    metrics: dict[str, dict[str, float | None]] = {}
    for metric, body in section["metrics"].items():
        score = (body.get("scores") or {}).get(metric)
        if score is None:
            continue
        stderr = (score.get("stats") or {}).get("stderr")
        metrics[metric] = {
            "value": float(score["value"]),
            "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
        }
    return {
        "metrics": metrics,
        "n_samples": _n_samples(Path(output_dir)),
        "lm_eval_task": name,
        "raw": RESULTS,
    }


def _n_samples(output_dir: Path) -> int:
    """Documents scored, from lm-eval's newest results_*.json (`n-samples`, summed over tasks)."""
    files = sorted(output_dir.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise HarnessError(f"{output_dir}: no lm-eval results_*.json to count samples from")
    counts = json.loads(files[-1].read_text()).get("n-samples") or {}
    return sum(int(c.get("effective", c.get("original", 0))) for c in counts.values())
