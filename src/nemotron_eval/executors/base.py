"""The executor interface and its registry: `execution.type` names one registered executor.

An executor is where the pipeline's jobs run, and the one place that knows it: the Snakemake resources of the
deployment's job and of the squash job, the checks that must fail before anything is submitted, how the
deployment step is wrapped there (srun on Slurm; the container runner itself is `deploy/runners.py`'s), the
node the deployment runs on, the job ids Snakemake reports in a run's log and their status and cancellation,
the Snakemake profile it goes with (profiles/<name>, or profiles/<name>-<variant>: a profile picks its
executor by its name), and, when it has one, its remote path (a head job submitted there).

Adding an executor: one module in this package whose class is decorated with `@register` (the package imports
every module of its own); its config group file configs/execution/<name>.yaml (or configs/execution/<name>/)
and its profile profiles/<name>/; its tests (tests/test_executors.py checks that each registered executor has
the config group file and the profile).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from nemotron_eval.config.validators import Rule, one_of
from nemotron_eval.core.errors import UserError, did_you_mean
from nemotron_eval.executors.runners import RUNNERS


class Executor:
    name: ClassVar[str]
    runners: ClassVar[tuple[str, ...]] = RUNNERS  # the container runners a deployment can use here
    squashes_images: ClassVar[bool] = False  # registry images of pyxis/enroot are squashed by the squash job
    remote: ClassVar[bool] = False  # a head job can be submitted here (nemotron_eval.executors.remote, env.toml profiles)
    rules: ClassVar[tuple[tuple[str, Rule], ...]] = ()  # (key pattern, rule) pairs of this executor's config keys

    @property
    def profile(self) -> str:
        """The Snakemake profile this executor goes with."""
        return f"profiles/{self.name}"

    def snakemake_profile(self, config: str, root: Path) -> str:
        """profiles/<config> when the config has a profile of this executor's own (slurm-local, the test
        cluster's), else this executor's profile."""
        own = Path(config).stem
        if (root / "profiles" / own / "config.v8+.yaml").is_file() and profile_executor(own) == self.name:
            return f"profiles/{own}"
        return self.profile

    def deployment_resources(self, execution: Mapping[str, Any]) -> dict[str, Any]:
        """Snakemake resources of the deployment's job (the group of serve_model and its evaluate_task jobs)."""
        return {}

    def squash_resources(self, run_env: Mapping[str, Any]) -> dict[str, Any]:
        """Snakemake resources of the squash job."""
        return {}

    def check(self, execution: Mapping[str, Any], env_profile: str | None) -> None:
        """What would fail after submission fails now, as one UserError line (may ask the cluster)."""

    def check_settings(self, execution: Mapping[str, Any], env_profile: str | None) -> None:
        """What the config alone shows this executor cannot submit, as one UserError line (asks nobody): called
        when the plan is made, even for a dry run."""

    def srun(self, execution: Mapping[str, Any]) -> bool:
        """Whether the deployment runs as a job step of its own (srun in front of the container runner)."""
        return False

    def deployment_host(self, environ: Mapping[str, str] | None) -> str | None:
        """The host the deployment (its task 0) runs on, from the serve step's environment; None at plan time
        (`environ` None) when only the job knows it."""
        return "127.0.0.1"

    def job_ids(self, line: str) -> list[str]:
        """The ids of jobs Snakemake says it submitted, in one line of its output."""
        return []

    def job_states(self, ids: Iterable[str]) -> dict[str, str]:
        """Each known job's state as the executor reports it (empty when it cannot be asked)."""
        return {}

    def cancel(self, ids: Iterable[str]) -> None:
        """Cancel these jobs (those already ended are left as they are)."""

    def check_runner(self, runner: str, type_: Any) -> None:
        """A container runner this executor cannot start is refused naming the executors that can."""
        if runner not in self.runners:
            able = "|".join(n for n in names() if runner in _REGISTRY[n].runners)
            raise UserError(f"execution.container_runner={runner} needs execution.type={able}; "
                            f"execution.type={type_!r} can use: {', '.join(self.runners)}")


_REGISTRY: dict[str, Executor] = {}


def register(cls: type[Executor]) -> type[Executor]:
    """Class decorator: one instance per executor, under its `name`."""
    if cls.name in _REGISTRY:
        raise ValueError(f"executor {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get(name: Any, key: str = "execution.type") -> Executor:
    """The executor registered as `name`; one UserError line naming the registered ones otherwise."""
    if name not in _REGISTRY:
        raise UserError(f"{key}={name!r}: not an executor; registered: {', '.join(_REGISTRY)}"
                        f"{did_you_mean(str(name), list(_REGISTRY))}")
    return _REGISTRY[name]


def for_execution(execution: Mapping[str, Any]) -> Executor:
    """The executor of an `execution` section (local when it names none)."""
    return get(execution.get("type") or "local")


def profile_executor(profile: str) -> str | None:
    """The executor a Snakemake profile goes with, by its name: `slurm`, `slurm-local` -> slurm."""
    name = Path(profile).name.split("-")[0]
    return name if name in _REGISTRY else None


def for_profile(profile: str) -> Executor:
    """The executor of a Snakemake profile (local when its name names none)."""
    return _REGISTRY[profile_executor(profile) or "local"]


def remote_names() -> tuple[str, ...]:
    """The executors a head job can be submitted to (env.toml's `executor` of a -r/-b profile)."""
    return tuple(n for n, e in _REGISTRY.items() if e.remote)


def schema_rules() -> list[tuple[str, Rule]]:
    """The config keys whose valid values are this registry's names (for `config.schema.check`, through the Plan)."""
    return [
        ("run.env.executor", one_of(*_REGISTRY, null=True)),
        ("execution.type", one_of(*_REGISTRY)),
        ("execution.container_runner", one_of(*RUNNERS)),
    ]
