"""What the user asked for: the config, the env.toml profile, the overrides, the task filter.

A request comes from Snakemake's config keys (`KEYS`: the fields of `Request`), or from a request file named
by the one key `request` (YAML with the same keys), which is how `nemotron eval` passes it.

No value of a request ever reaches a shell. Snakemake re-invokes itself for cluster jobs (and, with its local
executor, for `run:` jobs) with every `--config` value pasted into a shell command line, quoted with Python's
repr() (upstream issue snakemake/snakemake#2981): a quote or a `$(...)` in a value would run. So the Snakefile
writes the request it parsed to a file named by its digest (`persist`) and hands the jobs Snakemake starts only
`request=<that file>`; values work literally, whatever they hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from nemotron_eval.core.errors import UserError

@dataclass(frozen=True)
class Request:
    eval_config: str = "local"
    env_profile: str | None = None
    overrides: tuple[str, ...] = ()
    tasks: tuple[str, ...] | None = None
    force_squash: bool = False
    env_file: str | None = None  # the env.toml to read (default: $NEMOTRON_ENV_FILE or the one found walking up)
    compare: tuple[str, ...] | None = None  # artifact specs for results/report.html (default: those with results)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["overrides"] = list(self.overrides)
        d["tasks"] = list(self.tasks) if self.tasks is not None else None
        d["compare"] = list(self.compare) if self.compare is not None else None
        return d


KEYS = tuple(f.name for f in fields(Request))  # the keys of a request file and of Snakemake's --config


def _typed(data: Mapping[str, Any], where: str) -> Request:
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(KEYS)}")

    def text(key: str, default: str | None) -> str | None:
        value = data.get(key, default)
        if value is not None and (not isinstance(value, str) or not value):
            raise UserError(f"{where}: {key} must be a non-empty string, got {value!r}")
        return value

    def strings(key: str) -> tuple[str, ...] | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise UserError(f"{where}: {key} must be a list of strings, got {value!r}")
        return tuple(value)

    force = data.get("force_squash", False)
    if force in ("true", "false"):  # --config force_squash=true arrives as a string
        force = force == "true"
    if not isinstance(force, bool):
        raise UserError(f"{where}: force_squash must be true or false, got {force!r}")
    return Request(
        eval_config=text("eval_config", "local") or "local",
        env_profile=text("env_profile", None),
        overrides=strings("overrides") or (),
        tasks=strings("tasks"),
        force_squash=force,
        env_file=text("env_file", None),
        compare=strings("compare"),
    )


def read_request_file(path: Path) -> Request:
    from nemotron_eval.core.safeload import load_yaml

    data = load_yaml(path, "request file")
    if not isinstance(data, dict):
        raise UserError(f"request file {path}: expected a mapping of {', '.join(KEYS)}")
    return _typed(data, f"request file {path}")


REQUESTS_DIR = Path(".snakemake") / "nemotron" / "requests"


def persist(request: Request, root: Path = REQUESTS_DIR) -> Path:
    """The request as a file named by its digest (written once, atomically): what jobs Snakemake starts read."""
    from nemotron_eval.core.io import dump_yaml, sha256_bytes, write_text_atomic

    text = dump_yaml(request.as_dict())
    path = Path(root) / f"{sha256_bytes(text.encode())[:20]}.yaml"
    if not path.is_file():
        write_text_atomic(path, text)
    return path


def from_config(config: Mapping[str, Any], command_line: Mapping[str, Any] | None = None) -> Request:
    """The request of a Snakemake run: its config keys, or the request file `request` names (whose keys win).
    `command_line` holds the values given with --config."""
    if command_line:
        both = sorted(set(command_line) & set(KEYS))
        if command_line.get("request") and both:
            raise UserError(f"--config request=FILE and --config {both[0]}=...: put {both[0]} into the request file")
    if config.get("request"):
        return read_request_file(Path(str(config["request"])))
    return _typed({k: config[k] for k in KEYS if k in config}, "Snakemake config")
