"""Artifact specs (`rl:latest`, `sft:v2`) and their path form in `{model}` wildcards (`rl_latest`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from nemotron_eval.core.errors import UserError

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_ALIAS = r"[A-Za-z0-9][A-Za-z0-9.-]*"
_SPEC_RE = re.compile(rf"(?P<name>{_NAME}):(?P<alias>{_ALIAS})")  # fullmatch: `$` would take a trailing newline
_WILDCARD_RE = re.compile(rf"(?P<name>{_NAME})_(?P<alias>{_ALIAS})")
_HELP = "write NAME_ALIAS, e.g. rl_latest for rl:latest, sft_v2 for sft:v2 (the alias has no '_')"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    alias: str  # "latest", "v3", or any other alias; "3" is normalised to "v3"

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.alias}"

    @property
    def wildcard(self) -> str:
        return f"{self.name}_{self.alias}"

    @property
    def is_version(self) -> bool:
        return version_number(self.alias) is not None


def version_number(alias: str) -> int | None:
    """N of a version alias `vN` (None for another alias: latest, best, ...)."""
    return int(alias[1:]) if re.fullmatch(r"v\d+", alias) else None


MAX_NAME, MAX_ALIAS = 128, 64  # build/NAME_ALIAS/ must stay one file name (at most 255 bytes)


def _normalise(name: str, alias: str) -> ModelSpec:
    for what, value, limit in (("name", name, MAX_NAME), ("alias", alias, MAX_ALIAS)):
        if len(value) > limit:
            raise UserError(f"artifact {what} {value[:20]}...: {len(value)} characters; at most {limit}")
    return ModelSpec(name, f"v{alias}" if alias.isdigit() else alias)


def parse_wildcard(value: str) -> ModelSpec:
    """`rl_latest` -> rl:latest; the last `_` separates name and alias."""
    m = _WILDCARD_RE.fullmatch(value)
    if not m:
        raise UserError(f"model {value!r} in the target path is not a valid artifact spec; {_HELP}")
    return _normalise(m["name"], m["alias"])


def parse_spec(value: str, where: str = "run.model") -> ModelSpec:
    """`rl:latest`, `sft:v2`, `sft:2`, `rl:best`; a bare name means `:latest`."""
    if ":" not in value and re.fullmatch(_NAME, value or ""):
        return _normalise(value, "latest")
    m = _SPEC_RE.fullmatch(value or "")
    if not m:
        raise UserError(f"{where}: {value!r} is not a valid artifact spec; write NAME:ALIAS, e.g. rl:latest, sft:v2")
    return _normalise(m["name"], m["alias"])


# --- several models: `run.model` as a list or a version set ---------------------------------------------------------

_RANGE_RE = re.compile(rf"(?P<name>{_NAME}):v?(?P<first>\d+)\.\.v?(?P<last>\d+)")
_ALL_RE = re.compile(rf"(?P<name>{_NAME}):\*")
SETS_HELP = "sft:v2, sft:v1,sft:v3, sft:v2..v5, sft:* (every version), [sft:v1,rl:latest]"


@dataclass(frozen=True)
class VersionSet:
    """`sft:v2..v5` (the versions of sft from v2 to v5 the registry has) or `sft:*` (all of them): which versions
    these are, the registry says (`artifacts.expand_models`)."""

    name: str
    first: int | None  # None: every version (`sft:*`)
    last: int | None
    text: str  # as written, for messages


def parse_models(value: object, where: str = "run.model") -> list[ModelSpec | VersionSet]:
    """`run.model` as written: one spec, specs and version sets separated by commas (`sft:v1,sft:v3`,
    `sft:v2..v5`, `sft:*`), or a YAML list of them. Syntax only; a version set's versions come from the registry."""
    texts = [value] if isinstance(value, str) else value if isinstance(value, list) else None
    if not texts or not all(isinstance(t, str) for t in texts):
        raise UserError(f"{where}: {value!r} is not a model or a list of models; write {SETS_HELP}")
    out: list[ModelSpec | VersionSet] = []
    for item in (part.strip() for text in texts for part in str(text).split(",")):
        m = _RANGE_RE.fullmatch(item) or _ALL_RE.fullmatch(item)
        if m is None:
            if item and ("*" in item or ".." in item):
                raise UserError(f"{where}: {item!r} is not a valid version set; write {SETS_HELP}")
            out.append(parse_spec(item, where))
            continue
        first, last = (int(m["first"]), int(m["last"])) if "first" in m.groupdict() else (None, None)
        if first is not None and last is not None and first > last:
            raise UserError(f"{where}: {item!r} runs backwards (v{first} after v{last}); write "
                            f"{m['name']}:v{last}..v{first}, the lower version first")
        _normalise(m["name"], "latest")  # the name's length
        out.append(VersionSet(m["name"], first, last, item))
    return out


def names_several(value: object) -> bool:
    """Whether `run.model` is written as several models or a version set (a list, `,`, `*` or `..`): known per
    model only, once expanded; `parse_models` says what is wrong with it."""
    return isinstance(value, list) or (isinstance(value, str) and any(mark in value for mark in (",", "*", "..")))
