"""`nemotron-step STEP ...`: the rules' processes (deployment, evaluation, embedded models, squashing, export).

Every rule calls its step the same way: paths of its inputs and outputs, its wildcards, and `--log` (the rule's
log file); values come from the files named, never from the command line. Each step ends through
`errors.exit_code`: a user's mistake is one line (status 2), a bug's traceback goes to the log.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from nemotron_eval.core.errors import exit_code


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nemotron-step", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    s = sub.add_parser("prepare-model", help="build an embedded model's checkpoint (models/NAME/)")
    s.add_argument("--name", required=True)
    s.add_argument("--receipt", type=Path, required=True)
    s = sub.add_parser("serve", help="one deployment of a model for all its task jobs (a Snakemake service)")
    s.add_argument("--model", required=True)
    s.add_argument("--eval", type=Path, required=True)
    s.add_argument("--endpoint-file", type=Path, required=True)
    s = sub.add_parser("evaluate", help="one task against the running deployment")
    s.add_argument("--task", required=True)
    for name in ("eval", "job", "endpoint", "deployment-log", "out", "items"):
        s.add_argument(f"--{name}", type=Path, required=True)
    s.add_argument("--data", type=Path, required=True, help="where a staged task's dataset lies (data/TASK)")
    s = sub.add_parser("squash", help="enroot import of a deployment image (its reference from a file)")
    s.add_argument("--reference", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("export", help="one model's results to one destination (an exporter: wandb, mlflow, local)")
    s.add_argument("results", nargs="+", type=Path)
    s.add_argument("--dest", required=True, help="the exporter's name (nemotron_eval.exporters)")
    s.add_argument("--config", type=Path, required=True)
    s.add_argument("--summary", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    for s in sub.choices.values():
        s.add_argument("--log", type=Path, required=True)
    return p


# Snakemake's process, as every process that reads the Snakefile sets it (rules/common.smk) and its jobs inherit it:
# "PID:PID-NAMESPACE:IDENTITY" (deploy.process.started).
SPAWNER_ENV = "NEMOTRON_SPAWNER"


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid").removeprefix("pid:")
    except OSError:
        return ""


def spawner_entry(pid: int | None = None) -> str:
    """A process (this one by default) as the steps it starts see it in SPAWNER_ENV."""
    from nemotron_eval.deploy.process import started

    pid = os.getpid() if pid is None else pid
    return f"{pid}:{_pid_namespace()}:{started(pid) or ''}"


def recorded_spawner() -> tuple[int, str] | None:
    """The PID and identity of the process SPAWNER_ENV names, when whether it lives can be told from here (this
    boot of this machine, this PID namespace); None otherwise (a step started by hand, another node's job)."""
    from nemotron_eval.deploy.process import boot_id

    pid, namespace, identity = (os.environ.get(SPAWNER_ENV, "").split(":", 2) + ["", ""])[:3]
    if not pid.isdigit() or not identity or namespace != _pid_namespace() or identity.split(":")[0] != boot_id():
        return None
    return int(pid), identity


def watch_parent(poll_s: float = 1.0) -> None:
    """When the process that started this step dies (Snakemake killed with SIGKILL cannot stop its jobs), this
    step gets SIGTERM: it stops what it started (the deployment, the harness and lm-eval) and ends. Its parent may
    be a shell between Snakemake and the step, and Snakemake may have died before this call (the step then belongs
    to init already): the Snakemake that SPAWNER_ENV names is watched too, and a step it no longer runs under
    never starts."""
    from nemotron_eval.deploy.process import is_ours

    parent, spawner = os.getppid(), recorded_spawner()

    def started_by_a_live_process() -> bool:
        return os.getppid() == parent and (spawner is None or is_ours(*spawner))

    if not started_by_a_live_process():
        assert spawner is not None
        print(f"nemotron-step: the process that started this step (PID {spawner[0]}) has ended; not starting",
              file=sys.stderr, flush=True)
        raise SystemExit(128 + signal.SIGTERM)

    def watch() -> None:
        while started_by_a_live_process():
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _terminated(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: the harness's children are stopped on the way out


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)  # the serve step installs its own handlers
    watch_parent()

    def run() -> int:
        from nemotron_eval.pipeline import workflow as wf

        if a.step == "serve":  # the deployment's own output goes to the log; ours to stderr
            from nemotron_eval.deploy.serve import serve

            return serve(a.eval, a.model, a.endpoint_file, a.log)
        with wf.logged(a.log):
            if a.step == "prepare-model":
                wf.prepare_model(a.name, a.receipt)
            elif a.step == "evaluate":
                wf.evaluate(a.task, a.eval, a.job, a.data, a.endpoint, a.deployment_log, a.out, a.items)
            elif a.step == "squash":
                wf.squash(a.reference, a.out, a.log)
            elif a.step == "export":
                from nemotron_eval.exporters import export_step

                export_step(a.dest, a.results, a.config, a.summary, a.out)
        return 0

    return exit_code(run, log=a.log if a.step not in ("serve",) else None)


if __name__ == "__main__":
    sys.exit(main())
