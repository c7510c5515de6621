"""The `nemotron` command: register checkpoints in the local registry and list them; list the tasks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nemotron_eval.artifacts import LocalRegistry, local_registry
from nemotron_eval.config.envtoml import load_env_file
from nemotron_eval.errors import UserError, exit_code


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
    from nemotron_eval.tasks import listing

    rows = [r for r in listing() if (not args.offline or r["offline"]) and (not args.harness or r["harness"] == args.harness)]
    _table(("NAME", "HARNESS", "ENDPOINT", "SHORT", "OFFLINE", "HERE"),
           [(r["name"], r["harness"], r["endpoint"], r["short"] or "-", "yes" if r["offline"] else "no",
             "yes" if r["runs_here"] else "no") for r in rows])
    print(f"{len(rows)} tasks; OFFLINE: staged from the data mirror (others read the Hugging Face hub); "
          "HERE: its harness runs in this environment", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nemotron", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
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
