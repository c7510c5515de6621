"""Compose the evaluation config: YAML + Hydra `defaults:` + env.toml profile + dotlist overrides.

The result (build/{model}/merged.yaml) keeps `${run.*}` and `${art:...}` interpolations; they are resolved
in later steps. Everything a user can get wrong is checked here, before anything is written.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nemotron_eval import tasks as task_registry
from nemotron_eval.config.envtoml import EnvFile, load_env_file
from nemotron_eval.errors import UserError, did_you_mean

# `run` is this project's (stripped from eval.yaml), `data` too; the rest are NeMo Evaluator Launcher's sections.
SECTIONS = ("run", "execution", "deployment", "evaluation", "export", "data", "target", "env_vars")
ART_RE = re.compile(r"\$\{art:([^,}]+)(?:,([^}]+))?\}")
ENV_REF_RE = re.compile(r"\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*)")


@dataclass
class ComposeRequest:
    """What the user asked for: the Snakemake config keys of the same names."""

    eval_config: str
    configs_dir: Path
    env_profile: str | None = None
    overrides: list[str] = field(default_factory=list)
    tasks: list[str] | None = None
    env_file: Path | None = None  # default: NEMOTRON_ENV_FILE or walk up from cwd


def find_config(name_or_path: str, configs_dir: Path) -> Path:
    """A path to a YAML file, or a name under configs/ (`local`, `default.yaml`)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.resolve()
    for candidate in (configs_dir / name_or_path, configs_dir / f"{name_or_path}.yaml"):
        if candidate.is_file():
            return candidate.resolve()
    names = sorted(p.stem for p in configs_dir.glob("*.yaml"))
    raise UserError(
        f"eval_config: {name_or_path!r} is neither a file nor a config under {configs_dir}"
        f"{did_you_mean(name_or_path, names)}; configs: {', '.join(names)}"
    )


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}: malformed YAML{where}: {problem}") from None


def _defaults_files(primary: Path, configs_dir: Path) -> list[Path]:
    """The config-group files a primary config's `defaults:` list selects (for rerun triggers)."""
    data = read_yaml(primary) or {}
    files = []
    for entry in data.get("defaults", []) or []:
        if isinstance(entry, dict):
            for group, option in entry.items():
                group = str(group).lstrip("+").split("@")[0].removeprefix("override ").strip()
                if option is not None:
                    files.append(configs_dir / group / f"{option}.yaml")
    return files


def group_choice(item: str, configs_dir: Path) -> bool:
    """Whether an override picks a config group's option (`deployment=vllm`, `execution=slurm/default`), as in
    Hydra, rather than setting a value."""
    key, sep, value = item.partition("=")
    key = key.lstrip("+")
    return bool(sep) and "." not in key and (configs_dir / key).is_dir() and (configs_dir / key / f"{value}.yaml").is_file()


def _hydra_compose(primary: Path, configs_dir: Path, choices: list[str]) -> dict[str, Any]:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    GlobalHydra.instance().clear()
    overrides = list(choices)
    if primary.parent.resolve() != configs_dir.resolve():
        overrides.append(f"hydra.searchpath=[file://{configs_dir.resolve()}]")
    try:
        with initialize_config_dir(config_dir=str(primary.parent), version_base=None):
            cfg = compose(config_name=primary.stem, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{primary}: cannot compose its defaults list: {first}") from None
    finally:
        GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def _check_sections(cfg: dict[str, Any], where: Path) -> None:
    for key in cfg:
        if key not in SECTIONS:
            raise UserError(
                f"{where}: unknown top-level section {key!r}{did_you_mean(str(key), SECTIONS)}; "
                f"valid: {', '.join(SECTIONS)}"
            )


def _apply_profile(cfg: dict[str, Any], env: EnvFile, profile: str | None) -> None:
    run = cfg.setdefault("run", {})
    run_env = run.setdefault("env", {}) or {}
    if profile:
        if env.path is None:
            raise UserError(
                f"env_profile {profile!r}: no env.toml found (set NEMOTRON_ENV_FILE or put env.toml in "
                "the working directory or a parent)"
            )
        values = env.profile(profile)
        mounts = list(run_env.get("mounts") or []) + [
            m for m in values.pop("mounts", []) or [] if m not in (run_env.get("mounts") or [])
        ]
        run_env.update(values)
        run_env["mounts"] = mounts
    run_env.setdefault("mounts", [])
    run["env"] = run_env
    wandb = env.settings("wandb")
    if wandb:
        run_wandb = run.setdefault("wandb", {}) or {}
        for key in ("entity", "project"):
            if wandb.get(key) and not run_wandb.get(key):
                run_wandb[key] = wandb[key]
        run["wandb"] = run_wandb


def _parse_override(item: str) -> tuple[str, Any, bool]:
    if "=" not in item:
        raise UserError(f"override {item!r}: expected KEY=VALUE (e.g. evaluation.nemo_evaluator_config.config.params.parallelism=8)")
    key, raw = item.split("=", 1)
    add = key.startswith("+")
    key = key.lstrip("+").strip()
    if not key or not re.fullmatch(r"[A-Za-z0-9_.\-/]+", key):
        raise UserError(f"override {item!r}: {key!r} is not a dotted key path")
    return key, parse_value(raw, item), add


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def parse_value(raw: str, item: str) -> Any:
    """An override's value: a number, true/false, null, a quoted string, a [list] or {mapping} in YAML flow style;
    anything else is the text as written (`run.env.time=04:00:00` stays a time, `deployment.command=bash -c 'a: b'`
    a command), never what a YAML parser would make of it."""
    text = raw.strip()
    if not text:
        return ""
    if text in ("null", "~"):
        return None
    if text in ("true", "false"):
        return text == "true"
    if _NUMBER.fullmatch(text):
        return yaml.safe_load(text)
    if text[0] in "[{" or (len(text) > 1 and text[0] == text[-1] and text[0] in "'\""):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise UserError(f"override {item!r}: the value is not valid YAML flow syntax ({problem})") from None
    return raw


def _apply_override(cfg: dict[str, Any], item: str) -> None:
    key, value, add = _parse_override(item)
    parts = key.split(".")
    node: Any = cfg
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        here = ".".join(parts[:depth]) or "the top level"
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(f"override {item!r}: {here} is a list of {len(node)}; {part!r} is not an index in it")
            if last:
                node[int(part)] = value
                return
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise UserError(f"override {item!r}: {here} is a value, not a section; it has no key {part!r}")
        if part not in node:
            if depth == 0:
                raise UserError(
                    f"override {item!r}: unknown section {part!r}{did_you_mean(part, node)}; valid: {', '.join(SECTIONS)}"
                )
            if not add:
                keys = ", ".join(map(str, node)) or "(none)"
                raise UserError(
                    f"override {item!r}: unknown key {key!r}: {here} has no {part!r}{did_you_mean(part, map(str, node))} "
                    f"(keys there: {keys}); write +{key}=... to add a new key"
                )
            if not last:
                node[part] = {}
        if last:
            node[part] = value
            return
        if node[part] is None and add:
            node[part] = {}
        node = node[part]


def _filter_tasks(cfg: dict[str, Any], keep: list[str] | None) -> None:
    """Check every task the config lists (the table's or the launcher catalog's) and keep those `keep` names."""
    listed = (cfg.get("evaluation") or {}).get("tasks")
    if not isinstance(listed, list) or not listed:
        raise UserError("evaluation.tasks must be a non-empty list of {name: ...}")
    resolved = []
    for i, entry in enumerate(listed):
        if not isinstance(entry, dict) or "name" not in entry:
            raise UserError(f"evaluation.tasks.{i}: {entry!r} is not a mapping with a 'name'")
        resolved.append(task_registry.resolve(entry["name"], where=f"evaluation.tasks.{i}.name"))
    shorts = [t.short for t in resolved]
    for short in shorts:
        if shorts.count(short) > 1:
            same = [str(e["name"]) for e, t in zip(listed, resolved) if t.short == short]
            raise UserError(
                f"evaluation.tasks: {', '.join(same)} would all write results/{{model}}/{short}.json; list each task "
                "once (write a catalog name qualified as harness.task to tell them apart)"
            )
    if keep is None:
        return
    names = [n for t in resolved for n in (t.short, t.launcher)]
    for name in keep:
        if not any(task_registry.matches(t, name) for t in resolved):
            raise UserError(
                f"task filter: {name!r} is not in the config's evaluation.tasks{did_you_mean(name, names)}; "
                f"tasks: {', '.join(shorts)}"
            )
    cfg["evaluation"]["tasks"] = [e for e, t in zip(listed, resolved) if any(task_registry.matches(t, n) for n in keep)]


def _check_interpolations(cfg: dict[str, Any], where: Path) -> None:
    """Every ${run.*} reference resolves and no mandatory value (???) is left unset."""
    stub = copy.deepcopy(cfg)
    _replace_art(stub, lambda key, fld: f"<art:{key},{fld}>")
    conf = OmegaConf.create(stub)
    try:
        OmegaConf.to_container(conf, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = str(e).strip().splitlines()[0]
        m = re.search(r"Interpolation key '([^']+)' not found", msg)
        if m:
            raise UserError(f"{where}: {key} refers to ${{{m[1]}}}, which is not defined; define it or override {key}") from None
        if "Missing mandatory value" in msg:
            raise UserError(f"{where}: {key} is mandatory (???) and not set; set it in the config or with an override {key}=...") from None
        raise UserError(f"{where}: cannot resolve {key}: {msg}") from None


def _replace_art(node: Any, value_of: Any) -> Any:
    """Replace `${art:KEY,FIELD}` inside every string of a container, in place; returns the node."""
    if isinstance(node, dict):
        for k, v in node.items():
            node[k] = _replace_art(v, value_of)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            node[i] = _replace_art(v, value_of)
    elif isinstance(node, str) and "${art:" in node:
        return ART_RE.sub(lambda m: str(value_of(m[1].strip(), (m[2] or "path").strip())), node)
    return node


def env_references(node: Any) -> list[str]:
    """Environment variables the config reads through ${oc.env:NAME}: their values are rerun triggers."""
    found: set[str] = set()

    def walk(n: Any) -> None:
        if isinstance(n, dict):
            for v in n.values():
                walk(v)
        elif isinstance(n, list):
            for v in n:
                walk(v)
        elif isinstance(n, str):
            found.update(ENV_REF_RE.findall(n))

    walk(node)
    return sorted(found)


def resolved_value(cfg: dict[str, Any], key: str) -> Any:
    """One value of the merged config, its interpolations resolved (it must not refer to `${art:...}`)."""
    return OmegaConf.select(OmegaConf.create(cfg), key)


def _refuse_secret_values(cfg: dict[str, Any], where: Path) -> None:
    """Secrets travel by name (api_key_name, the environment), never as values in a config file."""
    from nemotron_eval.secrets import looks_secret

    for name in env_references(cfg):
        if looks_secret(name):
            raise UserError(
                f"{where}: ${{oc.env:{name}}} would write a secret into build/; pass it by name instead "
                f"(e.g. deployment.api_key_name={name}); jobs read it from the environment"
            )


def validate(cfg: dict[str, Any], where: Path) -> None:
    _check_sections(cfg, where)
    for section in ("run", "deployment", "evaluation"):
        if not isinstance(cfg.get(section), dict):
            raise UserError(f"{where}: section {section!r} is missing or not a mapping")
    from nemotron_eval.deploy.types import TYPES

    dtype = cfg["deployment"].get("type")
    if dtype not in TYPES:
        raise UserError(f"{where}: deployment.type {dtype!r} is not valid{did_you_mean(str(dtype), TYPES)}; valid: {', '.join(TYPES)}")
    _check_interpolations(cfg, where)


def compose(req: ComposeRequest) -> dict[str, Any]:
    """The merged config as a plain dict (interpolations kept), fully validated."""
    primary = find_config(req.eval_config, req.configs_dir)
    raw = read_yaml(primary)
    if not isinstance(raw, dict):
        raise UserError(f"{primary}: expected a mapping of sections ({', '.join(SECTIONS)}), got {type(raw).__name__}")
    _check_sections({k: v for k, v in raw.items() if k != "defaults"}, primary)
    for group_file in _defaults_files(primary, req.configs_dir):
        if group_file.is_file():
            read_yaml(group_file)  # malformed group files get the same one-line error
    choices = [o for o in req.overrides if group_choice(o, req.configs_dir)]
    cfg = _hydra_compose(primary, req.configs_dir, choices)
    env = load_env_file(req.env_file)
    _apply_profile(cfg, env, req.env_profile)
    for item in req.overrides:
        if item not in choices:
            _apply_override(cfg, item)
    _filter_tasks(cfg, req.tasks)
    validate(cfg, primary)
    _refuse_secret_values(cfg, primary)
    cfg["run"]["compose"] = {
        "eval_config": str(primary),
        "env_file": str(env.path) if env.path else None,
        "env_profile": req.env_profile,
        "overrides": list(req.overrides),
        "tasks": list(req.tasks) if req.tasks is not None else None,
    }
    order = {name: i for i, name in enumerate(SECTIONS)}
    return dict(sorted(cfg.items(), key=lambda kv: order.get(kv[0], len(order))))
