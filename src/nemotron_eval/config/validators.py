"""What a config value may be: the validators the schema's rules are made of (`config.rules`, the deployment
types' `rules`), each a function of the value returning None when it is valid, else what would be.

    integer(1)(0) -> "a whole number >= 1"

Also used on their own where a value is read outside a config (env.toml's mounts and times, the registry's
checkpoint paths).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from nemotron_eval.core.errors import UserError, did_you_mean

Rule = Callable[[Any], "str | None"]  # None when the value is valid, else what would be

SAFE_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+,-]*")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]*")
HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:]+\]")
IMAGE = re.compile(r"[A-Za-z0-9~./][A-Za-z0-9_./:@+#-]*")
PATH_SAFE = re.compile(r"[A-Za-z0-9_./~@%+=-][A-Za-z0-9_./~@%+=-]*")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
URL = re.compile(r"https?://[A-Za-z0-9._~:/?#@%+=,\[\]-]+")
_MOUNT_FLAGS = re.compile(r"[a-z]+(?:\+[a-z]+)*")
SHELL_SPECIAL = "'\"`$\\;&|<>()\n\r"


def integer(lo: int, hi: int | None = None, *, null: bool = False) -> Rule:
    what = f"a whole number >= {lo}" if hi is None else f"a whole number from {lo} to {hi}"
    what += " or null" if null else ""

    def rule(v: Any) -> str | None:
        if v is None and null:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            return what
        return None

    rule.whole_number = True  # type: ignore[attr-defined]  # schema.whole_numbers: 6e3 here becomes 6000
    return rule


def number(*, gt: float | None = None, ge: float | None = None, le: float | None = None, null: bool = False) -> Rule:
    bounds = [f"> {gt:g}" if gt is not None else "", f">= {ge:g}" if ge is not None else "", f"<= {le:g}" if le is not None else ""]
    what = "a number " + " and ".join(b for b in bounds if b) + (" or null" if null else "")

    def rule(v: Any) -> str | None:
        if v is None and null:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return what
        if (gt is not None and not v > gt) or (ge is not None and v < ge) or (le is not None and v > le):
            return what
        return None

    return rule


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def one_of(*choices: str, null: bool = False) -> Rule:
    what = "one of " + ", ".join(choices) + (" or null" if null else "")

    def rule(v: Any) -> str | None:
        if v is None and null:
            return None
        return None if v in choices else what + (did_you_mean(str(v), choices) if isinstance(v, str) else "")

    return rule


def text(pattern: re.Pattern[str] | None = None, what: str = "a string", *, null: bool = True) -> Rule:
    def rule(v: Any) -> str | None:
        if v is None and null:
            return None
        if not isinstance(v, str) or (pattern is not None and not pattern.fullmatch(v)):
            return what + (" or null" if null else "")
        return None

    return rule


def no_shell(v: Any) -> str | None:
    if isinstance(v, str) and any(c in SHELL_SPECIAL for c in v):
        return "text without shell-special characters (' \" ` $ \\ ; & | < > ( ) or line breaks): it is pasted into a shell script"
    return None


def walltime_minutes(value: Any, where: str = "execution.walltime") -> int:
    """Slurm time formats: MM, HH:MM:SS, D-HH:MM:SS, D-HH -> minutes (rounded up)."""
    text = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m or value is None:
        raise UserError(f"{where}: {value!r} is not a Slurm time (use MM, HH:MM:SS or D-HH:MM:SS)")
    days, a, b, c = (int(g) if g else None for g in m.groups())
    if days is None and b is None:  # plain minutes
        return int(a or 0)
    if c is None and b is not None and days is None:  # MM:SS
        return a + (1 if b else 0)
    hours, minutes, seconds = a or 0, b or 0, c or 0
    return (days or 0) * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def gpus_per_node(gres: str | None) -> int:
    """`gpu:8`, `gpu:h100:8` -> 8; None or no gpu -> 0."""
    if not gres:
        return 0
    m = re.fullmatch(r"gpu(?::[A-Za-z0-9_-]+)?:(\d+)", str(gres).strip())
    if not m:
        raise UserError(f"execution.gres: {gres!r} is not a GPU request (use gpu:N or gpu:TYPE:N)")
    return int(m[1])


def walltime(v: Any) -> str | None:
    """A Slurm time, as the slurm executor reads it (`walltime_minutes`)."""
    if v is None:
        return None
    try:
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise UserError("")
        walltime_minutes(v)
    except UserError:
        return "a Slurm time: MM, HH:MM:SS, D-HH or D-HH:MM:SS, as a quoted string"
    return None


def gres(v: Any) -> str | None:
    """A GPU request, as the slurm executor reads it (`gpus_per_node`)."""
    if v is None:
        return None
    try:
        if not isinstance(v, str):
            raise UserError("")
        gpus_per_node(v)
    except UserError:
        return "gpu:N or gpu:TYPE:N"
    return None


def host_path(v: Any) -> str | None:
    """An absolute path that a container runner can mount: no ',' (pyxis's separator), no ':'."""
    if not isinstance(v, str) or not v.startswith("/"):
        return "an absolute path"
    if "," in v or ":" in v or any(c in v for c in "\n\r\0"):
        return "an absolute path without ',' or ':' (they split a container mount: /a,/etc:/x would mount /etc)"
    return None


def checkpoint_path(v: Any) -> str | None:
    """A checkpoint folder: mounted into containers and, as the tokenizer, pasted into the harness's command line."""
    if not isinstance(v, str) or not v.startswith("/") or not PATH_SAFE.fullmatch(v):
        return (
            "an absolute path of letters, digits and _ . / ~ @ % + = - (',' and ':' split a container mount; "
            "quotes, spaces and '$' would reach the harness's command line)"
        )
    return None


def mount_target(v: Any) -> str | None:
    """`container_path[:flags]` (the value side of execution.mounts.*)."""
    if not isinstance(v, str):
        return "an absolute container path, optionally with :flags (e.g. /data or /data:ro)"
    path, _, flags = v.partition(":")
    if host_path(path) or (flags and not _MOUNT_FLAGS.fullmatch(flags)):
        return "an absolute container path without ',', optionally with :flags (e.g. /data or /data:ro)"
    return None


def mount_entry(v: Any) -> str | None:
    """`host_path:container_path[:flags]`, or one absolute path mounted at the same place."""
    what = "'host_path:container_path[:flags]' with absolute paths without ',' (or one absolute path)"
    if not isinstance(v, str):
        return what
    src, sep, rest = v.partition(":")
    if host_path(src) or (sep and mount_target(rest)):
        return what
    return None


def mounts_map(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, Mapping) or any(host_path(k) or mount_target(t) for k, t in v.items()):
        return "a mapping of absolute host paths (no ',' or ':') to container paths[:flags]"
    return None


def mount_list(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, list) or any(mount_entry(m) for m in v):
        return "a list of " + str(mount_entry(None))
    return None


def env_vars(v: Any) -> str | None:
    """NeMo Evaluator Launcher's env_vars: a mapping of variable names (each value checked by `env_var_value`)."""
    if v is None:
        return None
    if not isinstance(v, Mapping) or not all(isinstance(k, str) and ENV_NAME.fullmatch(k) for k in v):
        return "a mapping of environment variable NAME: lit:VALUE | host:HOST_VARIABLE | runtime:NAME"
    return None


def env_var_value(v: Any) -> str | None:
    """One env_vars value, as the launcher parses it (its own message), with what a script can hold."""
    from nemotron_eval.core.launcher import module

    parse_env_var_value = module("nemo_evaluator_launcher.common.env_vars").parse_env_var_value
    if not isinstance(v, str):
        return "a string: lit:VALUE | host:HOST_VARIABLE | runtime:NAME"
    try:
        parse_env_var_value(v)
    except ValueError as e:
        return str(e).split(" Run the migration tool")[0].strip()
    kind, _, rest = v.partition(":")
    if kind != "lit" and not ENV_NAME.fullmatch(rest):
        return f"{kind}: takes the NAME of an environment variable"
    if kind == "lit" and any(c in rest for c in "'\"`$\\\n\r"):
        return "a lit: value without quotes, backticks, '$', '\\' or line breaks (the launcher writes it into a script)"
    return None


def mapping(v: Any) -> str | None:
    return None if v is None or isinstance(v, Mapping) else "a mapping"


def string_list(v: Any) -> str | None:
    return None if isinstance(v, list) and all(isinstance(x, str) for x in v) else "a list of strings"


def model_spec(v: Any) -> str | None:
    """run.model: one artifact spec, or several and version sets (`core.spec.parse_models`)."""
    from nemotron_eval.core.spec import SETS_HELP, parse_models

    try:
        parse_models(v)
    except UserError:
        return f"an artifact spec NAME:ALIAS (e.g. rl:latest) or several: {SETS_HELP}"
    return None


def url_path(v: Any) -> str | None:
    return None if v is None or (isinstance(v, str) and re.fullmatch(r"/[A-Za-z0-9_./-]*", v)) else "a URL path starting with '/'"
