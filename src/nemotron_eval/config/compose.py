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

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nemotron_eval.data import tasks as task_registry
from nemotron_eval.config import hydra_cache
from nemotron_eval.config.defaults_tree import read_tree
from nemotron_eval.config.envtoml import EnvFile, load_env_file, local_host, local_user
from nemotron_eval.core.errors import UserError, did_you_mean, shown
from nemotron_eval.core.safeload import check_depth, load_yaml, load_yaml_text

# `run` is this project's (stripped from eval.yaml), `data` too; the rest are NeMo Evaluator Launcher's sections.
SECTIONS = ("run", "execution", "deployment", "evaluation", "export", "data", "target", "env_vars")
MAX_NESTING = 32  # levels a config may have after its overrides; this project's deepest key has six
ART_RE = re.compile(r"\$\{art:([^,}]+)(?:,([^}]+))?\}")


@dataclass
class ComposeRequest:
    """What the user asked for: the Snakemake config keys of the same names."""

    eval_config: str
    configs_dir: Path
    env_profile: str | None = None
    overrides: list[str] = field(default_factory=list)
    tasks: list[str] | None = None
    env_file: Path | None = None  # default: NEMOTRON_ENV_FILE or walk up from cwd
    # Hydra's compositions kept between processes (config/hydra_cache.py); None: composed every time
    kept: hydra_cache.Kept | None = None


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
    """A config file through the one safe reader (size cap, UTF-8, duplicate keys, bounded aliases)."""
    return load_yaml(path, "config file")


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
    except RecursionError:  # what defaults_tree did not bound (it follows Hydra's common spellings)
        raise UserError(f"{primary}: its defaults lists nest too deeply to compose") from None
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
        # Who submits and through which login node (the launcher runs `ssh USER@HOST sbatch`), where the profile
        # does not say: the local user, and this machine by name unless the profile reaches the cluster over ssh
        # (where `host` is required). Not a rerun trigger: no task's fingerprint holds the cluster's settings.
        if not run_env.get("user"):
            run_env["user"] = local_user()
        if not run_env.get("host") and run_env.get("tunnel", "local") != "ssh":
            run_env["host"] = local_host()
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
    if _NUMBER.fullmatch(text):  # as YAML 1.2 reads numbers (1.1 reads 6e3 as text); whole-number keys: schema
        return int(text) if re.fullmatch(r"[-+]?\d+", text) else float(text)
    if text[0] in "[{" or (len(text) > 1 and text[0] == text[-1] and text[0] in "'\""):
        return load_yaml_text(text, f"override {shown(item)}", malformed="the value is not valid YAML flow syntax")
    return raw


def _apply_override(cfg: dict[str, Any], item: str) -> None:
    key, value, add = _parse_override(item)
    parts = key.split(".")
    # OmegaConf and the YAML writer recurse per level (about 70 levels exhaust Python's stack): an override may
    # not make the config deeper than MAX_NESTING, key and value together
    named = shown(key)
    if len(parts) > MAX_NESTING:
        raise UserError(f"override {named}: a key {len(parts)} levels deep; a config needs fewer than ten")
    check_depth(value, f"override {named} (its key is {len(parts)} levels deep, its value)", limit=MAX_NESTING - len(parts))
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
            if depth == 0 and (part not in SECTIONS or not add):
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
            try:  # a task of the launcher's catalog the config does not list: added, with the config's settings
                added = task_registry.resolve(name, where="task filter")
            except UserError:
                raise UserError(
                    f"task filter: {name!r} is not in the config's evaluation.tasks or the launcher's catalog"
                    f"{did_you_mean(name, names)}; tasks: {', '.join(shorts)}"
                ) from None
            listed.append({"name": name})
            resolved.append(added)
    cfg["evaluation"]["tasks"] = [e for e, t in zip(listed, resolved) if any(task_registry.matches(t, n) for n in keep)]


def _check_interpolations(cfg: dict[str, Any], where: Path) -> None:
    """Every ${run.*} reference resolves and no mandatory value (???) is left unset."""
    stub = copy.deepcopy(cfg)
    _replace_art(stub, pending_art)
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


def env_reads(cfg: dict[str, Any]) -> list[str]:
    """The environment variables a config reads through `${oc.env:...}`, as OmegaConf itself parses the calls:
    with spaces (`${oc.env: NAME}`), quotes, defaults (`${oc.env:A,${oc.env:B}}`) and names that are themselves
    interpolated (`${oc.env:${run.env.n}}`) or escaped (`\\${oc.env:N}`, read when eval.yaml is loaded). Found by
    resolving the config with `oc.env` replaced by a recorder (restored afterwards); what does not resolve is
    reported by `_check_interpolations`."""
    import os

    from omegaconf.basecontainer import BaseContainer

    names: list[str] = []

    def record(key: Any, default: Any = None) -> Any:
        names.append(str(key).strip())
        return os.environ.get(str(key).strip(), default)

    stub = copy.deepcopy(cfg)
    _replace_art(stub, pending_art)
    original = BaseContainer._resolvers.get("oc.env")
    OmegaConf.register_new_resolver("oc.env", record, replace=True, use_cache=False)
    try:  # twice: an escaped \${oc.env:X} resolves to text that the launcher's OmegaConf would resolve again
        once = OmegaConf.to_container(OmegaConf.create(stub), resolve=True)
        OmegaConf.to_container(OmegaConf.create(once), resolve=True)
    except (OmegaConfBaseException, ValueError, TypeError):
        pass
    finally:
        if original is not None:
            BaseContainer._resolvers["oc.env"] = original
    return list(dict.fromkeys(names))


def pending_art(key: str, fld: str) -> str:
    """How `${art:KEY,FIELD}` reads before the artifact is resolved (it starts with config.schema.PENDING)."""
    from nemotron_eval.config.schema import PENDING

    return f"{PENDING}{key},{fld}>"


def resolve_pending(cfg: dict[str, Any]) -> dict[str, Any]:
    """The merged config with every interpolation resolved but `${art:...}`, and `run.model` when it names several
    models, which read as `pending_art` (known only per model). What the plan reads before any model is resolved, and what the schema checks."""
    from nemotron_eval.core.spec import names_several

    stub = copy.deepcopy(cfg)
    _replace_art(stub, pending_art)
    if names_several((stub.get("run") or {}).get("model")):  # several models: run.model is known per model
        stub["run"]["model"] = pending_art("model", "spec")
    try:
        out = OmegaConf.to_container(OmegaConf.create(stub), resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise UserError(f"cannot resolve {key}: {str(e).strip().splitlines()[0]}") from None
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]


def refuse_secrets(cfg: dict[str, Any]) -> None:
    """Secrets travel by name (env_vars `host:NAME`, `api_key_name`, the environment), never as values: the
    environment is read through `${oc.env:...}` only for the variables in secrets.ENV_READABLE, and no value
    holds a secret by its key's name or its own shape. The message never repeats a value."""
    from nemotron_eval.core.secrets import BY_NAME, env_read_problem, in_env_map, literal_secret

    for name in env_reads(cfg):
        problem = env_read_problem(name)
        if problem:
            raise UserError(problem)
    found = literal_secret(cfg)
    if found is None:
        return
    key, what = found
    if in_env_map(key):
        name = key.rsplit(".", 1)[-1]
        raise UserError(
            f"config key {key} holds a secret value (not repeated here): {what}, which would be written to build/; "
            f"pass it by name: {key}=host:{name} (copied from the environment where the job starts)"
        )
    raise UserError(f"config key {key} holds a secret value (not repeated here): {what}, which would be written to build/; {BY_NAME}")


def validate(cfg: dict[str, Any], where: Path) -> None:
    _check_sections(cfg, where)
    for section in ("run", "deployment", "evaluation"):
        if not isinstance(cfg.get(section), dict):
            raise UserError(f"{where}: section {section!r} is missing or not a mapping")
    # deployment.type names a registered type: the Plan asks the registry (deploy.types.get), one line
    _check_interpolations(cfg, where)


def compose(req: ComposeRequest) -> dict[str, Any]:
    """The merged config as a plain dict (interpolations kept), fully validated."""
    primary = find_config(req.eval_config, req.configs_dir)
    raw = read_yaml(primary)
    if not isinstance(raw, dict):
        raise UserError(f"{primary}: expected a mapping of sections ({', '.join(SECTIONS)}), got {type(raw).__name__}")
    _check_sections({k: v for k, v in raw.items() if k != "defaults"}, primary)
    choices = [o for o in req.overrides if group_choice(o, req.configs_dir)]
    chosen = [req.configs_dir / k.lstrip("+") / f"{v}.yaml" for k, _, v in (c.partition("=") for c in choices)]
    # Every file Hydra will read is read here first, through the safe reader: a malformed, oversized or
    # alias-bomb group file, or a defaults tree too deep, gets one line instead of failing inside Hydra.
    tree = read_tree(primary, raw, req.configs_dir, chosen)

    def hydra() -> dict[str, Any]:
        return _hydra_compose(primary, req.configs_dir, choices)

    if req.kept is None:
        cfg = hydra()
    else:
        cfg = req.kept(primary, req.configs_dir, choices, hydra, dynamic=tree.interpolated)
    env = load_env_file(req.env_file)
    _apply_profile(cfg, env, req.env_profile)
    for item in req.overrides:
        if item not in choices:
            _apply_override(cfg, item)
    _filter_tasks(cfg, req.tasks)
    refuse_secrets(cfg)
    validate(cfg, primary)
    cfg["run"]["compose"] = {
        "eval_config": str(primary),
        "env_file": str(env.path) if env.path else None,
        "env_profile": req.env_profile,
        "overrides": list(req.overrides),
        "tasks": list(req.tasks) if req.tasks is not None else None,
    }
    order = {name: i for i, name in enumerate(SECTIONS)}
    return dict(sorted(cfg.items(), key=lambda kv: order.get(kv[0], len(order))))
