"""Start the CPU server as a subprocess (log to a file) and wait until its endpoint answers.

Only the standard library is imported here: the pipeline's serve step and the tests use it without torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never send localhost through a proxy


class EndpointNotReady(RuntimeError):
    """The server exited or did not answer in time; the message ends with the tail of its log."""


def log_tail(path: Path | str | None, n: int = 30) -> str:
    """The last `n` lines of a log file, or a line saying there is none."""
    if path is None:
        return "(no log file given)"
    path = Path(path)
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - 256 * n, 0))  # a generous guess at n lines' size
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(lines[-n:]) if lines else f"({path} is empty)"


def process_running(pid: int) -> bool:
    """Whether `pid` is alive; an exited child not yet reaped (a zombie) counts as exited. Never reaps it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: fall back to a signal probe
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state = stat.rsplit(")", 1)[-1].split()[0]  # the field after "(command name)"
    return state not in ("Z", "X")


def read_endpoint(endpoint_file: Path | str) -> dict[str, Any] | None:
    try:
        info = json.loads(Path(endpoint_file).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return info if isinstance(info, dict) and "url" in info else None


def is_healthy(info: Mapping[str, Any], timeout_s: float = 2.0) -> bool:
    url = info.get("health_url") or f"{str(info['url']).rstrip('/')}/health"
    try:
        with _NO_PROXY.open(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_for_endpoint(
    endpoint_file: Path,
    *,
    pid: int | None = None,
    log_file: Path | None = None,
    timeout_s: float,
    poll_s: float = 0.2,
) -> dict[str, Any]:
    """The endpoint file's content once it exists (written by `pid`, when given) and its health URL answers 200.

    Raises EndpointNotReady, with the last 30 lines of `log_file`, as soon as the process `pid` has exited, or
    after `timeout_s`.
    """
    endpoint_file = Path(endpoint_file)
    deadline = time.monotonic() + timeout_s
    while True:
        info = read_endpoint(endpoint_file)
        if info is not None and (pid is None or info.get("pid") == pid) and is_healthy(info):
            return info
        if pid is not None and not process_running(pid):
            raise EndpointNotReady(
                f"the model server (pid {pid}) exited before {endpoint_file} was ready; "
                f"last lines of {log_file or 'its log'}:\n{log_tail(log_file)}"
            )
        if time.monotonic() >= deadline:
            raise EndpointNotReady(
                f"the model server's endpoint {endpoint_file} did not answer within {timeout_s:g} s; "
                f"last lines of {log_file or 'its log'}:\n{log_tail(log_file)}"
            )
        time.sleep(poll_s)


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
    """The command line that starts the CPU server (also what a job script would run)."""
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


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux), so a killed deployment step
    never leaves a server behind."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the caller's signal handlers still stop it
        pass


def start_server(
    checkpoint: Path,
    *,
    endpoint_file: Path,
    log_file: Path,
    env: Mapping[str, str] | None = None,
    die_with_parent: bool = False,
    **options: Any,
) -> subprocess.Popen[bytes]:
    """Start the server in the background, stdout and stderr into `log_file` (overwritten).

    `options` are `server_command`'s keywords. A stale `endpoint_file` is removed first so that it cannot be
    mistaken for this server's.
    """
    endpoint_file, log_file = Path(endpoint_file), Path(log_file)
    endpoint_file.unlink(missing_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    command = server_command(checkpoint, endpoint_file=endpoint_file, **options)
    with log_file.open("wb") as log:
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})}, preexec_fn=_die_with_parent if die_with_parent else None,
        )


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
    """SIGTERM, then SIGKILL after `timeout_s`; returns the exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)
