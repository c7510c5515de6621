"""The config files Hydra will read for a composition: the primary's `defaults:` list, the lists of the files it
names, and so on, found as Hydra finds them, each read first through the one safe reader.

So every file Hydra reads gets the same one-line errors (size, UTF-8, duplicate keys, alias bombs) instead of
failing or hanging inside Hydra, and the tree is bounded before Hydra walks it recursively: at most MAX_DEPTH
levels of `defaults:` and MAX_FILES files, a cycle named as such. A chain hundreds of levels deep is one line,
never Hydra's RecursionError.

Hydra's rules followed here: in a file of group G, `- name` is the config G/name and `- /path` is absolute;
`- group: option` (also `override group`, `optional group`, `group@package`, a list of options) is
G/group/option.yaml, `/group` absolute; `_self_`, null and interpolated options name no file. Names are looked up
in the primary's folder, then in configs/ (the search path `compose` gives Hydra).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nemotron_eval.core.errors import UserError
from nemotron_eval.core.safeload import load_yaml

MAX_DEPTH = 32  # levels of `defaults:` below the primary; this project's configs use two
MAX_FILES = 1000


def _entries(data: Any, group: str) -> list[str]:
    """The configs (paths without .yaml, relative to a search folder) a file's `defaults:` list names."""
    defaults = data.get("defaults") if isinstance(data, dict) else None
    found: list[str] = []

    def join(name: str) -> str:
        return name[1:] if name.startswith("/") else f"{group}/{name}" if group else name

    for entry in defaults if isinstance(defaults, list) else []:
        if isinstance(entry, str) and entry != "_self_" and "${" not in entry:
            found.append(join(entry.strip()))
        elif isinstance(entry, dict):
            for key, options in entry.items():
                name = str(key).strip()
                for prefix in ("override ", "optional "):
                    name = name.removeprefix(prefix).strip()
                name = name.split("@")[0]
                for option in options if isinstance(options, list) else [options]:
                    if isinstance(option, (str, int)) and "${" not in str(option):
                        found.append(f"{join(name)}/{option}")
    return found


@dataclass(frozen=True)
class Tree:
    """What `read_tree` found: the files read, in the order found, and whether a defaults list holds an
    interpolation (`- deployment: ${oc.env:DEPLOY}`), an option Hydra resolves from outside the files."""

    files: list[Path]
    interpolated: bool


def read_tree(primary: Path, primary_data: Any, configs_dir: Path, chosen: list[Path]) -> Tree:
    """Read every file of the composition's defaults tree (the primary's, and the config group options `chosen`
    by overrides, with theirs) through the safe reader. A UserError names the chain that is too deep, the cycle,
    or the file that cannot be read."""
    search = [primary.parent, configs_dir]

    def locate(name: str) -> Path | None:
        for folder in search:
            candidate = folder / f"{name}.yaml"
            if candidate.is_file():
                return candidate
        return None

    def group_of(path: Path) -> str:
        for folder in search:
            if path.is_relative_to(folder):
                return str(path.relative_to(folder).parent).removeprefix(".")
        return ""

    read: list[Path] = []
    interpolated = False
    stack: list[tuple[Path, Any, tuple[str, ...]]] = [(primary, primary_data, (primary.stem,))]
    stack += [(p, None, (primary.stem, f"{group_of(p)}/{p.stem}")) for p in reversed(chosen) if p.is_file()]
    while stack:
        path, data, chain = stack.pop()
        if data is None:
            data = load_yaml(path, "config file")
            read.append(path)
            if len(read) > MAX_FILES:
                raise UserError(f"{primary}: its defaults lists name more than {MAX_FILES} config files; a config needs a few")
        group = group_of(path)
        interpolated = interpolated or "${" in repr(data.get("defaults") if isinstance(data, dict) else None)
        for name in reversed(_entries(data, group)):
            found = locate(name)
            if found is None:
                continue  # Hydra names what it cannot find, in its own words
            if name in chain:
                raise UserError(f"{primary}: a cycle in its defaults lists: {' -> '.join([*chain, name])}; remove one")
            if len(chain) > MAX_DEPTH:
                raise UserError(
                    f"{primary}: its defaults lists nest more than {MAX_DEPTH} levels deep "
                    f"({' -> '.join(chain[:3])} -> ...); a config needs two or three"
                )
            stack.append((found, None, (*chain, name)))
    return Tree(read, interpolated)
