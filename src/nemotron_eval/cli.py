"""The `nemotron` command: register checkpoints in the local registry and list them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nemotron_eval.artifacts import LocalRegistry, local_registry
from nemotron_eval.config.envtoml import load_env_file
from nemotron_eval.errors import UserError


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
    header = ("NAME", "VERSION", "ALIASES", "DIGEST", "CREATED", "PATH")
    table = [header] + [
        (r["name"], r["version"], ",".join(r["aliases"]) or "-", r["digest"][:12], r["created_at"], r["path"]) for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except UserError as e:
        print(f"nemotron: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
