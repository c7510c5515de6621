"""What every part of the bench shares: a measure (`Row`), progress on stderr, machine facts, timed commands.

A row holds what was measured ("ours"), what it is compared with ("reference", measured in the same run, or absent
for a single value such as a dry run's seconds), and the ratio of the two, computed here and nowhere else. A row
that could not be measured holds `not_measured` (the reason) and no numbers: never a made-up one.
"""

from __future__ import annotations

import operator
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nemotron-eval" / "bench"
DEFAULT_MIRROR = REPO.parent / "shared" / "benchmarks"
OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le, "==": operator.eq}


@dataclass
class Row:
    """One measure. `goal` applies to `ratio` when there is a reference, else to `ours`."""

    part: str
    key: str
    measure: str
    ours: float | None = None
    reference: float | None = None
    unit: str = ""
    ours_is: str = ""
    reference_is: str = ""
    op: str | None = None
    goal: float | None = None
    note: str = ""
    not_measured: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.reference is None or self.reference == 0:
            return None
        return self.ours / self.reference

    @property
    def judged(self) -> float | None:
        """The number the target applies to."""
        return self.ratio if self.reference is not None else self.ours

    @property
    def target(self) -> str:
        if self.op is None or self.goal is None:
            return ""
        return f"{'ratio' if self.reference is not None else 'value'} {self.op} {self.goal:g}"

    @property
    def met(self) -> bool | None:
        value = self.judged
        if self.not_measured or self.op is None or self.goal is None or value is None:
            return None
        return OPS[self.op](value, self.goal)

    def as_dict(self) -> dict[str, Any]:
        return {
            "part": self.part, "key": self.key, "measure": self.measure, "ours": self.ours, "reference": self.reference,
            "ratio": self.ratio, "unit": self.unit, "ours_is": self.ours_is, "reference_is": self.reference_is,
            "target": self.target, "op": self.op, "goal": self.goal, "met": self.met,
            "measured": self.not_measured is None, "not_measured": self.not_measured, "note": self.note,
            "details": self.details,
        }


def not_measured(part: str, key: str, measure: str, reason: str, **kw: Any) -> Row:
    return Row(part, key, measure, not_measured=reason, **kw)


class Progress:
    """Which step runs, done/total, elapsed and ETA, on stderr. Each step has an estimate in seconds (measured on
    the 2-core machine); the ETA scales the estimates of the steps left by how fast the done ones went."""

    def __init__(self, steps: Sequence[tuple[str, float]]) -> None:
        self.steps = list(steps)
        self.done: list[tuple[str, float, float]] = []  # name, estimate, seconds taken
        self.started = time.monotonic()

    def eta(self) -> float:
        left = sum(est for name, est in self.steps if name not in {d[0] for d in self.done})
        est_done = sum(d[1] for d in self.done)
        took = sum(d[2] for d in self.done)
        return left * (took / est_done if est_done > 0 else 1.0)

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[bench {len(self.done)}/{len(self.steps)} | {elapsed:5.0f} s elapsed | ETA {self.eta():5.0f} s] {text}",
              file=sys.stderr, flush=True)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        estimate = dict(self.steps).get(name)
        if estimate is None:
            raise KeyError(f"step {name!r} was not planned")
        self.say(f"{name} ...")
        started = time.monotonic()
        try:
            yield
        finally:
            took = time.monotonic() - started
            self.done.append((name, estimate, took))
            self.say(f"{name}: {took:.1f} s")


def machine() -> dict[str, Any]:
    """The facts that make numbers comparable: cores, load average at start, memory, interpreter."""
    from importlib import metadata

    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "cores": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "memory_gib": round(mem_kb / 2**20, 1), "python": sys.version.split()[0],
        "torch": version("torch"), "transformers": version("transformers"), "snakemake": version("snakemake"),
        "nemo_evaluator": version("nemo-evaluator"), "nvidia_lm_eval": version("nvidia-lm-eval"),
    }


def env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every command the bench runs: this venv first on PATH, no telemetry, W&B offline."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "NEMO_EVALUATOR_TELEMETRY_LEVEL": "0",
            "WANDB_MODE": "offline", **(extra or {})}


def copy_workflow(parent: Path) -> Path:
    """The workflow (Snakefile, rules, configs, profiles, report) copied into `parent/work`, as a user has it."""
    work = parent / "work"
    work.mkdir(parents=True)
    for name in ("Snakefile", "rules", "configs", "profiles", "report"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    return work


@dataclass
class Timed:
    seconds: float
    returncode: int
    output: str  # stdout and stderr together

    def check(self, what: str) -> Timed:
        if self.returncode != 0:
            raise BenchError(f"{what} failed (exit {self.returncode}): {tail(self.output)}")
        return self


class BenchError(RuntimeError):
    """A step of the bench could not run; the message says which and why."""


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def timed(cmd: Sequence[str], cwd: Path, *, extra_env: Mapping[str, str] | None = None, log: Path | None = None,
          echo: Callable[[str], bool] | None = None, timeout_s: float | None = None) -> Timed:
    """Run `cmd` (an argv list) and time it. Its output goes to `log` (when given) and is returned; lines for which
    `echo` says yes are also shown on stderr (progress of long commands)."""
    started = time.monotonic()
    out: list[str] = []
    with subprocess.Popen(list(cmd), cwd=cwd, env=env(extra_env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace", start_new_session=True) as proc:
        assert proc.stdout is not None
        deadline = None if timeout_s is None else started + timeout_s
        try:
            for line in proc.stdout:
                out.append(line)
                if echo is not None and echo(line):
                    print(f"    {line.rstrip()}", file=sys.stderr, flush=True)
                if deadline is not None and time.monotonic() > deadline:
                    raise BenchError(f"{cmd[0]} still running after {timeout_s:g} s")
        except BaseException:  # Ctrl-C or the deadline: the command (its own session) stops with us
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        rc = proc.wait()
    seconds = time.monotonic() - started
    text = "".join(out)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(text)
    return Timed(seconds, rc, text)


def snakemake(work: Path, *args: str, log: Path | None = None, echo: Callable[[str], bool] | None = None,
              extra_env: Mapping[str, str] | None = None) -> Timed:
    return timed([str(BIN / "snakemake"), "--profile", "profiles/local", *args], work, log=log, echo=echo,
                 extra_env=extra_env)


def snakemake_progress(line: str) -> bool:
    """Snakemake's own progress lines ("N of M steps (x%) done") and errors."""
    return " steps (" in line or line.startswith(("Error", "nemotron: error")) or "Exiting because" in line


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def jobs_in_dry_run(output: str) -> list[dict[str, str]]:
    """Every job a dry run lists, as {"rule": name, **wildcards} (group members included)."""
    jobs: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for raw in output.splitlines():
        line = raw.strip()
        if line.startswith(("rule ", "localrule ")) and line.endswith(":"):
            current = {"rule": line.split()[1].rstrip(":")}
            jobs.append(current)
        elif current is not None and line.startswith("wildcards:"):
            for pair in line[len("wildcards:"):].split(","):
                key, _, value = pair.strip().partition("=")
                if key:
                    current[key] = value
    return jobs
