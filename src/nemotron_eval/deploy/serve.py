"""The deployment step: start one deployment of a checkpoint for all of its task jobs, publish its endpoint.

Snakemake runs this as a `service()` job in the same group as the model's evaluate_task jobs: it writes
run/{model}/endpoint.json once the server answers, then keeps serving until Snakemake stops the group. If the
server dies or never becomes ready, the same file says so (with the tail of the server's log), so consumers
fail within seconds instead of at a timeout.
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

from nemotron_eval.deploy.ready import (
    EndpointNotReady,
    is_healthy,
    log_tail,
    process_running,
    start_server,
    stop_server,
    wait_for_endpoint,
)
from nemotron_eval.errors import UserError
from nemotron_eval.io import read_json, write_json_atomic


def new_deployment_id(model: str) -> str:
    return f"{model}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def _say(message: str) -> None:
    print(f"[serve_model] {message}", file=sys.stderr, flush=True)


def serve(eval_yaml: Path, model: str, endpoint_file: Path, log_file: Path) -> int:
    """Serve until terminated; returns the exit status."""
    cfg = yaml.safe_load(Path(eval_yaml).read_text())
    dep: dict[str, Any] = cfg["deployment"]
    deployment_id = new_deployment_id(model)
    # Snakemake waits only a few seconds for a service's output: publish "starting" at once, "ready" later.
    write_json_atomic(endpoint_file, {"state": "starting", "deployment_id": deployment_id, "pid": os.getpid(), "log": str(log_file)})
    if dep["type"] == "local":
        return _serve_local(dep, deployment_id, endpoint_file, log_file)
    if dep["type"] == "none":
        return _publish_existing(dep, deployment_id, endpoint_file)
    raise UserError(f"{eval_yaml}: deployment.type {dep['type']!r} is served on a cluster (Slurm profile), not by this step")


def _serve_local(dep: dict[str, Any], deployment_id: str, endpoint_file: Path, log_file: Path) -> int:
    private = endpoint_file.with_name(f".{endpoint_file.name}.server")
    process = start_server(
        Path(dep["checkpoint_path"]),
        endpoint_file=private,
        log_file=log_file,
        host=str(dep.get("host", "127.0.0.1")),
        port=int(dep.get("port", 0)),
        dtype=str(dep.get("dtype", "float32")),
        served_model_name=str(dep.get("served_model_name") or "model"),
        max_batch_size=int(dep.get("max_batch_size", 8)),
        deployment_id=deployment_id,
        die_with_parent=True,
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    _say(f"starting {dep['checkpoint_path']} ({dep.get('dtype', 'float32')}), log {log_file}")
    try:
        info = wait_for_endpoint(private, pid=process.pid, log_file=log_file, timeout_s=float(dep.get("readiness_timeout_s", 300)))
    except EndpointNotReady as e:
        write_json_atomic(endpoint_file, {"state": "failed", "deployment_id": deployment_id, "error": str(e), "log": str(log_file)})
        _say(str(e))
        stop_server(process)
        return 1
    write_json_atomic(endpoint_file, {**info, "state": "ready", "type": "local", "deployment_id": deployment_id, "log": str(log_file)})
    private.unlink(missing_ok=True)
    _say(f"deployment {deployment_id} serving {info['model_id']} at {info['completions_url']}")
    while not stop.is_set() and process.poll() is None:
        stop.wait(1.0)
    if process.poll() is not None and not stop.is_set():
        message = f"the model server exited with status {process.returncode} while serving; last lines of {log_file}:\n{log_tail(log_file)}"
        write_json_atomic(endpoint_file, {"state": "failed", "deployment_id": deployment_id, "error": message, "log": str(log_file)})
        _say(message)
        return 1
    stop_server(process)
    _say(f"deployment {deployment_id} stopped")
    return 0


def _publish_existing(dep: dict[str, Any], deployment_id: str, endpoint_file: Path) -> int:
    url = str(dep["url"]).rstrip("/")
    base = url.removesuffix("/v1/completions").removesuffix("/completions")
    info = {
        "state": "ready",
        "type": "none",
        "url": base,
        "completions_url": url if url.endswith("completions") else f"{base}/v1/completions",
        "health_url": f"{base}{dep.get('health_check_path', '/health')}",
        "model_id": dep["served_model_name"],
        "deployment_id": deployment_id,
        "api_key_name": dep.get("api_key_name"),
    }
    write_json_atomic(endpoint_file, info)
    _say(f"using the existing endpoint {info['completions_url']}")
    signal.sigwait({signal.SIGTERM, signal.SIGINT})  # a service stays up until Snakemake stops it
    return 0


def wait_for_service(endpoint_file: Path, timeout_s: float) -> dict[str, Any]:
    """For consumers: the endpoint once it answers; fails at once when the deployment reported a failure."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = read_json(endpoint_file) if endpoint_file.exists() else None
        state = (info or {}).get("state")
        if state == "failed":
            raise EndpointNotReady(info["error"])
        if state == "ready" and (info.get("type") == "none" or is_healthy(info)):
            return info
        if state == "starting" and not process_running(int(info["pid"])):
            raise EndpointNotReady(f"the deployment step (pid {info['pid']}) ended before its endpoint was ready; last lines of {info['log']}:\n{log_tail(info['log'])}")
        if time.monotonic() >= deadline:
            log = (info or {}).get("log") or str(endpoint_file.parent)
            raise EndpointNotReady(f"no deployment answered at {endpoint_file} within {timeout_s:g} s; last lines of {log}:\n{log_tail(log)}")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - thin CLI
    import argparse

    p = argparse.ArgumentParser(prog="python -m nemotron_eval.deploy.serve")
    p.add_argument("--eval", type=Path, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--endpoint-file", type=Path, required=True)
    p.add_argument("--log", type=Path, required=True)
    a = p.parse_args(argv)
    try:
        return serve(a.eval, a.model, a.endpoint_file, a.log)
    except UserError as e:
        print(f"nemotron: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
