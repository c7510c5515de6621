"""Reading files a user (or a teammate's registry) wrote: one reader for every config and registry file.

Config files, env.toml, request files, the registry's aliases.json/metadata.json and staged manifests are
read only through here, so every parser attack ends the same way, in one line naming the file:

* a size cap (`MAX_BYTES`, 1 MB; configs are a few KB): a 50 MB YAML is refused before it is read;
* strict UTF-8: non-UTF-8 bytes are named by their offset;
* YAML: the loader OmegaConf/Hydra use (no timestamps, so what we check is what Hydra reads), with duplicate keys
  refused by line, and alias expansion bounded: the node graph is measured before anything is built, so the
  1.7 KB "billion laughs" (9 aliases wide, 8 deep: 43 million values) fails at once instead of hanging Hydra;
  tags that make Python objects OmegaConf cannot hold (!!binary, !!set, ...) are refused;
* TOML: date and time values (`time = 04:00:00` is a datetime.time) are refused with the quoted spelling;
* JSON: duplicate keys refused, a truncated file named as such.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import tomllib
from pathlib import Path
from typing import Any

import yaml

from nemotron_eval.core.errors import UserError

MAX_BYTES = 1 << 20  # 1 MB
MAX_YAML_VALUES = 200_000  # values after alias expansion; a real config has a few hundred
MAX_DEPTH = 64  # levels of nesting; a real config has fewer than ten


def read_text(path: Path | str, what: str = "file", *, max_bytes: int = MAX_BYTES) -> str:
    """The file's text: a regular file (a FIFO, device or socket would block or never end: refused without
    waiting), at most `max_bytes`, valid UTF-8; else a UserError naming the file."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO with no writer opens at once instead of blocking
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not a {what}") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read this {what} ({e.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise UserError(f"{path}: is a folder, not a {what}")
        raise UserError(f"{path}: not a regular file (a pipe, device or socket); a {what} must be a file")
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UserError(f"{path}: larger than {max_bytes // 1024} KB; a {what} is a few KB (is this the right file?)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r}); save it as UTF-8") from None


def check_depth(value: Any, where: str, limit: int = MAX_DEPTH) -> None:
    """Refuse data nested deeper than `limit` levels (a config has fewer than ten); iterative, so a document
    thousands of levels deep is refused in one line rather than by a RecursionError somewhere later."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise UserError(f"{where}: nested more than {limit} levels deep; a config needs fewer than ten")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


# --- YAML ---------------------------------------------------------------------------------------------------


def _loader_class() -> type:
    from omegaconf._utils import get_yaml_loader

    return get_yaml_loader()  # type: ignore[no-any-return]


_PLAIN = (str, int, float, bool, type(None))


def _check_graph(root: yaml.Node, where: str, limit: int) -> None:
    """Refuse duplicate keys, recursive aliases and documents that expand to more than `limit` values. Shared
    nodes (aliases) are measured once each (memoised), so the check is linear in the file, not in its expansion."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in visiting:
            raise UserError(f"{where}: a recursive YAML alias at line {node.start_mark.line + 1}; remove the alias")
        visiting.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value != "<<":
                    if k.value in seen:
                        raise UserError(
                            f"{where}: duplicate key {k.value!r} at line {k.start_mark.line + 1} "
                            f"(first at line {seen[k.value]}); keep one"
                        )
                    seen[k.value] = k.start_mark.line + 1
                total += size(k) + size(v)
                if total > limit:
                    break
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                total += size(item)
                if total > limit:
                    break
        visiting.discard(key)
        if total > limit:
            raise UserError(
                f"{where}: expands to more than {limit} values (a YAML alias *x counts its anchor's values each time "
                "it is used); a config needs a few hundred"
            )
        sizes[key] = total
        return total

    size(root)


def _check_types(value: Any, where: str, key: str = "") -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int, float, bool)):
                raise UserError(f"{where}: key {k!r} under {key or 'the top level'} is not a plain key")
            _check_types(v, where, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_types(v, where, f"{key}.{i}" if key else str(i))
    elif not isinstance(value, _PLAIN):
        raise UserError(
            f"{where}: {key or 'the document'} is a YAML {type(value).__name__} value, which a config cannot hold; "
            "write it as a quoted string"
        )


def load_yaml_text(text: str, where: str, *, limit: int = MAX_YAML_VALUES, malformed: str = "malformed YAML") -> Any:
    """One YAML document (None when empty), checked as described in the module docstring; `malformed` starts
    the message for a syntax error."""
    loader = _loader_class()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_graph(node, where, limit)
        data = loader.construct_document(node)
        check_depth(data, where)
        _check_types(data, where)
    except RecursionError:
        raise UserError(f"{where}: nested too deeply to be a config") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{where}: {malformed}{at}: {problem}") from None
    finally:
        loader.dispose()
    return data


def load_yaml(path: Path | str, what: str = "YAML file") -> Any:
    return load_yaml_text(read_text(path, what), str(path))


# --- TOML ---------------------------------------------------------------------------------------------------


def _refuse_toml_times(value: Any, where: str, key: str = "") -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _refuse_toml_times(v, where, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for v in value:
            _refuse_toml_times(v, where, key)
    elif isinstance(value, (dt.datetime, dt.date, dt.time)):
        kind = {dt.datetime: "date-time", dt.date: "date", dt.time: "time"}[type(value)]
        table, _, name = key.rpartition(".")
        where_key = f"[{table}] {name}" if table else name
        raise UserError(
            f"{where}: {where_key} = {value.isoformat()} is a TOML {kind}, not text; quote it: {name} = \"{value.isoformat()}\""
        )


def load_toml(path: Path | str, what: str = "TOML file") -> dict[str, Any]:
    text = read_text(path, what)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: malformed TOML: {e}") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a {what}") from None
    check_depth(data, str(path))
    _refuse_toml_times(data, str(path))
    return data


# --- JSON ---------------------------------------------------------------------------------------------------


def load_json(path: Path | str, what: str = "JSON file", *, fix: str = "") -> Any:
    """A JSON document; a truncated or hand-broken file is one line (with `fix`: what to do about it)."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise UserError(f"{path}: duplicate key {k!r} in this {what}{'; ' + fix if fix else ''}")
            out[k] = v
        return out

    text = read_text(path, what)
    try:
        data = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as e:
        raise UserError(
            f"{path}: this {what} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}; truncated?)"
            f"{'; ' + fix if fix else ''}"
        ) from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a {what}") from None
    check_depth(data, str(path))
    return data
