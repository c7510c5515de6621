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
        return re.fullmatch(r"v\d+", self.alias) is not None


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
