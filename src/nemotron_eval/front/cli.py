"""The `nemotron` command.

    nemotron eval ...            evaluate a checkpoint (also `nemotron nano3 eval`, as in NVIDIA's recipe)
    nemotron watch NAME ...      evaluate every new version of a checkpoint as it lands
    nemotron runs                the runs, newest last
    nemotron status [ID]         a run, per task: pending, running (requests answered / total), done, failed
    nemotron logs ID [-f] [--task T]
    nemotron kill ID             cancel a run and everything it started
    nemotron fetch ID            a remote run's results
    nemotron export ID --dest D  a finished run's results exported again (wandb, mlflow, local) without evaluating
    nemotron export --curve NAME --dest D   the training curve results/curve/NAME.json as a line chart
    nemotron artifacts add|ls    the local checkpoint registry
    nemotron ls tasks            every task of the installed NeMo Evaluator Launcher
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

from nemotron_eval.artifacts import LocalRegistry, local_registry
from nemotron_eval.config.envtoml import load_env_file
from nemotron_eval.core.errors import UserError, exit_code


def _local_registry(root: str | None) -> LocalRegistry:
    return LocalRegistry(Path(root)) if root else local_registry(load_env_file())


def _add(args: argparse.Namespace) -> int:
    lineage = {}
    for item in args.lineage or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--lineage {item!r}: expected KEY=VALUE")
        lineage[key] = value
    reg = _local_registry(args.root)
    meta = reg.add(args.name, Path(args.path), aliases=args.alias, lineage=lineage)
    print(
        f"registered {args.name}:{meta['version']} ({', '.join(meta['aliases'])}) -> {meta['path']} "
        f"[{meta['files']} files, sha256 {meta['digest'][:12]}]",
        file=sys.stderr,
    )
    print(meta["version"])
    return 0


def _ls(args: argparse.Namespace) -> int:
    rows = _local_registry(args.root).listing(args.name)
    _table(("NAME", "VERSION", "ALIASES", "DIGEST", "CREATED", "PATH"),
           [(r["name"], r["version"], ",".join(r["aliases"]) or "-", r["digest"][:12], r["created_at"], r["path"]) for r in rows])
    return 0


def _table(header: tuple[str, ...], rows: list[tuple[object, ...]]) -> None:
    table = [header, *rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())


def _ls_tasks(args: argparse.Namespace) -> int:
    """Every task the installed launcher knows; OFFLINE: staged from the data mirror (else the hub);
    HERE: its harness is installed in this environment (others run in the launcher's containers)."""
    from nemotron_eval.data.tasks import listing

    rows = [r for r in listing() if (not args.offline or r["offline"]) and (not args.harness or r["harness"] == args.harness)]
    _table(("NAME", "HARNESS", "ENDPOINT", "SHORT", "OFFLINE", "HERE"),
           [(r["name"], r["harness"], r["endpoint"], r["short"] or "-", "yes" if r["offline"] else "no",
             "yes" if r["runs_here"] else "no") for r in rows])
    print(f"{len(rows)} tasks; OFFLINE: staged from the data mirror (others read the Hugging Face hub); "
          "HERE: its harness runs in this environment", file=sys.stderr)
    return 0


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line (naming the option and the command's --help), exit status 2. `intermixed=True`:
    positionals before and after options (`nemotron watch NAME -t TASK KEY=VALUE`)."""

    def __init__(self, *args: Any, intermixed: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._intermixed = intermixed

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if not self._intermixed:
            return super().parse_known_args(args, namespace)
        self._intermixed = False  # its two passes call this again
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixed = True

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"nemotron: error: {message} (see {self.prog} --help)\n")


EVAL_HELP = """\
Artifact Overrides:
  run.model=NAME:ALIAS       the checkpoint to evaluate: an artifact spec (sft:v2, rl:latest) resolved in the
                             registry of env.toml [artifacts] (local folder registry or W&B); smollm2:latest is
                             the embedded SmolLM2; deployment.checkpoint_path=/abs/path bypasses the registry

Config Overrides (dotlist, applied last; +key=value adds a key):
  evaluation.nemo_evaluator_config.config.params.limit_samples=20
  evaluation.nemo_evaluator_config.config.params.parallelism=16
  run.env.time=08:00:00      deployment=vllm (a config group's option)

Runs: nemotron runs | status [ID] | logs ID [-f] [--task T] | kill ID | fetch ID | export ID --dest D
"""


def _add_eval(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name, help="evaluate a checkpoint on benchmarks", description="Evaluate a model checkpoint with NeMo Evaluator "
        "benchmarks, as a Snakemake pipeline: here (CPU), or on a Slurm cluster through an env.toml profile.",
        epilog=EVAL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-c", "--config", metavar="NAME|PATH", help="a config under configs/ (local, default, slurm-local) or a "
                   "YAML file (default: local here, default with -r/-b)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("-r", "--run", metavar="PROFILE", help="run on the cluster of env.toml's PROFILE and stay attached "
                      "(progress; Ctrl-C cancels everything it started)")
    mode.add_argument("-b", "--batch", metavar="PROFILE", help="submit to the cluster of env.toml's PROFILE and return "
                      "(prints the run id)")
    p.add_argument("-d", "--dry-run", action="store_true", help="print the compiled eval.yaml (stdout) and the jobs that "
                   "would run, and why (stderr); write nothing")
    p.add_argument("-t", "--task", action="append", metavar="NAME", help="a task to run (repeatable): launcher names "
                   "(adlr_mmlu) or short names (mmlu)")
    p.add_argument("--force-squash", action="store_true", help="squash the container image again (pyxis/enroot)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotlist overrides, e.g. run.model=sft:v2")
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    from nemotron_eval.front.launch import eval_command

    return eval_command(args)


def _add_watch(sub: Any) -> None:
    w = sub.add_parser("watch", help="evaluate every new version of a checkpoint as it lands",
                       description="Evaluate each new version vN of artifact NAME (or the version NAME:ALIAS points to, "
                       "as it moves) as `nemotron eval run.model=NAME:vN` would, into results/NAME_vN/; rebuild the "
                       "training curve results/curve/NAME.html after each. State in .nemotron/watch/: a restarted "
                       "watcher neither redoes nor misses a version. Ctrl-C stops it and every run it started.",
                       intermixed=True)
    w.add_argument("names", nargs="+", metavar="NAME[:ALIAS] | KEY=VALUE",
                   help="an artifact of the registry (env.toml [artifacts]); KEY=VALUE: a dotlist override, as nemotron "
                   "eval's (in any order)")
    w.add_argument("--dir", metavar="GLOB", help="register each folder matching GLOB that holds --marker as the next "
                   "version of NAME (its path and step as lineage), then evaluate it")
    w.add_argument("--marker", metavar="FILE", help="the file a checkpoint folder holds once it is complete")
    w.add_argument("--convert-arg", action="append", metavar="ARG", help="one argument of a command run on each --dir "
                   "folder before it is registered (repeat it, in order; {input}: the folder, {output}: the folder the "
                   "command creates, which is registered instead); never a shell string")
    w.add_argument("--interval", type=float, default=60.0, metavar="SECONDS", help="how often to look (default: 60)")
    w.add_argument("--once", action="store_true", help="look once, evaluate what is new, wait for it and exit (cron)")
    w.add_argument("--max-parallel", type=int, default=1, metavar="N", help="evaluations at once (default: 1)")
    w.add_argument("--retries", type=int, default=2, metavar="N", help="retries of a failed evaluation (default: 2)")
    w.add_argument("-c", "--config", metavar="NAME|PATH", help="as nemotron eval -c")
    w.add_argument("-b", "--batch", metavar="PROFILE", help="submit each evaluation to the cluster of env.toml's PROFILE")
    w.add_argument("-t", "--task", action="append", metavar="NAME", help="a task to run (repeatable)")
    w.set_defaults(func=_watch)


def _watch(args: argparse.Namespace) -> int:
    from nemotron_eval.front.watch import watch_command

    return watch_command(args)


def _runs(args: argparse.Namespace) -> int:
    from nemotron_eval.front import runs

    rows = []
    for run_id in runs.all_ids():
        run = runs.load(run_id)
        where = run.profile or "here"
        rows.append((run.id, run.created_at.replace("T", " ")[:19], run.config, where, ",".join(run.models),
                     ",".join(run.tasks), runs.state(run)))
    _table(("ID", "WHEN (UTC)", "CONFIG", "WHERE", "MODELS", "TASKS", "STATE"), rows)
    return 0


def _status(args: argparse.Namespace) -> int:
    from nemotron_eval.front import launch as front, runs

    run = runs.load(args.id)
    print(front.summary(run))
    if run.remote_id and runs.state(run) not in runs.FINAL:
        from nemotron_eval.executors import remote

        tail = [ln for ln in remote.logs(run.remote_id).splitlines() if "steps (" in ln]
        if tail:
            print(f"  on the cluster: {tail[-1].strip()}")
    return 0


def _logs(args: argparse.Namespace) -> int:
    from nemotron_eval.front import launch as front

    return front.show_logs(args.id, follow=args.follow, task=args.task)


def _kill(args: argparse.Namespace) -> int:
    from nemotron_eval.front import launch as front

    state = front.kill(args.id)
    print(f"run {args.id}: {state}")
    return 0 if state in ("cancelled", "done", "failed") else 1


def _fetch(args: argparse.Namespace) -> int:
    from nemotron_eval.front import launch as front

    for path in front.fetch(args.id):
        print(path)
    return 0


def _export(args: argparse.Namespace) -> int:
    from nemotron_eval.front.export import export_curve, export_run

    if (args.id is None) == (args.curve is None):
        raise UserError("nemotron export: give a run ID (its results) or --curve NAME (a training curve), one of them")
    if args.curve is not None:
        from nemotron_eval.exporters.base import get
        from nemotron_eval.front.launch import enter_project
        from nemotron_eval.pipeline.plan import Plan
        from nemotron_eval.pipeline.request import Request

        config, _ = enter_project(args.config)  # results/curve/ and configs/ are the project's
        plan = Plan(Request(eval_config=config or "local"), Path("configs"))
        receipt = export_curve(args.curve, get(args.dest), plan.resolved)
        print(receipt if receipt is not None else f"--dest {args.dest}: this destination draws no training curves")
        return 0
    for path in export_run(args.id, args.dest, args.format):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nemotron", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_eval(sub, "eval")
    nano3 = sub.add_parser("nano3", help="NVIDIA's recipe spelling: nemotron nano3 eval ...")
    _add_eval(nano3.add_subparsers(dest="stage", required=True, parser_class=_Parser), "eval")
    _add_watch(sub)
    sub.add_parser("runs", help="the runs, newest last").set_defaults(func=_runs)
    st = sub.add_parser("status", help="a run, per task (default: the latest run)")
    st.add_argument("id", nargs="?")
    st.set_defaults(func=_status)
    lg = sub.add_parser("logs", help="a run's Snakemake output, or one task's log")
    lg.add_argument("id")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing until the run ends")
    lg.add_argument("--task", help="the evaluation log of this task")
    lg.set_defaults(func=_logs)
    kl = sub.add_parser("kill", help="cancel a run and everything it started")
    kl.add_argument("id")
    kl.set_defaults(func=_kill)
    fe = sub.add_parser("fetch", help="a remote run's results and task logs into this project")
    fe.add_argument("id")
    fe.set_defaults(func=_fetch)
    from nemotron_eval.exporters.base import names as exporters

    ex = sub.add_parser("export", help="a finished run's results exported again, without evaluating",
                        description="Export a finished run's results again (as the launcher's `nel export`): each "
                        "model's results/{model}/DEST.json receipt is rewritten; nothing is evaluated.")
    ex.add_argument("id", nargs="?", help="the run's id (nemotron runs)")
    ex.add_argument("--curve", metavar="NAME", help="instead of a run: the training curve results/curve/NAME.json, as "
                    "a line chart (receipt results/curve/NAME.DEST.json)")
    ex.add_argument("-c", "--config", help="with --curve: the config whose export.DEST section is used (default: local)")
    ex.add_argument("--dest", required=True, choices=exporters(), help="where to: an exporter; its settings are the "
                    "run's eval.yaml export.DEST section")
    ex.add_argument("--format", choices=("json", "csv"), default="json", help="csv (with --dest local): also the run's "
                    "table of every model, task and metric in runs/ID/export/local.csv")
    ex.set_defaults(func=_export)
    arts = sub.add_parser("artifacts", help="the local checkpoint registry")
    arts_sub = arts.add_subparsers(dest="action", required=True)
    add = arts_sub.add_parser("add", help="register a checkpoint folder as the next version of NAME")
    add.add_argument("name")
    add.add_argument("path")
    add.add_argument("--alias", action="append", help="alias to move to the new version (repeatable; default: latest)")
    add.add_argument("--lineage", action="append", metavar="KEY=VALUE", help="provenance to record (repeatable)")
    add.add_argument("--root", help="registry folder (default: env.toml [artifacts] root, else ./artifacts)")
    add.set_defaults(func=_add)
    ls = arts_sub.add_parser("ls", help="list versions and aliases")
    ls.add_argument("name", nargs="?")
    ls.add_argument("--root")
    ls.set_defaults(func=_ls)
    listing = sub.add_parser("ls", help="list what the pipeline knows")
    listing_sub = listing.add_subparsers(dest="what", required=True)
    tasks = listing_sub.add_parser("tasks", help="every task of the installed NeMo Evaluator Launcher")
    tasks.add_argument("--offline", action="store_true", help="only the tasks staged from the data mirror")
    tasks.add_argument("--harness", help="only this harness's tasks (e.g. lm-evaluation-harness)")
    tasks.set_defaults(func=_ls_tasks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_code(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
