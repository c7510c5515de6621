"""`nemotron watch`: every new version of a checkpoint evaluated as it lands (continuous evaluation).

    nemotron watch NAME[:ALIAS] [NAME...] [--dir GLOB --marker FILE] [--interval SECONDS] [--once]
                   [--max-parallel N] [--retries N] [-c CONFIG] [-b PROFILE] [-t TASK]... [KEY=VALUE]...

- NAME: every version of artifact NAME in the registry of env.toml [artifacts] (local folder or W&B); NAME:ALIAS:
  the version the alias points to, each time it moves. Version vN is evaluated as `run.model=NAME:vN`, a run of
  `nemotron eval` with the same options (`launch.prepare`, then its supervisor here or its head job with -b):
  `nemotron runs/status/logs/kill` see it, and it writes results/NAME_vN/{task}.json.
- --dir GLOB --marker FILE: each folder matching GLOB that holds FILE (the trainer writes it last) is registered in
  the local registry as the next version of NAME, its path and a `step` (the number its name ends with, as in
  iter_0001000) as lineage; then it is evaluated like any other version. --convert-arg ARG (repeated, an argv list
  with {input} and {output}): each folder is converted first and the conversion registered (`front.convert`).
- The state lives in files: `.nemotron/watch/NAME-<setup>.json` (one per name and setup: config, profile, tasks,
  overrides) records each version: pending, running (its run), done, failed (attempts, the last error). A restarted
  watcher adopts the runs still going, and neither redoes nor misses a version (a version is recorded as running,
  with its run, before the run starts). One watcher per state file (a lock).
- A failed evaluation is retried `--retries` times (default 2), then reported and left alone.
- At most `--max-parallel` evaluations at once (default 1). --once: one look at the registry, evaluate what is new,
  wait for it, exit (0: every version evaluated; 1: some failed). Ctrl-C or SIGTERM stops the watcher and every
  run it started (their versions stay pending for the next watcher).
- After each version the training curve results/curve/NAME.{json,csv,html} is rebuilt (`report.curve`) and
  exported as a line chart to each destination of execution.auto_export (`front.export.export_curve`).
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import hashlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nemotron_eval.artifacts import LocalRegistry, Registry
from nemotron_eval.core import recordfile
from nemotron_eval.core.errors import UserError
from nemotron_eval.core.io import write_json_atomic
from nemotron_eval.core.spec import ModelSpec, parse_spec, version_number
from nemotron_eval.front import launch, runs

STATE_DIR = Path(".nemotron/watch")
STATE_SCHEMA = 1


class Stopped(Exception):
    """SIGTERM (or SIGINT) asked the watcher to stop."""


@dataclass(frozen=True)
class Setup:
    """What every evaluation of a watcher is asked with (beside run.model): its state file is keyed by it, so a
    watcher with other tasks or settings evaluates the versions again."""

    config: str | None
    profile: str | None
    tasks: tuple[str, ...] | None
    overrides: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"config": self.config, "profile": self.profile, "tasks": list(self.tasks) if self.tasks else None,
                "overrides": list(self.overrides)}

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def eval_args(self, spec: str) -> argparse.Namespace:
        """The arguments of `nemotron eval` that evaluate `spec` (NAME:vN) with this setup."""
        return argparse.Namespace(config=self.config, run=None, batch=self.profile, dry_run=False, force_squash=False,
                                  task=list(self.tasks) if self.tasks else None,
                                  overrides=[*self.overrides, f"run.model={spec}"])


@dataclass
class Watched:
    """One NAME (or NAME:ALIAS) and its state file, locked while the watcher lives."""

    name: str
    alias: str | None  # None: every version
    path: Path
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)  # vN -> {state, attempts, runs, error}
    folders: dict[str, str] = field(default_factory=dict)  # --dir: folder -> the version it was registered as
    conversions: dict[str, dict[str, Any]] = field(default_factory=dict)  # --convert-arg: folder -> attempts, error

    def save(self, setup: Setup) -> None:
        write_json_atomic(self.path, {"schema": STATE_SCHEMA, "name": self.name, "setup": setup.as_dict(),
                                      "versions": self.versions, "folders": self.folders,
                                      "conversions": self.conversions})

    def count(self, state: str) -> int:
        return sum(1 for e in self.versions.values() if e["state"] == state)

    def progress(self) -> str:
        n = len(self.versions)
        parts = [f"{self.count('done')}/{n} done"]
        parts += [f"{self.count(s)} {s}" for s in ("running", "pending", "failed") if self.count(s)]
        return f"{self.name}: " + ", ".join(parts)


def _say(text: str) -> None:
    print(f"watch: {text}", file=sys.stderr, flush=True)


def _version_number(version: str) -> int:
    return version_number(version) or 0


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise UserError(f"another watcher (pid {lock.read().strip() or '?'}) holds {path}; stop it first, or "
                            "watch with other settings") from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        yield


@dataclass
class _StateFile:
    """A watcher's state file as `Watched.save` writes it; read back with every field checked (core.recordfile)."""

    schema: int
    name: str
    setup: dict[str, Any]
    versions: dict[str, dict[str, Any]]
    folders: dict[str, str] = field(default_factory=dict)
    conversions: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class _VersionEntry:
    state: str
    attempts: int
    runs: list[str]
    error: str | None = None


@dataclass
class _ConversionEntry:
    attempts: int
    error: str | None = None


VERSION_STATES = ("pending", "running", "done", "failed")


def _load(watched: Watched) -> None:
    """The state file of `watched`, if any, into it: each field and each entry checked (one line naming the file
    and the field), a version's state among VERSION_STATES, its runs' ids as run ids."""
    if not watched.path.is_file():
        return
    what, fix = "watcher state file", "delete it to evaluate every version again"
    state = recordfile.load(_StateFile, watched.path, what, fix)
    versions = {}
    for version, entry in state.versions.items():
        checked = recordfile.from_dict(_VersionEntry, entry, watched.path, what, fix, at=f"versions.{version}.")
        if checked.state not in VERSION_STATES:
            raise recordfile.problem(watched.path, what, f"versions.{version}.state", checked.state,
                                     f"one of {', '.join(VERSION_STATES)}", fix)
        bad = next((r for r in checked.runs if not runs.is_run_id(r)), None)
        if bad is not None:
            raise recordfile.problem(watched.path, what, f"versions.{version}.runs", bad, "a run id", fix)
        if checked.state == "running" and not checked.runs:
            raise recordfile.problem(watched.path, what, f"versions.{version}.runs", checked.runs,
                                     "the running evaluation's run id", fix)
        versions[version] = asdict(checked)
    conversions = {folder: asdict(recordfile.from_dict(_ConversionEntry, entry, watched.path, what, fix,
                                                       at=f"conversions.{folder}."))
                   for folder, entry in state.conversions.items()}  # fmt: skip
    watched.versions, watched.folders, watched.conversions = versions, dict(state.folders), conversions


def _target(value: str) -> tuple[str, str | None]:
    spec = parse_spec(value, where="nemotron watch NAME")
    return spec.name, spec.alias if ":" in value else None


class Watcher:
    def __init__(self, setup: Setup, registry: Registry, watched: list[Watched], *, max_parallel: int, retries: int,
                 source: tuple[str, str] | None, curve_tasks: list[str], config: dict[str, Any] | None = None,
                 convert: list[str] | None = None) -> None:
        self.setup, self.registry, self.watched = setup, registry, watched
        self.max_parallel, self.retries, self.source, self.curve_tasks = max_parallel, retries, source, curve_tasks
        self.convert = convert or []  # --convert-arg: the argv run on each --dir folder (front.convert)
        self.config = config or {}  # the resolved config: execution.auto_export and export.<dest> for the curve
        self.said: set[str] = set()  # what was said once (no version yet, a refused folder)
        self.stop = _Stop()
        self.adopted: set[tuple[str, str]] = set()  # (name, version) of the runs being watched

    # -- one look ------------------------------------------------------------------------------------------------

    def look(self) -> None:
        """Register new folders, take in new versions, adopt runs still going after a restart."""
        if self.source is not None:
            self._register_folders(self.watched[0], *self.source)
        for w in self.watched:
            for version in self._wanted(w):
                if version not in w.versions:
                    w.versions[version] = asdict(_VersionEntry("pending", 0, []))
                    _say(f"{w.name}:{version} is new")
            for version, entry in w.versions.items():
                if entry["state"] == "running" and (w.name, version) not in self.adopted:
                    self.adopted.add((w.name, version))  # a run a watcher before this one started
                    _say(f"{w.name}:{version}: run {entry['runs'][-1]} still going, watched to its end")
            w.save(self.setup)

    def _wanted(self, w: Watched) -> list[str]:
        if w.alias is None:
            found = [v.version for v in self.registry.history(w.name)]
            if not found:
                self._once(f"{w.name}: no version in the registry yet; waiting for the first")
            return found
        spec = ModelSpec(w.name, w.alias)
        try:
            resolved = self.registry.resolve(spec)
        except UserError as e:
            self._once(f"{spec.spec}: {e}; waiting")
            return []
        return [str(resolved.version)] if resolved.version else []

    def _register_folders(self, w: Watched, pattern: str, marker: str) -> None:
        if not isinstance(self.registry, LocalRegistry):
            raise UserError(f"--dir registers folders in the local registry; env.toml [artifacts] backend is {self.registry.kind!r}")
        ready = [Path(p) for p in glob.glob(pattern) if Path(p).is_dir() and (Path(p) / marker).is_file()]
        for folder in sorted(ready, key=_folder_order):
            if str(folder) in w.folders or str(folder) in self.said:
                continue
            step = _step(folder)
            checkpoint = self._converted(w, folder) if self.convert else folder
            if checkpoint is None:
                continue
            lineage = {"source": str(folder), **({"converted": str(checkpoint)} if self.convert else {})}
            try:
                meta = self.registry.add(w.name, checkpoint, lineage={**lineage, **({"step": step} if step is not None else {})})
            except UserError as e:
                self._once(str(folder), f"{folder}: not registered: {e}")
                continue
            w.folders[str(folder)] = meta["version"]
            _say(f"{folder} registered as {w.name}:{meta['version']}" + (f" (converted: {checkpoint})" if self.convert else ""))
            w.save(self.setup)

    def _converted(self, w: Watched, folder: Path) -> Path | None:
        """`folder` converted (front.convert), or None: failed this time (tried again at the next look) or for good."""
        from nemotron_eval.front.convert import convert

        entry = w.conversions.setdefault(str(folder), asdict(_ConversionEntry(0)))
        if entry["attempts"] > self.retries:
            return None  # reported when it failed the last time
        out, error = convert(self.convert, folder, (STATE_DIR / "converted" / w.name / folder.name).resolve())
        if out is not None:
            entry["error"] = None
            return out
        entry.update(attempts=entry["attempts"] + 1, error=error)
        w.save(self.setup)
        left = self.retries + 1 - entry["attempts"]
        _say(f"{folder}: not converted: {error}; " + (f"tried again at the next look ({left} left)" if left else
             f"failed {entry['attempts']} times, reported and left alone"))
        return None

    def _once(self, key: str, text: str | None = None) -> None:
        if key not in self.said:
            self.said.add(key)
            _say(text or key)

    # -- evaluations ---------------------------------------------------------------------------------------------

    def running(self) -> list[tuple[Watched, str, dict[str, Any]]]:
        return [(w, v, e) for w in self.watched for v, e in w.versions.items() if e["state"] == "running"]

    def reap(self) -> None:
        """Record the runs that ended: done, or a failed attempt (pending again until the retries are spent)."""
        for w, version, entry in self.running():
            run = runs.load(entry["runs"][-1])
            state = runs.state(run)
            if state not in runs.FINAL:
                continue
            if state == "done" and run.remote_id:
                launch.fetch(run.id)
            print(launch.summary(runs.load(run.id)), file=sys.stderr)
            if state == "done":
                entry.update(state="done", error=None)
            else:
                entry["attempts"] += 1
                failed = [f"{t.task}: {t.detail}" for t in runs.task_states(run) if t.state == "failed"]
                entry["error"] = f"run {run.id} {state}" + (f": {failed[0]}" if failed else "")
                entry["state"] = "failed" if entry["attempts"] > self.retries else "pending"
                if entry["state"] == "failed":
                    _say(f"{w.name}:{version} failed {entry['attempts']} times, not retried ({entry['error']}; "
                         f"nemotron logs {run.id})")
                else:
                    _say(f"{w.name}:{version} failed ({entry['error']}); retry {entry['attempts']} of {self.retries}")
            w.save(self.setup)
            _say(w.progress())
            self.rebuild_curve(w)

    def start_next(self) -> None:
        """Start pending versions, oldest first, while fewer than max_parallel run."""
        pending = sorted(((w, v, e) for w in self.watched for v, e in w.versions.items() if e["state"] == "pending"),
                         key=lambda item: (_version_number(item[1]), item[0].name))
        for w, version, entry in pending:
            if len(self.running()) >= self.max_parallel:
                return
            with self.stop.held():  # a stop waits until the run is recorded with its process: no orphan
                prepared = launch.prepare(self.setup.eval_args(f"{w.name}:{version}"))
                assert not isinstance(prepared, int)  # not a dry run
                run, remote_profile, root = prepared
                entry.update(state="running", runs=[*entry["runs"], run.id])
                self.adopted.add((w.name, version))
                w.save(self.setup)  # before it starts: a crash from here on leaves a run the next watcher adopts
                if remote_profile is not None:
                    launch.submit_remote(run, remote_profile, root)
                else:
                    launch.start_local(run)
            _say(f"{w.name}:{version} evaluating: run {run.id} (nemotron logs {run.id} -f); {w.progress()}")

    def stop_all(self) -> None:
        """Cancel every run still going (its version stays pending: not a failed attempt)."""
        going = self.running()
        states = {entry["runs"][-1]: launch.kill(entry["runs"][-1], wait=False) for _, _, entry in going}
        for w, version, entry in going:  # signalled once each (a second signal skips Snakemake's graceful stop)
            run_id = entry["runs"][-1]
            state = launch.await_end(run_id) if states[run_id] == "cancelling" else states[run_id]
            entry["state"] = "done" if state == "done" else "pending"
            w.save(self.setup)
            _say(f"{w.name}:{version}: run {entry['runs'][-1]} {state}")

    def rebuild_curve(self, w: Watched) -> None:
        from nemotron_eval.report.curve import write_curve

        try:
            paths = write_curve(w.name, self.registry.history(w.name), self.curve_tasks)
        except UserError as e:
            _say(f"{w.name}: the training curve was not rebuilt: {e}")
            return
        if paths:
            _say(f"{w.name}: training curve {paths['html']}")
            self.export_curve(w.name)

    def export_curve(self, name: str) -> None:
        """The rebuilt curve to each destination of execution.auto_export; a failed export is one line, and the
        next rebuild exports again."""
        from nemotron_eval.exporters.base import requested
        from nemotron_eval.front.export import export_curve

        try:
            exporters = requested((self.config.get("execution") or {}).get("auto_export"))
        except UserError as e:
            _say(f"{name}: the training curve was not exported: {e}")
            return
        for exporter in exporters:
            try:
                receipt = export_curve(name, exporter, self.config)
            except UserError as e:
                _say(f"{name}: the training curve was not exported to {exporter.name}: {e}")
                continue
            if receipt is not None:
                _say(f"{name}: training curve exported to {exporter.name} ({receipt})")


class _Stop:
    """SIGINT and SIGTERM stop the watcher (`Stopped`), except inside `held()`: there the stop waits until the block
    ends, so a run is never started without being recorded (and so cancelled). A handler, not a signal mask: a
    mask would be inherited by the runs started meanwhile, which then could not be stopped."""

    def __init__(self) -> None:
        self.holding, self.pending = False, None  # type: bool, int | None

    def handler(self, signum: int, _frame: Any) -> None:
        if self.holding:
            self.pending = signum
            return
        raise Stopped(signal.Signals(signum).name)

    @contextmanager
    def held(self) -> Iterator[None]:
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.pending is not None:
            raise Stopped(signal.Signals(self.pending).name)


def _step(folder: Path) -> int | None:
    m = re.search(r"(\d+)$", folder.name)
    return int(m.group(1)) if m else None


def _folder_order(folder: Path) -> tuple[bool, int, str]:
    step = _step(folder)
    return step is None, step or 0, folder.name


def _check_args(args: argparse.Namespace) -> None:
    words = args.names  # names and overrides in any order: a NAME never holds '='
    args.names, args.overrides = [w for w in words if "=" not in w], [w for w in words if "=" in w]
    if not args.names:
        raise UserError("nemotron watch: name an artifact to watch (NAME or NAME:ALIAS), e.g. nemotron watch sft")
    for item in args.overrides:
        if item.partition("=")[0].lstrip("+~") == "run.model":
            raise UserError(f"override {item!r}: the watcher sets run.model to each version (NAME:vN); name the artifact instead")
    if (args.dir is None) != (args.marker is None):
        raise UserError("--dir GLOB and --marker FILE go together: the folders matching GLOB that hold FILE")
    if args.convert_arg and args.dir is None:
        raise UserError("--convert-arg: the conversion runs on each --dir folder; give --dir GLOB --marker FILE too")
    if args.convert_arg:
        from nemotron_eval.front.convert import check_command

        check_command(args.convert_arg)
    if args.dir is not None and len(args.names) != 1:
        raise UserError(f"--dir registers folders as versions of one NAME; got {len(args.names)}: {' '.join(args.names)}")
    if args.dir is not None and ":" in args.names[0]:
        raise UserError(f"--dir registers folders as versions of NAME, not of an alias: {args.names[0]!r}")
    for option, value, low in (("--interval", args.interval, 0.1), ("--max-parallel", args.max_parallel, 1), ("--retries", args.retries, 0)):
        if value < low:
            raise UserError(f"{option} {value}: must be at least {low}")
    names = [_target(v) for v in args.names]
    if len(set(names)) != len(names):
        raise UserError(f"nemotron watch {' '.join(args.names)}: name each artifact once")


def watch_command(args: argparse.Namespace) -> int:
    from nemotron_eval.pipeline.compile import registry_of
    from nemotron_eval.pipeline.plan import Plan
    from nemotron_eval.pipeline.request import Request

    _check_args(args)
    source = (os.path.abspath(os.path.expanduser(args.dir)), args.marker) if args.dir is not None else None
    config, _ = launch.enter_project(args.config)  # as `nemotron eval` takes it
    setup = Setup(config, args.batch, tuple(args.task) if args.task else None, tuple(args.overrides))
    plan = Plan(Request(eval_config=config or ("default" if args.batch else "local"), env_profile=args.batch,
                        overrides=setup.overrides, tasks=setup.tasks), Path("configs"))  # every config error: now
    watched = [Watched(name, alias, STATE_DIR / f"{name}-{setup.key}.json") for name, alias in map(_target, args.names)]
    watcher = Watcher(setup, registry_of(plan.merged), watched, max_parallel=args.max_parallel, retries=args.retries,
                      source=source, curve_tasks=list(plan.task_names), config=plan.resolved, convert=args.convert_arg)
    with ExitStack() as locks:
        for w in watched:
            locks.enter_context(_locked(w.path))
        for w in watched:
            _load(w)
        what = ", ".join(f"{w.name}:{w.alias}" if w.alias else f"{w.name} (every version)" for w in watched)
        _say(f"{what}; tasks {' '.join(plan.task_names)}; state {', '.join(str(w.path) for w in watched)}"
             + ("" if args.once else f"; every {args.interval:g}s (Ctrl-C stops it and its evaluations)"))
        return _loop(watcher, args.interval, args.once)


def _loop(watcher: Watcher, interval: float, once: bool) -> int:
    previous = {sig: signal.signal(sig, watcher.stop.handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        watcher.look()
        next_look = time.monotonic() + interval
        while True:
            watcher.reap()
            watcher.start_next()
            if once and not watcher.running():
                failed = sum(w.count("failed") + sum(1 for c in w.conversions.values() if c["error"]) for w in watcher.watched)
                _say("; ".join(w.progress() for w in watcher.watched))
                return 1 if failed else 0
            time.sleep(min(interval, 1.0))  # runs are reaped every second; the registry is read every interval
            if not once and time.monotonic() >= next_look:
                watcher.look()
                next_look = time.monotonic() + interval
    except Stopped as e:
        watcher.stop.holding = True  # the runs are cancelled to the end: no orphans
        _say(f"stopping ({e}): cancelling {len(watcher.running())} evaluation(s)")
        watcher.stop_all()
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
