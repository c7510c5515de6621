"""The CPU server as a process outside the pipeline (tests, benchmarks): start it, wait until it answers, stop it.

The pipeline's serve step starts it through the `local` deployment type (`deploy.types.Local`); both use the same
process helpers (`nemotron_eval.deploy.process`). Only the standard library is imported here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nemotron_eval.deploy.process import exit_status, wait_until
from nemotron_eval.deploy.process import start as start_process
from nemotron_eval.deploy.process import stop as stop_process
from nemotron_eval.deploy.types import is_healthy, read_endpoint


def wait_for_endpoint(
    endpoint_file: Path, *, pid: int | None = None, log_file: Path | None = None, timeout_s: float, poll_s: float = 0.2
) -> dict[str, Any]:
    """The endpoint file's content once it exists (written by `pid`, when given) and its health URL answers 200.

    Raises EndpointNotReady, with the last lines of `log_file`, as soon as the process `pid` has exited, or
    after `timeout_s`."""

    def ready() -> dict[str, Any] | None:
        info = read_endpoint(endpoint_file)
        if info is not None and (pid is None or info.get("pid") == pid) and is_healthy(info["health_url"]):
            return info
        return None

    found = wait_until(ready, exited=exit_status(pid) if pid is not None else None, timeout_s=timeout_s,
                       log_file=log_file, what=f"the model server (pid {pid})", poll_s=poll_s)
    assert found is not None
    return found


def server_command(
    checkpoint: Path,
    *,
    endpoint_file: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    dtype: str = "float32",
    served_model_name: str | None = None,
    max_batch_size: int = 8,
    deployment_id: str | None = None,
    extra_args: Sequence[str] = (),
    python: str = sys.executable,
) -> list[str]:
    """The command line that starts the CPU server."""
    command = [
        python, "-m", "nemotron_eval.deploy.server",
        "--checkpoint", str(checkpoint),
        "--host", host,
        "--port", str(port),
        "--dtype", dtype,
        "--max-batch-size", str(max_batch_size),
        "--endpoint-file", str(endpoint_file),
    ]
    if served_model_name:
        command += ["--served-model-name", served_model_name]
    if deployment_id:
        command += ["--deployment-id", deployment_id]
    return command + list(extra_args)


def start_server(
    checkpoint: Path, *, endpoint_file: Path, log_file: Path, env: Mapping[str, str] | None = None, **options: Any
) -> subprocess.Popen[bytes]:
    """Start the server in the background (its own process group), output into `log_file` (overwritten).

    `options` are `server_command`'s keywords. A stale `endpoint_file` is removed first so that it cannot be
    mistaken for this server's."""
    Path(endpoint_file).unlink(missing_ok=True)
    command = server_command(checkpoint, endpoint_file=endpoint_file, **options)
    return start_process(command, log_file=log_file, env={**os.environ, **(env or {})})


def start_and_wait(
    checkpoint: Path, *, endpoint_file: Path, log_file: Path, timeout_s: float = 300, **options: Any
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """`start_server`, then `wait_for_endpoint`; the process is stopped again when it does not become ready."""
    process = start_server(checkpoint, endpoint_file=endpoint_file, log_file=log_file, **options)
    try:
        info = wait_for_endpoint(endpoint_file, pid=process.pid, log_file=log_file, timeout_s=timeout_s)
    except BaseException:
        stop_server(process)
        raise
    return process, info


def stop_server(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> int:
    """SIGTERM to its process group, SIGKILL after `timeout_s`; returns the exit status."""
    return stop_process(process, grace_s=timeout_s)
