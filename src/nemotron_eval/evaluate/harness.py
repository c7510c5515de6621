"""Run one task through NeMo Evaluator, on a staged dataset or the hub's: in this environment, or in the task's
harness container where its harness is not installed here (`HarnessContainer`).

How a run is put together
-------------------------
* Data: the wrapper task YAMLs of `nemotron_eval.evaluate.task_yamls` (staged tasks), or the hub (any other).
* Harness: `nemo-evaluator run_eval --run_config <file>`, started as `python -c ...` with this
  interpreter (same venv; `lm-eval` found on PATH next to it) as a child of the current job.
  Not `nemo_evaluator.api.evaluate()` in-process because that installs SIGTERM/SIGINT handlers
  that `sys.exit` and kill every child of the caller, starts its adapter proxy with the `spawn`
  method (which re-imports the caller's `__main__`: it must sit under `if __name__ ==
  "__main__"`), and its env vars (telemetry, offline flags, caches) would leak into the caller.
  A child also gets its own log file, exit status and timeout.
  A YAML run config avoids the comma/quote parsing of `--overrides`.
  A task whose harness is not installed here runs `run_eval` in its container instead (pyxis, enroot or
  apptainer: `nemotron_eval.executors.runners`), the harness folder mounted where it is here.
* Settings: `nemotron_eval.evaluate.overrides` (`HarnessRun`: env vars and `config.params` overrides).
* After the run: `nemotron_eval.evaluate.context.check_context` (no prompt truncated), then the scores
  (`nemotron_eval.evaluate.output`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nemotron_eval.deploy.process import dies_with_this_process
from nemotron_eval.core.errors import UserError
from nemotron_eval.evaluate.context import check_context, context_length
from nemotron_eval.evaluate.output import RESULTS, HarnessError
from nemotron_eval.evaluate.overrides import adapter_env, deep_merge, harness_overrides, in_container
from nemotron_eval.evaluate.task_yamls import INCLUDE_DIR, write_task_yamls
from nemotron_eval.core.io import log_tail
from nemotron_eval.data.stage import hub_off
from nemotron_eval.data.tasks import Task

_log = logging.getLogger("nemotron_eval")  # `log` is run_harness's harness log path

RUN_CONFIG = "nemotron_run_config.yml"
# `nemo-evaluator run_eval` (its console script) for this interpreter, wherever it is installed.
_ENTRYPOINT = "from nemo_evaluator.core.entrypoint import run_eval; run_eval()"


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
    container: HarnessContainer | None = None,
    capability_probe: bool = True,
) -> None:
    """Run `task` against `endpoint_url` (the full /v1/completions URL): a staged task on `staged_dir`, any other
    task on the data the harness fetches from the hub (`staged_dir` None).

    `capability_probe` False: NeMo Evaluator skips its probe of the endpoint (one request per capability the task
    requires, sent before anything else with a timeout of 30 s, its answer only logged). For a deployment that
    still loads its model: its requests wait until it serves, the probe would fail the harness when the load
    takes longer, and the harness's start (its adapter, lm-eval's imports and prompts) goes on during the load.

    The harness counts its answered requests into `output_dir/progress` (NeMo Evaluator's progress-tracking
    interceptor, see `nemotron_eval.evaluate.progress`) and posts the count to `progress_url` when given. `abort` is asked
    every second while the harness runs: a reason (the deployment died) stops it (HarnessAborted). `container`:
    the harness runs there (`HarnessContainer`), not in this environment.

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
    n_ctx = context_length_tokens or (context_length(tokenizer_dir) if container is None else 0)
    include_dir: Path | None = None
    lm_name: str | None = None
    if staged_dir is not None:
        include_dir = output_dir / INCLUDE_DIR
        lm_name = write_task_yamls(task, Path(staged_dir), include_dir)
    elif container is None:  # in its container, where its data comes from is its harness's business
        check_hub_reachable(task)

    dropped = drop_incomplete_answers(output_dir / "cache")
    if dropped:
        _log.warning("%s: dropped %d incomplete answer(s) from the harness's cache in %s (an interrupted run's); "
                       "they are asked again", task.short, dropped, output_dir / "cache")
    user_extra = dict(params.get("extra") or {})
    with tempfile.TemporaryDirectory(prefix="nemotron-harness-") as work:
        # in its container, the task runs as its harness there defines it (its NeMo Evaluator's defaults)
        run = harness_overrides(
            task,
            include_dir,
            tokenizer_dir=tokenizer_dir,
            max_length=n_ctx,
            lm_eval_task=lm_name,
            extra_args=user_extra.get("args"),
            cache_dir=Path(work) / "hf_datasets" if include_dir is not None else None,
        ) if container is None else in_container(task)
        run_config: dict[str, Any] = {
            "config": {
                "type": run.eval_type,
                "output_dir": str(output_dir),
                "params": deep_merge(params, run.params),
                **({} if capability_probe else {"required_capabilities": []}),
            },
            "target": {
                "api_endpoint": {
                    "url": endpoint_url, "model_id": model_id, "type": task.endpoint_type,
                    "adapter_config": progress_tracking(progress_url),
                }
            },
        }
        # in its container, the image's NeMo Evaluator keeps its own adapter settings
        env = {**run.env, **(adapter_env(params) if container is None else {})}
        cfg_path = output_dir / RUN_CONFIG
        cfg_path.write_text(yaml.safe_dump(run_config, sort_keys=False))
        cmd = [sys.executable, "-c", _ENTRYPOINT, "run_eval", "--run_config", str(cfg_path)]
        if container is not None:
            cmd = container.argv(cfg_path, binds=(output_dir,), env_names=[*env, "ADAPTER_PORT"])
        # cwd empty: a folder named like a task there would be read as a task path
        try:
            rc = _run_child(cmd, cwd=Path(work), env={**os.environ, **env}, log=log,
                            timeout_s=timeout_s, abort=abort)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise HarnessError(
                f"{task.short}: harness still running after {timeout_s} s; "
                f"log {log}:\n{log_tail(log)}"
            ) from None
    if rc != 0:
        if include_dir is None and container is None and _hub_unreachable(log):
            raise UserError(_no_offline_data(task, "the harness could not reach the Hugging Face hub"))
        raise HarnessError(
            f"{task.short}: nemo-evaluator exited with status {rc}; log {log}:\n{log_tail(log)}"
        )
    if not (output_dir / RESULTS).is_file():
        raise HarnessError(f"{task.short}: harness wrote no {RESULTS}; log {log}:\n{log_tail(log)}")
    if container is None:  # lm-eval's requests, checked against the model's context
        check_context(task.short, output_dir, log, tokenizer_dir=tokenizer_dir, n_ctx=n_ctx)


def drop_incomplete_answers(cache_dir: Path) -> int:
    """Remove from NeMo Evaluator's response cache in `cache_dir` (its caching interceptor's, reused when a harness
    folder runs again) every answer that is not a whole JSON document; returns how many. A run killed while the
    interceptor stored an answer can leave it empty, and the rerun's harness would be given that answer again and
    again until it fails (lm-eval retries a request whose answer it cannot read, from the same cache)."""
    responses = cache_dir / "responses"
    if not (responses / "cache.db").is_file():
        return 0
    from nemo_evaluator.adapters.caching.diskcaching import Cache

    answers, headers = Cache(directory=str(responses)), Cache(directory=str(cache_dir / "headers"))
    try:
        bad = []
        for key in list(answers):
            try:
                json.loads(answers[key])
            except (ValueError, TypeError, KeyError, OSError):
                bad.append(key)
        for key in bad:
            for cache in (answers, headers):
                with contextlib.suppress(KeyError):
                    del cache[key]
        return len(bad)
    finally:
        answers.close()
        headers.close()


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


def installed_here(task: Task) -> bool:
    """Whether `task`'s harness runs in this environment (the staged tasks are lm-eval's, a dependency of this
    project: asking NeMo Evaluator takes 2 s per plan)."""
    from nemotron_eval.data.tasks import installed_harnesses

    return task.offline or task.harness in installed_harnesses()


def harness_container(task: Task, entry: Mapping[str, Any], container_runner: str) -> str | None:
    """The image `task`'s harness runs in, or None when it runs here: a task whose harness is not installed here,
    with a container runner, runs in its `evaluation.tasks` entry's `container`, else the launcher catalog's."""
    if installed_here(task) or container_runner == "none":
        return None
    return str(entry.get("container") or task.container) or None


def refusal(task: Task, execution: Mapping[str, Any], has_data: bool, entry: Mapping[str, Any] | None = None) -> str | None:
    """Why this pipeline cannot evaluate `task` (None: it can), said when the plan is made, before any deployment
    starts. A task's harness runs in this environment, or in its container (`harness_container`) where
    execution.container_runner starts one: a task whose harness is not installed here needs one the runner can
    start; a task that runs here without data (`has_data`: staged from a mirror, or staged before) needs the
    hub, and HF_HUB_OFFLINE switches it off."""
    from nemotron_eval.deploy.images import enroot_problem, squashes
    from nemotron_eval.executors.runners import runner_of

    runner = runner_of(execution)
    container = harness_container(task, entry or {}, runner)
    if not installed_here(task) and container is None:
        where = (
            f"execution.container_runner={runner} starts no harness container"
            if runner == "none" else
            "neither its evaluation.tasks entry nor the launcher's catalog names its container (set `container`)"
        )
        return f"task {task.short!r} cannot run: its harness {task.harness} is not installed here and {where}"
    if container:
        problem = enroot_problem(runner, container, f"evaluation.tasks.{task.short}.container",
                                 squashed_later=squashes(execution, container))
        return f"task {task.short!r} cannot run in its harness container: {problem}" if problem else None
    if not has_data and hub_off():
        if task.offline:
            return (f"task {task.short!r} cannot be staged: no data mirror (data.mirror or NEMOTRON_DATA_MIRROR) "
                    "and HF_HUB_OFFLINE is set")
        return _no_offline_data(task, "HF_HUB_OFFLINE is set")
    return None


def check_hub_reachable(task: Task, timeout_s: float = 5.0) -> None:
    """A hub task needs the hub: fail in one line at once when it is off (HF_HUB_OFFLINE) or does not answer,
    instead of after the harness's 30 s of retries. The endpoint is `HF_ENDPOINT` when set."""
    import socket
    from urllib.parse import urlparse

    if hub_off():
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


# The harness's program in its container, as the launcher starts it: `nemo-evaluator`, or `eval-factory` in older
# images. A fixed program; the run config's path is an argument.
IN_CONTAINER = (
    "sh", "-c", 'if command -v nemo-evaluator >/dev/null 2>&1; then exec nemo-evaluator "$@"; else exec eval-factory "$@"; fi',
    "sh", "run_eval", "--run_config",
)


@dataclass(frozen=True)
class HarnessContainer:
    """Where a harness that is not installed here runs: its image (as `runner` names it, job.yaml's
    `run.tasks.<task>.container`), with the harness folder mounted at its own path, the evaluation's mounts (`execution.mounts.evaluation`), and the environment passed by name."""

    runner: str
    image: str
    mounts: Mapping[str, str] = field(default_factory=dict)
    mount_home: bool = False
    env_names: tuple[str, ...] = ()  # beyond the harness's own settings: the config's env_vars, HF_TOKEN, ...

    @classmethod
    def of(cls, entry: Mapping[str, Any], execution: Mapping[str, Any], env_names: Sequence[str] = ()) -> HarnessContainer:
        mounts = execution.get("mounts") or {}
        return cls(
            runner=str(entry["runner"]), image=str(entry["image"]),
            mounts={str(k): str(v) for k, v in (mounts.get("evaluation") or {}).items()},
            mount_home=bool(mounts.get("mount_home")), env_names=tuple(env_names),
        )

    def argv(self, run_config: Path, *, binds: Sequence[Path], env_names: Sequence[str]) -> list[str]:
        """The argv that runs `run_eval --run_config RUN_CONFIG` in the container (no GPU: it is a client)."""
        from nemotron_eval.executors.runners import container_runner_wrap

        mounts = {str(p): str(p) for p in binds} | dict(self.mounts)
        names = sorted({*env_names, *self.env_names})
        return container_runner_wrap(
            self.runner, self.image, [*IN_CONTAINER, str(run_config)], mounts, names, gpus=0, mount_home=self.mount_home,
            srun=False,
        )


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
            preexec_fn=dies_with_this_process(),
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
