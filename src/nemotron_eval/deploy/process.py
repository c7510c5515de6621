"""Deployment processes: start one, tell whether it lives, wait for it, stop it and everything it started.

Every deployment type uses these (one liveness check, one stop, one wait loop). A deployment runs in a session of
its own, so stopping its process group reaches every child (srun, a container runtime, a Ray head, our server);
before exec the child asks the kernel for SIGTERM when the step that started it dies (PR_SET_PDEATHSIG), so a
killed deployment step never leaves a server behind. Only the standard library is imported here.
"""

from __future__ import annotations

import functools
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from nemotron_eval.core.io import log_tail

T = TypeVar("T")
STOP_GRACE_S = 30.0  # srun needs a moment to cancel its step on every node


class EndpointNotReady(RuntimeError):
    """The deployment exited or did not answer in time; the message ends with the tail of its log."""


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat fields after the command name (state, ppid, pgrp, ...), or None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def alive(pid: int) -> bool:
    """Whether `pid` runs; an exited child not yet reaped (a zombie) counts as exited. Never reaps it."""
    if not Path("/proc/self/stat").exists():  # no /proc: a signal probe
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def boot_id() -> str | None:
    """This boot of this machine (Linux's random boot id); None without /proc."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def started(pid: int) -> str | None:
    """Who `pid` is, beyond its number: the boot and the moment it started (/proc/<pid>/stat field 22, clock ticks
    since boot). A PID is reused once its process is gone; this pair is not. None when `pid` is gone or exited, or
    when there is no /proc to ask."""
    fields = _stat(pid)
    boot = boot_id()
    if boot is None or fields is None or fields[0] in ("Z", "X"):
        return None
    return f"{boot}:{fields[19]}"  # field 22 of the whole line; 3 (state) is fields[0]


def is_ours(pid: int | None, identity: str | None) -> bool:
    """Whether `pid` is still the process recorded as `identity` (`started`): alive, and not a later process
    that took its PID. A record without an identity cannot tell, so it is not."""
    return pid is not None and identity is not None and started(pid) == identity


def signal_if_ours(pid: int | None, identity: str | None, sig: int) -> bool:
    """Send `sig` to `pid` only if it is the process recorded as `identity`; whether it was sent. Race-free on
    Linux: the process is pinned by a pidfd before its identity is read, so a PID reused in between is never
    signalled (the pidfd still names the old, exited process)."""
    if pid is None or identity is None:
        return False
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):  # no pidfd (old kernel, not Linux): check, then signal
        if not is_ours(pid, identity):
            return False
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return False
        return True
    try:
        if not is_ours(pid, identity):
            return False
        signal.pidfd_send_signal(pidfd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)


def exit_status(pid: int) -> Callable[[], object | None]:
    """For `wait_until`: None while `pid` runs, then a status (unknown: it is not our child)."""
    return lambda: None if alive(pid) else "unknown (not a child of this process)"


def group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` still runs (zombies do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not Path("/proc/self/stat").exists():
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat(int(stat.parent.name))
        if fields is not None and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def dies_with_this_process() -> Callable[[], None]:
    """A `preexec_fn`: the child gets SIGTERM when this process dies (Linux's PR_SET_PDEATHSIG, looked up here,
    before the fork). A parent that died between the fork and the child's request would send nothing: the child
    then ends at once, as that SIGTERM would have ended it."""
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the caller's signal handlers still stop it
        prctl = None
    return functools.partial(_die_with_parent, os.getpid(), prctl)


def _die_with_parent(parent: int, prctl: Callable[..., int] | None) -> None:
    PR_SET_PDEATHSIG = 1
    if prctl is None:
        return
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(128 + signal.SIGTERM)


def start(argv: Sequence[str], *, log_file: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `argv` in a session of its own, stdout and stderr into `log_file` (overwritten, first line the command)."""
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("wb") as log:
        log.write(f"$ {shlex.join(argv)}\n".encode())
        log.flush()
        return subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None, start_new_session=True,
            preexec_fn=dies_with_this_process(),
        )


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def stop(process: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> int:
    """SIGTERM to the process's group, SIGKILL to what is left of it after `grace_s`; returns the exit status."""
    pgid = process.pid  # start(): the leader's pid is the group's id
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while group_alive(pgid) and time.monotonic() < deadline:
        process.poll()
        time.sleep(0.1)
    _signal_group(pgid, signal.SIGKILL)
    return int(process.wait())


def wait_until(
    check: Callable[[], T | None],
    *,
    exited: Callable[[], object | None] | None,
    timeout_s: float,
    log_file: Path | None,
    what: str,
    stop: threading.Event | None = None,
    poll_s: float = 0.5,
    timeout_key: str = "",
) -> T | None:
    """Poll `check()` until it returns a value; None when `stop` is set first.

    Raises EndpointNotReady, with the last lines of `log_file`, as soon as `exited()` returns an exit status
    (`Popen.poll`, or `exit_status(pid)` for a process that is not our child) or after `timeout_s` (`what` names
    the deployment in the message; `timeout_key` the setting that sets the timeout)."""
    deadline = time.monotonic() + timeout_s
    while stop is None or not stop.is_set():
        value = check()
        if value is not None:
            return value
        status = exited() if exited is not None else None
        if status is not None:
            raise EndpointNotReady(
                f"{what} exited with status {status} before it was ready; "
                f"last lines of {log_file}:\n{log_tail(log_file)}"
            )
        if time.monotonic() >= deadline:
            raise EndpointNotReady(
                f"{what} was not ready within {timeout_s:g} s{f' ({timeout_key})' if timeout_key else ''}; "
                f"last lines of {log_file}:\n{log_tail(log_file)}"
            )
        if stop is not None:
            stop.wait(poll_s)
        else:
            time.sleep(poll_s)
    return None
