"""Records this project wrote and reads back later (a run's run.json, NeMo-Run's run records): trusted for nothing.

A record may be truncated by a full disk, edited by hand, or written by another version. `load(cls, path, what)`
reads one through the safe JSON reader (`safeload.load_json`: a regular file, a size cap, UTF-8, no duplicate
keys) and checks every field against the dataclass's own annotations before the dataclass is built, so a
wrongly typed field is one line naming the file and the field, never a TypeError somewhere later:

    runs/20261202-101500-ab12/run.json: field 'pid' = '123' is not a whole number or null; ...

The annotations are the only description of a record: a field added to the dataclass is checked with no
further code. What a type cannot say (a state among a few, a name that becomes a path) the record's owner
checks after loading, with `problem(...)` for the same wording.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

from nemotron_eval.core.errors import UserError, shown
from nemotron_eval.core.safeload import load_json

T = TypeVar("T")


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if origin is dict:
        return "an object"
    return {str: "a string", int: "a whole number", float: "a number", bool: "true or false",
            dict: "an object", list: "a list", type(None): "null", Any: "a value"}.get(hint, getattr(hint, "__name__", str(hint)))


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value) if args else isinstance(value, list)
    if origin is dict:
        if not isinstance(value, dict):
            return False
        key, item = args or (Any, Any)
        return all(_fits(k, key) and _fits(v, item) for k, v in value.items())
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(hint, type) and isinstance(value, hint)


def problem(path: Path | str, what: str, field: str, value: Any, valid: str, fix: str = "") -> UserError:
    """The one line about a field of a record: the file, the field, its value, what would be valid."""
    return UserError(f"{path}: field {field!r} = {shown(value)} is not {valid}; {fix or _advice(what)}")


def _advice(what: str) -> str:
    return f"this {what} was edited or cut short: restore it, or remove it"


@functools.cache
def _shape(cls: type) -> tuple[dict[str, Any], list[dataclasses.Field[Any]]]:
    """A record class's field annotations (evaluated once: a registry of 200 versions reads 200 records) and its
    fields set by the constructor."""
    return typing.get_type_hints(cls), [f for f in dataclasses.fields(cls) if f.init]


def from_dict(cls: type[T], data: Any, path: Path | str, what: str, fix: str = "", *, at: str = "") -> T:
    """`cls` (a dataclass) from a decoded record, each field checked against its annotation (see the module);
    `at`: where this object sits in the file (e.g. "versions.v1."), put before the field names it reports."""
    hints, fields = _shape(cls)
    advice = fix or _advice(what)
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a {what} (a JSON object of {', '.join(f.name for f in fields)}); {advice}")
    names = {f.name for f in fields}
    unknown = sorted(str(k) for k in data if k not in names)
    if unknown:
        raise UserError(f"{path}: unknown field {at + unknown[0]!r} in this {what}; {advice}")
    for f in fields:
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name not in data:
            if required:
                raise UserError(f"{path}: field {at + f.name!r} is missing from this {what}; {advice}")
            continue
        if not _fits(data[f.name], hints[f.name]):
            raise problem(path, what, at + f.name, data[f.name], _describe(hints[f.name]), fix)
    return cls(**data)


def load(cls: type[T], path: Path | str, what: str, fix: str = "") -> T:
    """A record file as `cls`: read by the safe JSON reader, every field checked (see the module docstring)."""
    return from_dict(cls, load_json(path, what, fix=fix), path, what, fix)
