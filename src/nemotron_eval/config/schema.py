"""The schema of the evaluation config: the engine that applies the rules (`config.rules`, the general ones; a
registry's own, such as the deployment type's) to a resolved config.

`check(resolved, merged)` is called by the Plan on the merged config with its interpolations resolved: once when
the plan is made (`${art:...}` still unknown: values holding it are skipped) and once per model on its job.yaml
(the checkpoint path known). A nonsense value fails there, before anything is written or submitted, in one line
naming the key, the value and what is valid:

    execution.num_nodes='two': a whole number >= 1

Rules from registries (the hook): `check(..., rules=extra, closed=sections)`.
* `rules`: a list of (key pattern, rule) pairs that apply to this config, checked after the general ones. A key
  pattern is dotted with `*` for any key or list index (`deployment.endpoints.*`); a rule is a function of the
  value returning None when valid, else what would be (`config.validators`: integer, text, one_of, ...). The Plan
  passes the current deployment type's (`deploy.types.Deployment.rules`); an exporter or executor registry adds
  the rules of the ones in use the same way, only for the config that uses them.
* `closed`: section -> (its owner in words, its keys): an unknown key there is an error with a did-you-mean
  (`deployment` of the local deployment, ours entirely: `Deployment.closed`).

Rules, in one place:
* our sections are closed: an unknown key under `run` (but `run.env`, which holds the env.toml profile's keys),
  `data`, or a section a registry closes is an error with a did-you-mean;
* the launcher's sections keep the launcher's rules: its own models validate `evaluation` and `execution.mounts`
  (unknown keys there are its errors, retold in one line), and only the keys we or it read are typed here;
* values that end up inside `deployment.command` (`${deployment.served_model_name}`, ...) hold only characters
  that need no quoting: the command is split into argv (local) or run by bash (in the container);
* NeMo Evaluator pastes `nemo_evaluator_config` params into the harness's bash script (its task templates):
  their strings hold no shell-special character (`extra.args`, a shell fragment by design, excepted);
* paths mounted into containers (checkpoint, mounts, dataset_dir) are absolute and hold no `,` (pyxis's mount
  separator) and no `:` in a host path (`/tmp/a,/etc:/host-etc` would mount the host's /etc); a checkpoint path,
  the default tokenizer too, holds only characters that need no quoting.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from nemotron_eval.config.rules import CLOSED, ENGINES, RULES
from nemotron_eval.config.validators import Rule, no_shell
from nemotron_eval.core.errors import UserError, did_you_mean, shown

# How a value known only per model (an ${art:...} reference) reads before it is resolved: a marker no user can
# type (a fresh nonce per process), so a value cannot skip the checks by looking pending.
PENDING = f"<art-pending-{secrets.token_hex(8)}:"

TEMPLATE_SAFE = re.compile(r"[A-Za-z0-9_./:@%+=,-]+")
SHELL_FRAGMENTS = frozenset({"deployment.command", "deployment.base_command", "deployment.extra_args"})

__all__ = ["ENGINES", "PENDING", "BadValue", "Rule", "check", "template_keys", "whole_numbers"]


# -- checking ------------------------------------------------------------------------------------------------


class BadValue(UserError):
    """A value a rule refused; `key` and `value` say which, for a caller that knows where the value came from."""

    def __init__(self, key: str, value: Any, valid: str) -> None:
        super().__init__(f"{key}={shown(value, 80)}: {valid}")
        self.key, self.value = key, value


def _fail(key: str, value: Any, valid: str) -> UserError:
    return BadValue(key, value, valid)


def _matches(node: Any, parts: list[str], prefix: str = "") -> Iterator[tuple[str, Any]]:
    if not parts:
        yield prefix, node
        return
    head, rest = parts[0], parts[1:]
    if isinstance(node, Mapping):
        keys = list(node) if head == "*" else [head] if head in node else []
        for k in keys:
            yield from _matches(node[k], rest, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, list) and head == "*":
        for i, item in enumerate(node):
            yield from _matches(item, rest, f"{prefix}.{i}" if prefix else str(i))


def whole_numbers(cfg: Any, rules: Sequence[tuple[str, Rule]] = ()) -> None:
    """Where a rule (the general ones and `rules`) wants a whole number, a float that is one becomes an int, in
    place: `6e3` and `6000.0` (YAML and the overrides read both as floats) are 6000 in what is checked and
    written, as the user meant. Other floats stay, for the rule to refuse."""

    for pattern, rule in [*RULES, *rules]:
        if getattr(rule, "whole_number", False):
            for key, value in list(_matches(cfg, pattern.split("."))):
                if isinstance(value, float) and value.is_integer():
                    parent_key, _, last = key.rpartition(".")
                    parent = _lookup(cfg, parent_key)[1] if parent_key else cfg
                    parent[int(last) if isinstance(parent, list) else last] = int(value)


def _strings(node: Any, prefix: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from _strings(v, f"{prefix}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{prefix}.{i}")
    elif isinstance(node, str):
        yield prefix, node


_REF = re.compile(r"\$\{([A-Za-z_.][A-Za-z0-9_.]*)\}")


def template_keys(merged: Mapping[str, Any]) -> list[str]:
    """The keys whose values `deployment.command` pastes in (`${deployment.port}`, through `base_command`)."""
    found: list[str] = []

    def walk(key: str, seen: frozenset[str]) -> None:
        value: Any = merged
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if not isinstance(value, str):
            return
        for ref in _REF.findall(value):
            ref = f"deployment{ref}" if ref.startswith(".") else ref
            if ref in SHELL_FRAGMENTS and ref not in seen:
                walk(ref, seen | {ref})
            elif ref not in SHELL_FRAGMENTS and ref not in found:
                found.append(ref)

    walk("deployment.command", frozenset({"deployment.command"}))
    return found


def _lookup(cfg: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in key.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def _check_closed(cfg: Mapping[str, Any], closed: Mapping[str, tuple[str, Sequence[str]]]) -> None:
    sections = {section: (f"this project's section {section!r}", keys) for section, keys in CLOSED.items()}
    for section, (owner, valid) in {**sections, **closed}.items():
        found, node = _lookup(cfg, section)
        if not found or not isinstance(node, Mapping):
            continue
        for key in node:
            if key not in valid:
                shown = [v for v in valid if v not in ("compose", "artifacts", "tasks")]
                raise UserError(
                    f"{section}.{key}: unknown key in {owner}{did_you_mean(str(key), shown)}; valid: {', '.join(shown)}"
                )


def _check_launcher(cfg: Mapping[str, Any]) -> None:
    """The launcher's own models for `evaluation` and `execution.mounts` (extra keys forbidden), in one line."""
    from pydantic import ValidationError

    from nemotron_eval.core.launcher import module

    models = module("nemo_evaluator_launcher.common.config_models")
    EvaluationModel, MountsModel, TaskModel = models.EvaluationModel, models.MountsModel, models.TaskModel

    execution = cfg.get("execution") or {}
    if isinstance(execution, Mapping) and execution.get("env_vars") is not None:
        raise UserError(
            "execution.env_vars: not a key of NeMo Evaluator Launcher; use top-level env_vars (every job), "
            "deployment.env_vars or evaluation.env_vars"
        )
    checks = [("evaluation", EvaluationModel, cfg.get("evaluation"))]
    if isinstance(execution, Mapping) and execution.get("mounts") is not None:
        checks.append(("execution.mounts", MountsModel, execution["mounts"]))
    for section, model, value in checks:
        try:
            model.model_validate(value)
        except ValidationError as e:
            err = e.errors()[0]
            key = ".".join([section, *(str(p) for p in err["loc"])])
            if err["type"] == "extra_forbidden":
                loc = [str(p) for p in err["loc"]]
                sub: Any = model if len(loc) == 1 else TaskModel if loc[0] == "tasks" and len(loc) == 3 else None
                allowed = sorted(sub.model_fields) if sub is not None else []
                hint = f"{did_you_mean(key.rsplit('.', 1)[1], allowed)}; valid: {', '.join(allowed)}" if allowed else ""
                raise UserError(f"{key}: unknown key (NeMo Evaluator Launcher's {section} has no such key){hint}") from None
            raise UserError(f"{key}={shown(err.get('input'), 80)}: {err['msg']} (NeMo Evaluator Launcher's rule)") from None


def check(
    resolved: Mapping[str, Any], merged: Mapping[str, Any] | None = None, *, pending: bool = False,
    rules: Sequence[tuple[str, Rule]] = (), closed: Mapping[str, tuple[str, Sequence[str]]] | None = None,
) -> None:
    """Raise a UserError naming the first invalid key of a resolved config (see the module docstring).
    `merged` (interpolations kept) tells which keys `deployment.command` pastes in. With `pending` (the plan's
    check before any model is resolved) values holding `PENDING` are skipped; a model's own check has none.
    `rules` are applied after the general ones, `closed` sections with theirs (see "Rules from registries")."""

    def _pending(value: Any) -> bool:
        return pending and PENDING in repr(value)

    for pattern, rule in [*RULES, *rules]:
        for key, value in _matches(resolved, pattern.split(".")):
            if _pending(value):
                continue
            problem = rule(value)
            if problem:
                raise _fail(key, value, problem)
    _check_closed(resolved, closed or {})
    _check_launcher(resolved)
    evaluation = resolved.get("evaluation") or {}
    sources = [("evaluation.nemo_evaluator_config", evaluation.get("nemo_evaluator_config"))]
    sources += [(f"evaluation.tasks.{i}.nemo_evaluator_config", t.get("nemo_evaluator_config"))
                for i, t in enumerate(evaluation.get("tasks") or []) if isinstance(t, Mapping)]
    for prefix, node in sources:
        for key, value in _strings(node, prefix):
            if not key.endswith(".params.extra.args") and not _pending(value) and no_shell(value):
                raise _fail(key, value, str(no_shell(value)))
    for key in template_keys(merged if merged is not None else resolved):
        found, value = _lookup(resolved, key)
        if not found or _pending(value) or value is None:
            continue
        if isinstance(value, (dict, list)) or not TEMPLATE_SAFE.fullmatch(str(value)):
            raise _fail(key, value, "letters, digits and _ . / : @ % + = , - only (deployment.command pastes it into a command line)")
