"""The front door: `nemotron eval` (and `nemotron nano3 eval`) with NVIDIA's recipe options, over Snakemake.

    nemotron eval [-c CONFIG] [-r PROFILE | -b PROFILE] [-d] [-t TASK]... [--force-squash] [KEY=VALUE]...

The options and positional dotlist overrides become a request (`request.Request`), written to the run's folder
(`runs.Run`) and handed to Snakemake as `--config request=runs/<id>/request.yaml`: the same file targets as
`snakemake ...` typed by hand, so the two stay interchangeable, and no value ever passes a command line.

- no -r/-b: Snakemake runs here with profiles/local, under a supervisor process (`supervise`) that records how
  it ends even if the shell that started it is gone; the command follows its output, Ctrl-C cancels the run.
- -r/-b PROFILE: the env.toml profile names a cluster (its `executor`, `tunnel`): the Snakemake head process runs
  there as a small CPU job submitted through NeMo-Run (`nemotron_eval.executors.remote`, the remote path of the executors
  that have one), with the executor's Snakemake profile (profiles/<config> when the config has one of that
  executor's, else profiles/<executor>). -r follows it and fetches the
  results when it ends (Ctrl-C cancels it); -b prints the run id and returns.
- -d: the compiled eval.yaml on stdout, the jobs that would run and why on stderr; nothing is written under
  build/ or results/, no run is recorded.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nemotron_eval.core import layout, secrets
from nemotron_eval.front import runs
from nemotron_eval.core.errors import PREFIX, UserError, exit_code
from nemotron_eval.deploy.process import signal_if_ours, started
from nemotron_eval.pipeline import smk
from nemotron_eval.pipeline.request import Request
from nemotron_eval.core.spec import parse_wildcard

LOCAL_PROFILE = "profiles/local"


# --- where the workflow is ---------------------------------------------------------------------------------------


def workflow_root(start: Path | None = None) -> Path:
    """The project folder with the Snakefile: the working directory or a parent, else this package's checkout."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "Snakefile").is_file() and (folder / "rules" / "common.smk").is_file():
            return folder
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / "Snakefile").is_file():
        return checkout
    raise UserError(f"no workflow (Snakefile and rules/) in {here} or its parents; run nemotron eval inside the project")


def snakemake_profile(config: str, executor: Any, root: Path) -> str:
    """Here (no executor of a remote profile): profiles/local. On a cluster: its executor's profile for the
    config (`executors.Executor.snakemake_profile`)."""
    return LOCAL_PROFILE if executor is None else str(executor.snakemake_profile(config, root))


def snakemake_argv(profile: str, targets: list[str], request_file: Path, *extra: str,
                   program: tuple[str, ...] = (sys.executable, "-m", "snakemake")) -> list[str]:
    """Targets before --config (its values are every word after it); the request as a file. A rerun after an
    interruption just reruns (--rerun-incomplete): the harness answers from its cache what was answered."""
    return [*program, "--profile", profile, "--rerun-incomplete", *extra, *targets, "--config", f"request={request_file}"]


# --- the eval command ----------------------------------------------------------------------------------------------


def plan_request(args: argparse.Namespace, root: Path, config: str | None) -> tuple[Request, Any, list[str], list[str]]:
    """The request of `nemotron eval ...`, its plan, the models (run.model expanded) and the targets."""
    from nemotron_eval.pipeline.plan import Plan

    for item in args.overrides:
        if "=" not in item:
            raise UserError(f"override {item!r}: expected KEY=VALUE (e.g. run.model=sft:v2)")
    profile = args.run or args.batch
    request = Request(
        eval_config=config or ("default" if profile else "local"), env_profile=profile,
        overrides=tuple(args.overrides), tasks=tuple(args.task) if args.task else None, force_squash=args.force_squash,
    )
    plan = Plan(request, root / "configs", keep_plans=not args.dry_run)  # a dry run writes nothing
    return request, plan, plan.models, plan.targets(per_task=bool(args.task))


def eval_command(args: argparse.Namespace) -> int:
    prepared = prepare(args)
    if isinstance(prepared, int):  # a dry run: nothing recorded
        return prepared
    run, remote_profile, root = prepared
    if remote_profile is not None:
        return submit_remote(run, remote_profile, root)
    return follow(run, start_local(run))


def enter_project(config: str | None) -> tuple[str | None, Path]:
    """Move to the project (`workflow_root`), the config named as the user meant it: a file named from a
    subfolder, by its absolute path. Returns the config and the project folder."""
    if config and Path(config).expanduser().is_file():  # before moving to the root
        config = str(Path(config).expanduser().resolve())
    root = workflow_root()
    os.chdir(root)
    return config, root


def prepare(args: argparse.Namespace) -> int | tuple[runs.Run, Any, Path]:
    """What `nemotron eval ARGS` does before anything runs: move to the project, plan the request (every config
    error now, in one line), record the run (`runs.create`). Returns the run, its remote profile (None here) and
    the project folder; a dry run prints its plan and returns its exit status instead."""
    config, root = enter_project(args.config)
    profile_name = args.run or args.batch
    remote_profile, executor = None, None
    carried: list[str] = []  # a remote run: the variables the head job gets from this process's environment
    if profile_name:
        from nemotron_eval import executors
        from nemotron_eval.executors import remote

        remote_profile = remote.profile_from_env(profile_name)  # one line: unknown profile, no executor, ...
        executor = executors.get(remote_profile.executor, f"env.toml profile {profile_name!r}: executor")
    request, plan, models, targets = plan_request(args, root, config)
    sm_profile = snakemake_profile(request.eval_config, executor, root)
    snapshots: dict[str, dict[str, str]] = {}
    for model in models:
        try:
            mp = plan.model(model)
            for task in plan.task_names if plan.engine == "snakemake" else []:
                plan.evaluation(model, task)  # what would fail at the first job fails now (no tokenizer, chat task, ...)
            snapshots[model] = {"job.yaml": mp.job_text, "eval.yaml": mp.eval_text}
        except UserError as e:
            if remote_profile is None or args.dry_run:
                raise
            # A remote run resolves its checkpoint on the cluster (its registry, its paths): here it may not resolve.
            print(f"nemotron: {model} resolves on the cluster only ({e}); the run keeps no compiled copy here", file=sys.stderr)
    if args.dry_run:
        return dry_run(request, {m: snapshots[m]["eval.yaml"] for m in models}, targets, sm_profile)
    if remote_profile is not None:
        from nemotron_eval import exporters
        from nemotron_eval.executors.remote import carry

        # the exporters' credentials (W&B's key; none: one line, nothing submitted) into this environment
        shipped = exporters.login_for_submission(plan.execution.get("auto_export"))
        carried = carry.present([*shipped, *secrets.secret_variables(plan.merged)], ssh=remote_profile.is_ssh)
        remote.check(remote_profile)  # the host answers, keys, sbatch: before anything is recorded or shipped
    run = runs.Run(
        id=runs.new_id(), created_at=runs.now(), command=["nemotron", *sys.argv[1:]], config=request.eval_config,
        mode="local" if not profile_name else ("run" if args.run else "batch"), models=models,
        tasks=list(plan.task_names), targets=targets, profile=profile_name, snakemake_profile=sm_profile,
        environment=carried,
    )
    request_text = _request_text(request, run, root)
    runs.create(run, request_text, snapshots)
    print(f"run {run.id}: {' '.join(run.tasks)} on {', '.join(parse_wildcard(m).spec for m in models)} ({run.folder})",
          file=sys.stderr)
    return run, remote_profile, root


def _request_text(request: Request, run: runs.Run, root: Path) -> str:
    """The request file. A remote run ships the env.toml it was composed with beside it, and a config file from
    outside the project's configs/ (the project's files ship with it; this one might not)."""
    from dataclasses import replace

    from nemotron_eval.config.envtoml import find_env_file
    from nemotron_eval.core.io import dump_yaml, write_text_atomic

    if run.mode != "local":
        env = find_env_file()
        if env is not None:
            shipped = run.folder / "env.toml"
            write_text_atomic(root / shipped, env.read_text())
            request = replace(request, env_file=str(shipped))
        config = Path(request.eval_config)
        if config.is_absolute() and config.is_file():
            shipped = run.folder / config.name
            write_text_atomic(root / shipped, config.read_text())
            request = replace(request, eval_config=str(shipped))
    return dump_yaml(request.as_dict())


def dry_run(request: Request, eval_texts: dict[str, str], targets: list[str], profile: str) -> int:
    """Each model's eval.yaml on stdout (several: YAML documents, each headed by its file); Snakemake's dry run
    (the jobs, and why) on stderr. Writes nothing under build/, results/ or runs/."""
    from nemotron_eval.core.io import dump_yaml

    several = len(eval_texts) > 1
    sys.stdout.write("".join(f"---\n# {layout.EVAL.format(model=m)}\n{t}" if several else t for m, t in eval_texts.items()))
    sys.stdout.flush()
    with tempfile.TemporaryDirectory(prefix="nemotron-dry-run-") as tmp:
        request_file = Path(tmp) / "request.yaml"
        request_file.write_text(dump_yaml(request.as_dict()))
        proc = subprocess.run(snakemake_argv(profile, targets, request_file, "-n"), stdout=sys.stderr, stderr=sys.stderr)
    return proc.returncode


# --- local runs: a supervisor around Snakemake -------------------------------------------------------------------


def start_local(run: runs.Run) -> subprocess.Popen[bytes]:
    """Start the supervisor of a prepared local run (its own session: it outlives this shell); `kill` stops it."""
    _unlock_if_stale(run)
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "nemotron_eval.front.launch", "--supervise", run.id, "--log", str(run.folder / "supervisor.log")],
        stdin=subprocess.DEVNULL, start_new_session=True,
    )
    run.pid, run.pid_started = supervisor.pid, started(supervisor.pid)  # from now on the run can be cancelled
    run.save()
    return supervisor


def _unlock_if_stale(run: runs.Run) -> None:
    """A Snakemake killed before it could clean up leaves its lock; with no Snakemake running here, lift it."""
    locks = Path(".snakemake/locks")
    if locks.is_dir() and any(locks.iterdir()) and smk.pid_of_live_snakemake(Path(".")) is None:
        print("nemotron: an earlier run left Snakemake's lock behind (nothing is running here): unlocking", file=sys.stderr)
        subprocess.run(snakemake_argv(run.snakemake_profile, [], run.request_file, "--unlock"),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def supervise(run_id: str) -> int:
    """Run Snakemake for a run, write its output to the run's log, keep its Slurm job ids, record how it ended.
    SIGINT/SIGTERM cancel it: Snakemake gets SIGINT (it stops its jobs, cancels Slurm jobs), then SIGTERM."""
    run = runs.load(run_id)
    argv = snakemake_argv(run.snakemake_profile, run.targets, run.request_file)
    signals: list[int] = []
    with open(run.log_file, "ab", buffering=0) as log:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # not inherited ignored (`nemotron eval &`): Snakemake must stop on it
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        run.pid, run.pid_started = os.getpid(), started(os.getpid())
        run.save()

        def cancel(signum: int, _frame: Any) -> None:  # the first: SIGINT to Snakemake's group; then SIGTERM
            signals.append(signum)
            _signal_group(proc.pid, signal.SIGINT if len(signals) == 1 else signal.SIGTERM)

        signal.signal(signal.SIGINT, cancel)
        signal.signal(signal.SIGTERM, cancel)
        assert proc.stdout is not None
        locked = retelling = False
        for line in iter(proc.stdout.readline, b""):
            if line.startswith(b"LockException"):  # its advice (--unlock) is wrong while the lock's run lives
                locked = retelling = True
            if retelling:
                retelling = b"--unlock" not in line
                continue
            log.write(line)
            runs.note_output(run, line.decode("utf-8", "replace"))
        rc = proc.wait()
        if locked:
            log.write(f"{PREFIX}{_lock_holder(run)}\n".encode())
    if signals:  # Snakemake cancels its jobs on SIGINT; what it could not (killed first) is cancelled here
        from nemotron_eval.executors import for_profile

        for_profile(run.snakemake_profile).cancel(run.jobs)
    runs.finish(run, rc, cancelled=bool(signals))
    return rc


def _lock_holder(run: runs.Run) -> str:
    """Why Snakemake could not lock the project for `run`: another run here writes some of the same files."""
    for other in runs.live():
        if other.id != run.id:
            return (f"run {other.id} is running in this project and writes some of the same files: wait for it "
                    f"(`nemotron logs {other.id} -f`) or stop it (`nemotron kill {other.id}`), then start this run again")
    pid = smk.pid_of_live_snakemake(Path("."))
    if pid is not None:
        return (f"a Snakemake process (pid {pid}) started by hand is running in this project and writes some of the "
                "same files: wait for it to end, then start this run again")
    return "Snakemake found a lock although nothing runs in this project now: start this run again (it lifts a stale lock)"


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def follow(run: runs.Run, supervisor: subprocess.Popen[bytes] | None = None, poll_s: float = 0.5) -> int:
    """Print the run's log as it grows until the run ends; Ctrl-C cancels it (a second one stops following)."""
    offset = 0

    def drain() -> None:
        nonlocal offset
        try:
            with run.log_file.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        offset += len(chunk)
        if chunk:
            sys.stderr.write(chunk.decode("utf-8", "replace"))
            sys.stderr.flush()

    interrupted = 0
    while True:
        try:
            drain()
            current = runs.load(run.id)
            gone = supervisor is not None and supervisor.poll() is not None
            if current.state in runs.FINAL or gone:
                drain()  # what was written between the last read and the end
                current = runs.load(run.id)
                print(summary(current), file=sys.stderr)
                return 0 if current.state in ("done", "submitted") else 1
            time.sleep(poll_s)
        except KeyboardInterrupt:
            interrupted += 1
            if interrupted > 1:
                print(f"nemotron: stopped following; the run goes on being cancelled (nemotron status {run.id})", file=sys.stderr)
                return 130
            print(f"nemotron: cancelling run {run.id} (Ctrl-C again to stop following)", file=sys.stderr)
            kill(run.id, wait=False)


# --- remote runs -----------------------------------------------------------------------------------------------


# What a remote run does not ship: what the pipeline builds (the cluster builds its own), other runs.
NOT_SHIPPED = {"build", "results", "data", "run", "logs", "models", "wandb", "mlruns", "runs", ".snakemake"}


def submit_remote(run: runs.Run, profile: Any, root: Path) -> int:
    """Submit a prepared remote run's head job; -r follows it to its end, -b returns at once (the run id on stdout)."""
    from dataclasses import replace

    from nemotron_eval.executors import remote

    if profile.venv is None and not profile.is_ssh:
        profile = replace(profile, venv=sys.prefix)  # on a login node: this very environment, on the shared disk
    argv = snakemake_argv(run.snakemake_profile, run.targets, run.request_file, program=("snakemake",))
    shipped = [f for f in remote.project_files(root) if Path(f).parts[0] not in NOT_SHIPPED]
    own = [str(p.relative_to(root)) for p in (root / run.folder).rglob("*") if p.is_file()]
    try:
        submission = remote.submit(profile, argv, root, files=sorted({*shipped, *own}), attached=False, check=False,
                                   environment=run.environment)
    except BaseException as e:  # refused, unreachable, interrupted: the run ends here, and says why
        run.error = str(e).splitlines()[0] if str(e) else type(e).__name__
        runs.finish(run, 1)
        raise
    run.remote_id = submission.id
    run.state = "submitted"
    run.save()
    print(run.id)
    if run.mode == "batch":
        print(f"nemotron: submitted as Slurm job {submission.job_id}; `nemotron status {run.id}`, "
              f"`nemotron logs {run.id} -f`, `nemotron fetch {run.id}`", file=sys.stderr)
        return 0
    try:
        remote.logs(submission.id, follow=True, out=sys.stderr)
    except KeyboardInterrupt:
        print(f"nemotron: cancelling run {run.id}", file=sys.stderr)
        kill(run.id)
        return 130
    final = remote.wait(submission.id)
    run.state = {"done": "done", "cancelled": "cancelled"}.get(final.state, "failed")
    run.finished_at = runs.now()
    run.save()
    if final.state == "done":
        fetch(run.id)
    print(summary(run), file=sys.stderr)
    return 0 if run.state == "done" else 1


def fetch(run_id: str, results: bool = True) -> list[Path]:
    """A remote run's results and task logs back into this project: each file of the cluster's results/<model>/
    replaces the one of the same name here (atomically); other files here are kept."""
    import shutil

    from nemotron_eval.executors import remote

    run = runs.load(run_id)
    if not run.remote_id:
        raise UserError(f"run {run.id} ran here: its results are in results/ already")
    got = []
    for model in run.models if results else []:
        staged = remote.fetch(run.remote_id, run.folder / "fetched" / model, path=f"results/{model}")
        for src in sorted(p for p in staged.rglob("*") if p.is_file()):
            dest = Path("results") / model / src.relative_to(staged)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.fetch")
            shutil.copy2(src, tmp)
            os.replace(tmp, dest)
        shutil.rmtree(run.folder / "fetched")
        got.append(Path("results") / model)
    for model in run.models:
        got.append(remote.fetch(run.remote_id, run.folder / "logs" / model, path=str(layout.task_log(model, "x").parent)))
    return got


# --- after submission --------------------------------------------------------------------------------------------


def kill(run_id: str, wait: bool = True, grace_s: float = 60.0) -> str:
    """Cancel a run: a remote one through its head job (which cancels its GPU jobs), a local one through its
    supervisor (Snakemake stops its jobs and their servers; recorded Slurm jobs are cancelled)."""
    run = runs.load(run_id)
    current = runs.state(run)
    if current in runs.FINAL:
        return current
    if run.invocations:  # the launcher's jobs, through its API
        return runs.kill_launcher(run)
    if run.remote_id:
        from nemotron_eval.executors import remote

        remote.cancel(run.remote_id)
        run.state, run.finished_at = "cancelled", runs.now()
        run.save()
        return "cancelled"
    if not signal_if_ours(run.pid, run.pid_started, signal.SIGINT):  # gone since `state` looked, or its PID reused
        return runs.state(runs.load(run_id))
    return await_end(run_id, grace_s) if wait else "cancelling"


def await_end(run_id: str, grace_s: float = 60.0) -> str:
    """A local run's state once its supervisor, signalled once (SIGINT: Snakemake stops gracefully), has ended it;
    after `grace_s` the second signal (SIGTERM to Snakemake)."""
    deadline = time.monotonic() + grace_s
    while runs.state(runs.load(run_id)) not in runs.FINAL and time.monotonic() < deadline:
        time.sleep(0.5)
    run = runs.load(run_id)
    if runs.state(run) not in runs.FINAL and signal_if_ours(run.pid, run.pid_started, signal.SIGTERM):
        time.sleep(5)  # the supervisor's second signal: SIGTERM to Snakemake
    return runs.state(runs.load(run_id))


LAUNCHER_POLL_S = 30.0  # how often `logs -f` asks the launcher (copies its jobs' logs, asks their state)


def show_logs(run_id: str, follow: bool = False, task: str | None = None, poll_s: float = 1.0) -> int:
    """A run's Snakemake output (or one task's evaluation log), to stdout; `follow` until the run ends."""
    run = runs.load(run_id)
    if task is not None and task not in run.tasks:
        raise UserError(f"run {run.id} has no task {task!r}; its tasks: {', '.join(run.tasks)}")
    if run.error and run.mode != "local" and not run.remote_id:  # refused before it started: no log, a reason
        print(f"run {run.id} was not submitted: {run.error}")
        return 0
    if run.remote_id and task is None:
        from nemotron_eval.executors import remote

        remote.logs(run.remote_id, follow=follow, out=sys.stdout)
        return 0
    if run.remote_id:
        fetch(run.id, results=False)  # the task logs only: results here stay as they are
        files = [run.folder / "logs" / model / f"{task}.log" for model in run.models]
    elif task is not None:
        files = [layout.task_log(model, task) for model in run.models]
    else:
        files = [run.log_file]
    offsets = {f: 0 for f in files}
    while True:
        if run.invocations and task is None:  # then the launcher's job logs, fetched anew through its API
            files = [run.log_file, *runs.launcher_logs(run)]
        for f in files:
            try:
                with f.open("rb") as fh:
                    fh.seek(offsets.get(f, 0))
                    chunk = fh.read()
            except FileNotFoundError:
                continue
            offsets[f] = offsets.get(f, 0) + len(chunk)
            sys.stdout.write(chunk.decode("utf-8", "replace"))
        sys.stdout.flush()
        if not follow or runs.state(runs.load(run.id)) in runs.FINAL:
            return 0
        # a launcher run's logs come over its executor (ssh for Slurm), with its state: not every second
        time.sleep(max(poll_s, LAUNCHER_POLL_S) if run.invocations else poll_s)


def summary(run: runs.Run) -> str:
    jobs = runs.launcher_jobs(run)  # asked once for both
    state = runs.state(run, jobs)
    lines = [f"run {run.id}: {state}"] + ([f"  why: {run.error}"] if run.error else [])
    for t in runs.task_states(run, jobs=jobs):
        detail = t.detail
        if run.remote_id and t.state == "pending" and state == "done":
            t = runs.TaskState(t.model, t.task, "done", f"on the cluster: nemotron fetch {run.id}")
            detail = t.detail
        lines.append(f"  {t.model:<24} {t.task:<16} {t.state:<9} {detail}")
    return "\n".join(lines)


def supervisor_main(argv: list[str] | None = None) -> int:
    """`python -m nemotron_eval.front.launch --supervise RUN_ID --log FILE`: the supervisor process of a local run
    (started by `start_local` in its own session, so it outlives the shell that started it, on purpose)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m nemotron_eval.front.launch", description=supervisor_main.__doc__)
    p.add_argument("--supervise", required=True, metavar="RUN_ID")
    p.add_argument("--log", type=Path, required=True)
    a = p.parse_args(argv)
    return exit_code(lambda: supervise(a.supervise), log=a.log)


if __name__ == "__main__":
    sys.exit(supervisor_main())
