"""The deployment step: start one deployment of a checkpoint for all of its task jobs, publish its endpoint.

Snakemake runs this as a `service()` job in the same group as the model's evaluate_task jobs: it writes
run/{model}/endpoint.json once the server answers, then keeps serving until Snakemake stops the group. If the
server dies or never becomes ready, the same file says so (with the tail of the server's log), so consumers
fail within seconds instead of at a timeout.

Deployment types: `local` (the CPU server), `none` (an existing endpoint), and `generic`/`vllm`: the command
planned by `commands.deployment_command` (in its container runner, through srun on Slurm), started in its own
process group and stopped with it; its health URL is polled on the first node of the job.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from nemotron_eval.deploy.commands import DeploymentPlan, deployment_command
from nemotron_eval.deploy.ready import (
    EndpointNotReady,
    _die_with_parent,
    is_healthy,
    log_tail,
    process_running,
    start_server,
    stop_server,
    wait_for_endpoint,
)
from nemotron_eval.errors import UserError
from nemotron_eval.images import image_file
from nemotron_eval.io import read_json, write_json_atomic

CLUSTER_TYPES = ("generic", "vllm")
STOP_GRACE_S = 30.0  # srun needs a moment to cancel its step on every node


def new_deployment_id(model: str) -> str:
    return f"{model}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def _say(message: str) -> None:
    print(f"[serve_model] {message}", file=sys.stderr, flush=True)


def serve(eval_yaml: Path, model: str, endpoint_file: Path, log_file: Path, images_dir: Path = Path("build/images")) -> int:
    """Serve until terminated; returns the exit status. `images_dir` holds the squashed images (pyxis, enroot)."""
    cfg = yaml.safe_load(Path(eval_yaml).read_text())
    dep: dict[str, Any] = cfg["deployment"]
    deployment_id = new_deployment_id(model)
    # Snakemake waits only a few seconds for a service's output: publish "starting" at once, "ready" later.
    write_json_atomic(endpoint_file, {"state": "starting", "deployment_id": deployment_id, "pid": os.getpid(), "log": str(log_file)})
    if dep["type"] == "local":
        return _serve_local(dep, deployment_id, endpoint_file, log_file)
    if dep["type"] == "none":
        return _publish_existing(cfg, deployment_id, endpoint_file)
    if dep["type"] in CLUSTER_TYPES:
        try:
            plan = deployment_command(cfg, image=_squashed_image(cfg, images_dir), environ=os.environ)
        except UserError as e:
            write_json_atomic(endpoint_file, {"state": "failed", "deployment_id": deployment_id, "error": str(e), "log": str(log_file)})
            raise
        return _serve_plan(plan, deployment_id, endpoint_file, log_file)
    raise UserError(f"{eval_yaml}: deployment.type={dep['type']!r}: unknown; valid: local, none, {', '.join(CLUSTER_TYPES)}")


def _squashed_image(cfg: dict[str, Any], images_dir: Path) -> str | None:
    path = image_file(cfg, images_dir)
    if path is None:
        return None
    if not path.is_file():
        raise UserError(f"deployment.image={cfg['deployment']['image']}: its squashed image {path} is missing (the squash_image rule makes it)")
    return str(path.resolve())  # pyxis takes a file only by an absolute path


def first_node(environ: Mapping[str, str] = os.environ) -> str:
    """The first node of this Slurm job (where a deployment's task 0 runs); this host outside Slurm."""
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    if nodelist and shutil.which("scontrol"):
        try:
            hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30, check=True).stdout.split()
        except (subprocess.SubprocessError, OSError):
            hosts = []
        if hosts:
            return hosts[0]
    return environ.get("SLURMD_NODENAME") or "127.0.0.1"


def _start_plan(plan: DeploymentPlan, log_file: Path) -> subprocess.Popen[bytes]:
    """The planned command in its own process group (to be stopped with all its children), logging to `log_file`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("wb") as log:
        log.write(f"$ {shlex.join(plan.argv)}\n".encode())
        log.flush()
        return subprocess.Popen(
            plan.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=plan.process_env(os.environ),
            start_new_session=True, preexec_fn=_die_with_parent,
        )


def group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (zombies waiting to be reaped do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not Path("/proc/self/stat").exists():
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[-1].split()  # state, ppid, pgrp, ...
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _stop_group(process: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to the deployment's process group; SIGKILL to what is left of it after `grace_s`."""
    pgid = process.pid  # start_new_session: the leader's pid is the group's id
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while group_alive(pgid) and time.monotonic() < deadline:
        process.poll()
        time.sleep(0.1)
    _signal_group(pgid, signal.SIGKILL)
    process.wait()


def _wait_healthy(plan: DeploymentPlan, process: subprocess.Popen[bytes], health_url: str, log_file: Path, stop: threading.Event) -> bool:
    """True once `health_url` answers 200, False when stopped by a signal; raises EndpointNotReady as soon as the
    process exits (polled every 0.5 s) or after the plan's readiness timeout, with the log's tail."""
    deadline = time.monotonic() + plan.readiness_timeout_s
    while not stop.is_set():
        if is_healthy({"health_url": health_url}):
            return True
        if process.poll() is not None:
            raise EndpointNotReady(
                f"the {plan.type} deployment exited with status {process.returncode} before {health_url} answered; "
                f"last lines of {log_file}:\n{log_tail(log_file)}"
            )
        if time.monotonic() >= deadline:
            raise EndpointNotReady(
                f"the {plan.type} deployment did not answer at {health_url} within {plan.readiness_timeout_s:g} s "
                f"(deployment.readiness_timeout_s); last lines of {log_file}:\n{log_tail(log_file)}"
            )
        stop.wait(0.5)
    return False


def _serve_plan(plan: DeploymentPlan, deployment_id: str, endpoint_file: Path, log_file: Path) -> int:
    """Start a generic or vllm deployment, publish it once healthy, keep it up until SIGTERM/SIGINT."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    urls = plan.urls(None if plan.host else first_node())
    _say(f"starting the {plan.type} deployment ({plan.runner}), health at {urls['health_url']}, log {log_file}")
    process = _start_plan(plan, log_file)
    failed = {"state": "failed", "deployment_id": deployment_id, "log": str(log_file)}
    try:
        if not _wait_healthy(plan, process, urls["health_url"], log_file, stop):
            write_json_atomic(endpoint_file, {**failed, "error": "the deployment step was stopped before its server was ready"})
            _stop_group(process)
            return 0
    except EndpointNotReady as e:
        write_json_atomic(endpoint_file, {**failed, "error": str(e)})
        _say(str(e))
        _stop_group(process)
        return 1
    info = {
        "state": "ready", "type": plan.type, **urls, "port": plan.port, "pid": process.pid, "model_id": plan.model_id,
        "deployment_id": deployment_id, "api_key_name": plan.api_key_name, "log": str(log_file),
    }
    write_json_atomic(endpoint_file, info)
    _say(f"deployment {deployment_id} serving {plan.model_id} at {urls['completions_url']}")
    while not stop.is_set() and process.poll() is None:
        stop.wait(1.0)
    if not stop.is_set():
        message = f"the {plan.type} deployment exited with status {process.returncode} while serving; last lines of {log_file}:\n{log_tail(log_file)}"
        write_json_atomic(endpoint_file, {**failed, "error": message})
        _say(message)
        _stop_group(process)
        return 1
    _stop_group(process)
    _say(f"deployment {deployment_id} stopped")
    return 0


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


def _publish_existing(cfg: dict[str, Any], deployment_id: str, endpoint_file: Path) -> int:
    plan = deployment_command(cfg)
    info = {"state": "ready", "type": "none", **plan.urls(), "model_id": plan.model_id, "deployment_id": deployment_id,
            "api_key_name": plan.api_key_name}
    write_json_atomic(endpoint_file, info)
    _say(f"using the existing endpoint {info['completions_url']}")
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # sigwait needs them blocked, else they just kill us
    signal.sigwait(stop_signals)  # a service stays up until Snakemake stops it
    return 0


def wait_for_service(endpoint_file: Path, timeout_s: float) -> dict[str, Any]:
    """For consumers: the endpoint once it answers; fails at once when the deployment reported a failure."""
    deadline = time.monotonic() + timeout_s
    while True:
        info: dict[str, Any] = read_json(endpoint_file) if endpoint_file.exists() else {}
        state = info.get("state")
        if state == "failed":
            raise EndpointNotReady(info["error"])
        if state == "ready" and (info.get("type") == "none" or is_healthy(info)):
            return info
        if state == "starting" and not process_running(int(info["pid"])):
            raise EndpointNotReady(f"the deployment step (pid {info['pid']}) ended before its endpoint was ready; last lines of {info['log']}:\n{log_tail(info['log'])}")
        if time.monotonic() >= deadline:
            log = info.get("log") or str(endpoint_file.parent)
            raise EndpointNotReady(f"no deployment answered at {endpoint_file} within {timeout_s:g} s; last lines of {log}:\n{log_tail(log)}")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - thin CLI
    import argparse

    p = argparse.ArgumentParser(prog="python -m nemotron_eval.deploy.serve")
    p.add_argument("--eval", type=Path, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--endpoint-file", type=Path, required=True)
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--images-dir", type=Path, default=Path("build/images"), help="squashed images (pyxis, enroot)")
    a = p.parse_args(argv)
    try:
        return serve(a.eval, a.model, a.endpoint_file, a.log, a.images_dir)
    except UserError as e:
        print(f"nemotron: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
