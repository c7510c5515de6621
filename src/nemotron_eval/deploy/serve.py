"""The deployment step: start one deployment of a checkpoint for all of its task jobs, publish its endpoint.

Snakemake runs this as a `service()` job in the same group as the model's evaluate_task jobs: it writes
run/{model}/endpoint.json at once (`starting`), then `ready` once the deployment answers, and keeps serving until
Snakemake stops the group. A deployment whose port takes requests while the model loads (they wait until it
serves: the CPU server) is published as `listening` in between, with its URLs: the harnesses start meanwhile. If the deployment dies or never becomes ready, the same file says so (with the tail of
its log), so consumers fail within seconds instead of at a timeout.

What runs is eval.yaml's `deployment`, planned by its type (`deploy.types.TYPES`: local, generic, vllm, none).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from nemotron_eval.deploy import types
from nemotron_eval.deploy.process import EndpointNotReady, alive
from nemotron_eval.core.io import log_tail
from nemotron_eval.core.errors import UserError
from nemotron_eval.core.io import read_json, write_json_atomic


def new_deployment_id(model: str) -> str:
    return f"{model}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def _say(message: str) -> None:
    print(f"[serve_model] {message}", file=sys.stderr, flush=True)


def serve(eval_yaml: Path, model: str, endpoint_file: Path, log_file: Path) -> int:
    """Serve until terminated; returns the exit status."""
    cfg = yaml.safe_load(Path(eval_yaml).read_text())
    deployment_id = new_deployment_id(model)
    base = {"deployment_id": deployment_id, "log": str(log_file)}
    # Snakemake waits only a few seconds for a service's output: publish "starting" at once, "ready" later.
    write_json_atomic(endpoint_file, {"state": "starting", **base, "pid": os.getpid()})
    runtime = types.Runtime(run_dir=Path(endpoint_file).parent, deployment_id=deployment_id, environ=dict(os.environ))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    try:
        kind = types.get((cfg.get("deployment") or {}).get("type"))
        plan = kind.plan(cfg, runtime)
        _say(f"starting the {plan.type} deployment ({plan.runner}), log {log_file}")
        process = kind.start(plan, log_file, runtime)
    except UserError as e:
        write_json_atomic(endpoint_file, {"state": "failed", **base, "error": str(e)})
        raise
    try:
        def listening(info: dict[str, Any]) -> None:
            write_json_atomic(endpoint_file, {**info, "state": LISTENING, "type": plan.type, **base})
            _say(f"deployment {deployment_id} listening at {info['url']} while {info['model_id']} loads")

        try:
            info = kind.wait_ready(plan, process, log_file, runtime, stop, on_listening=listening)
        except EndpointNotReady as e:
            return _failed(endpoint_file, base, str(e), stop)
        if info is None:
            write_json_atomic(endpoint_file, {"state": "failed", **base, "error": "the deployment step was stopped before it was ready"})
            return 0
        write_json_atomic(endpoint_file, {**info, "state": "ready", "type": plan.type, **base})
        _say(f"deployment {deployment_id} serving {info['model_id']} at {info['completions_url']}")
        while not stop.is_set() and (process is None or process.poll() is None):
            stop.wait(1.0)
        if not stop.is_set():
            assert process is not None
            return _failed(endpoint_file, base, f"the {plan.type} deployment exited with status {process.returncode} "
                           f"while serving; last lines of {log_file}:\n{log_tail(log_file)}", stop)
        _say(f"deployment {deployment_id} stopped")
        return 0
    finally:
        kind.stop(process)  # whatever ended the step: no deployment outlives it


LISTENING = "listening"  # the endpoint takes requests, answered once the model has loaded
CONSUMERS_GRACE_S = 60.0
POLL_S = 0.5  # how often a consumer looks at the endpoint file until its deployment is ready


def _failed(endpoint_file: Path, base: dict[str, Any], message: str, stop: threading.Event) -> int:
    """Publish the failure, then wait (until stopped, at most a minute) while the task jobs read it and fail with
    it in their own logs: ending at once would have Snakemake kill them before they can say why."""
    write_json_atomic(endpoint_file, {"state": "failed", **base, "error": message})
    _say(message)
    stop.wait(CONSUMERS_GRACE_S)
    return 1


def deployment_gone(endpoint_file: Path) -> str | None:
    """For consumers while they work: why the deployment they talk to is gone (its failure, with its log's tail,
    or its process ended without saying), else None."""
    try:
        info: dict[str, Any] = read_json(endpoint_file)
    except (OSError, ValueError):
        return f"the deployment's endpoint file {endpoint_file} is gone"
    if info.get("state") == "failed":
        return str(info.get("error") or "the deployment failed")
    pid = info.get("pid")
    if info.get("state") in ("ready", LISTENING) and isinstance(pid, int) and not alive(pid):
        return f"the deployment (pid {pid}) has exited; last lines of {info.get('log')}:\n{log_tail(info.get('log'))}"
    return None


def wait_for_service(endpoint_file: Path, timeout_s: float, listening: bool = False) -> dict[str, Any]:
    """For consumers: the endpoint once it answers, or with `listening` once it takes requests that it answers
    when ready (state `listening`: send them, they wait); fails at once when the deployment reported a failure."""
    deadline = time.monotonic() + timeout_s
    while True:
        info: dict[str, Any] = read_json(endpoint_file) if endpoint_file.exists() else {}
        state = info.get("state")
        if state == "failed":
            raise EndpointNotReady(info["error"])
        if state == LISTENING and listening:
            if deployment_gone(endpoint_file) is None:
                return info
        if state == "ready" and (not types.get(info.get("type")).health_checked or types.is_healthy(info["health_url"])):
            return info
        if state == "starting" and not alive(int(info["pid"])):
            raise EndpointNotReady(
                f"the deployment step (pid {info['pid']}) ended before its endpoint was ready; "
                f"last lines of {info['log']}:\n{log_tail(info['log'])}"
            )
        if time.monotonic() >= deadline:
            log = info.get("log") or str(endpoint_file.parent)
            raise EndpointNotReady(f"no deployment answered at {endpoint_file} within {timeout_s:g} s; last lines of {log}:\n{log_tail(log)}")
        time.sleep(POLL_S)
