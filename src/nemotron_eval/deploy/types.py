"""Deployment types: one class each (`local`, `generic`, `vllm`, `none`), the one place that knows its kind.

`TYPES` is the registry: `deployment.type` in a config names one of its keys, whose value is the class
("module:Class", imported when first asked for; `get(kind)` gives its one instance). The interface is
`Deployment`'s (its docstring). Adding a type: its class (a module of its own, deploy/<name>.py), one line in
`TYPES`, its config group file configs/deployment/<name>.yaml, its tests.

The process work is done by
`deploy.process` (one start, one liveness check, one stop, one wait loop); the container runners by
`deploy.runners`. Commands come from eval.yaml: `deployment.command` is a template in the config
(`configs/deployment/*.yaml`, as NeMo Evaluator Launcher's are), resolved when eval.yaml is compiled; eval.yaml's
`deployment.image` is already the image the runner starts (the absolute squashed `.sqsh` for pyxis and enroot).

Environment variables follow the launcher: top-level `env_vars` and `deployment.env_vars` (the latter wins), each
value `lit:VALUE`, `host:NAME` (copied from the serve step's environment) or `runtime:NAME` (set by the job's
environment). No secret value is ever part of a plan: secrets are names.
"""

from __future__ import annotations

import functools
import importlib
import os
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from nemotron_eval import executors
from nemotron_eval.core import layout
from nemotron_eval.deploy import process as proc
from nemotron_eval.config.validators import Rule, integer, text
from nemotron_eval.executors.runners import check_runner, container_runner_wrap, runner_of, unescape_dollars
from nemotron_eval.core.errors import UserError, did_you_mean

if TYPE_CHECKING:
    from nemotron_eval.data.tasks import Task

CHECKPOINT_MOUNT = "/checkpoint"
HOST = "{host}"  # placeholder in a plan's URLs for the node the serve step resolves at run time
PASS_THROUGH = ("HF_TOKEN",)  # host variables handed to a deployment by name whenever they are set


@dataclass(frozen=True)
class Runtime:
    """What only the serve step knows: where the deployment may write, its id, the environment it starts in."""

    run_dir: Path  # run/{model}/
    deployment_id: str
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    @property
    def server_endpoint_file(self) -> Path:
        return self.run_dir / ".endpoint.server.json"

    @property
    def server_listening_file(self) -> Path:
        return self.run_dir / ".listening.server.json"

    @property
    def stats_file(self) -> Path:
        return self.run_dir / Path(layout.STATS).name


@dataclass(frozen=True)
class DeploymentPlan:
    """How one deployment is started and reached.

    `argv` is empty for `none`. `base_url` may hold "{host}": the first node of the Slurm allocation, resolved by
    the serve step. The process gets `env` (plain values) and `env_from_host` (name -> host variable, copied at
    start-up); `env_names` are all the names the container runner passes through.
    """

    type: str
    argv: list[str]
    model_id: str
    base_url: str
    health_path: str
    completions_path: str
    readiness_timeout_s: float
    host: str | None = None
    port: int | None = None
    runner: str = "none"
    image: str | None = None  # what the runner starts
    env: dict[str, str] = field(default_factory=dict)
    env_from_host: dict[str, str] = field(default_factory=dict)
    env_names: list[str] = field(default_factory=list)
    api_key_name: str | None = None
    executor: str = "local"  # whose node "{host}" is (the deployment host it names for the serve step)

    def urls(self, host: str | None = None) -> dict[str, str]:
        """url, completions_url and health_url, with "{host}" replaced by `host` (default: the plan's)."""
        base = self.base_url
        if HOST in base:
            node = host or self.host
            if not node:
                raise ValueError(f"{base} needs the host the deployment runs on")
            base = base.replace(HOST, node)
        return {"url": base, "completions_url": base + self.completions_path, "health_url": base + self.health_path}

    def process_env(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The deployment process's environment: `environ`, the plain values, the host variables it names."""
        copied = {name: environ[ref] for name, ref in self.env_from_host.items() if ref in environ}
        return {**environ, **self.env, **copied}


def _required(dep: Mapping[str, Any], key: str) -> str:
    value = dep.get(key)
    if value in (None, "", "???"):
        raise UserError(f"deployment.{key} is required for deployment.type={dep.get('type')}")
    return str(value)


def parse_env_vars(raw: Mapping[str, Any], where: str) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """Launcher-style env vars as (plain values, name -> host variable, names set at runtime)."""
    from nemotron_eval.core.launcher import module

    env_vars = module("nemo_evaluator_launcher.common.env_vars")
    EnvVarFromHost, EnvVarLiteral, parse_env_var_value = env_vars.EnvVarFromHost, env_vars.EnvVarLiteral, env_vars.parse_env_var_value

    plain: dict[str, str] = {}
    from_host: dict[str, str] = {}
    runtime: list[str] = []
    for name, value in raw.items():
        try:
            parsed = parse_env_var_value(str(value))
        except ValueError as e:
            raise UserError(f"{where}.{name}: {str(e).splitlines()[0]}") from None
        if isinstance(parsed, EnvVarLiteral):
            plain[str(name)] = parsed.value
        elif isinstance(parsed, EnvVarFromHost):
            from_host[str(name)] = parsed.host_var_name
        else:
            runtime.append(str(name))
    return plain, from_host, runtime


def environment(eval_cfg: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """Top-level `env_vars` and `deployment.env_vars` (which wins) as (plain values, name -> host variable, every
    name the container runner passes through)."""
    raw = {**(eval_cfg.get("env_vars") or {}), **((eval_cfg.get("deployment") or {}).get("env_vars") or {})}
    plain, from_host, runtime = parse_env_vars(raw, "deployment.env_vars")
    passed = [name for name in PASS_THROUGH if name in environ]
    return plain, from_host, sorted({*plain, *from_host, *runtime, *passed})


class Deployment:
    """A deployment type. Subclasses say what they check and how to plan; starting, waiting and stopping are shared.

    At plan time (the Plan, before anything is written or submitted; nothing here starts anything):
        rules                      (key pattern, rule) pairs for its own keys, applied by config.schema.check
        keys                       the closed key set of `deployment` (None: open, NeMo Evaluator Launcher's)
        not_scoring                `deployment` keys that change how the model is served, never a score
        runs_image                 whether deployment.image is started (and squashed for pyxis/enroot)
        health_checked             whether the evaluation steps wait for its health URL once it is ready
        check(cfg)                 what would fail only once the deployment starts, as one UserError line; cfg:
                                   the config before any model (`${art:...}` values pending), then each eval.yaml
        check_task(task, ckpt)     what one evaluated task needs of it and of the checkpoint it serves
    In the serve step:
        plan(eval_cfg, runtime)    what runs, where it answers, which environment it gets (calls check first)
        start(plan, log_file)      the process (None when nothing runs: `none`)
        wait_ready(plan, process)  the endpoint once it answers (None when stopped first); a type whose server
                                   takes requests while it loads (they wait until it is ready) calls
                                   `on_listening` with the endpoint as soon as the port listens
        stop(process)              the process and everything it started
    In the evaluation steps: readiness_timeout(dep), tasks_at_once(cores), harnesses_starting_at_once(cores).
    """

    runs_image: ClassVar[bool] = False
    health_checked: ClassVar[bool] = True  # whether its consumers wait for its health URL (not an existing endpoint's)
    readiness_default_s: ClassVar[float] = 3600  # deployment.readiness_timeout_s when the config says none
    rules: ClassVar[tuple[tuple[str, Rule], ...]] = (
        ("deployment.port", integer(1, 65535)),
        ("deployment.command", text(None, "a command line", null=False)),
    )
    keys: ClassVar[tuple[str, ...] | None] = None
    not_scoring: ClassVar[tuple[str, ...]] = (
        "host", "port", "readiness_timeout_s", "health_check_path", "endpoints", "served_model_name",
    )

    def __init__(self, name: str) -> None:
        self.name = name  # its key in TYPES

    @property
    def closed(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """The sections it closes, as config.schema.check takes them."""
        return {"deployment": (f"the {self.name} deployment", self.keys)} if self.keys else {}

    def check(self, cfg: Mapping[str, Any]) -> None:
        """Raise a UserError (one line: the key, the value, what is valid) for what cannot run."""

    def check_task(self, task: Task, checkpoint: Path | None) -> None:
        """Raise a UserError when it cannot serve `task`, or the checkpoint it serves (None: an embedded one,
        made by the pipeline); called for each evaluation the plan is asked for."""

    def readiness_timeout(self, dep: Mapping[str, Any]) -> float:
        return float(dep.get("readiness_timeout_s") or self.readiness_default_s)

    def tasks_at_once(self, cores: int) -> int | None:
        """How many of a model's tasks run their harness together when `run.tasks_at_once` is not set (None: all
        of them). A deployment on its own GPUs leaves the job's cores to the harnesses: all at once."""
        return None

    def harnesses_starting_at_once(self, cores: int) -> int | None:
        """How many harnesses start together (each until the deployment first answers it; None: no limit)."""
        return None

    def plan(self, eval_cfg: Mapping[str, Any], runtime: Runtime) -> DeploymentPlan:
        raise NotImplementedError

    def start(self, plan: DeploymentPlan, log_file: Path, runtime: Runtime) -> subprocess.Popen[bytes] | None:
        return proc.start(plan.argv, log_file=log_file, env=plan.process_env(runtime.environ))

    def wait_ready(
        self, plan: DeploymentPlan, process: subprocess.Popen[bytes] | None, log_file: Path, runtime: Runtime,
        stop: threading.Event, on_listening: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any] | None:
        """The endpoint (url, completions_url, health_url, model_id, ...) once its health URL answers 200."""
        urls = plan.urls(plan.host or executors.get(plan.executor).deployment_host(runtime.environ))
        ready = proc.wait_until(
            lambda: True if is_healthy(urls["health_url"]) else None, exited=process.poll if process else None,
            timeout_s=plan.readiness_timeout_s, log_file=log_file, what=f"the {plan.type} deployment ({plan.runner})",
            stop=stop, timeout_key="deployment.readiness_timeout_s",
        )
        if ready is None:
            return None
        return {**urls, "port": plan.port, "model_id": plan.model_id, "api_key_name": plan.api_key_name,
                "pid": process.pid if process else None}

    def stop(self, process: subprocess.Popen[bytes] | None) -> None:
        if process is not None:
            proc.stop(process)


class Generic(Deployment):
    """A command in the deployment's image (`deployment.command`, the checkpoint mounted at /checkpoint), run by
    the container runner, through srun on Slurm when it spans nodes or instances."""

    runs_image = True

    def check(self, cfg: Mapping[str, Any]) -> None:
        """The runner this executor can start, the image it needs (a squashed file for enroot, unless the squash
        job makes one), one instance, the checkpoint to mount, the command, its tasks spread over the nodes."""
        from nemotron_eval.deploy.images import enroot_problem, needs_squash

        dep = cfg.get("deployment") or {}
        execution = cfg.get("execution") or {}
        _required(dep, "command")
        runner = check_runner(runner_of(execution))
        executors.for_execution(execution).check_runner(runner, execution.get("type"))
        image = None if runner == "none" else _required(dep, "image")
        # before compiling, a registry image the squash job will make a file of is fine; eval.yaml names the file
        # (and its `source_image`) or the image as the user gave it
        squashed_later = needs_squash(cfg, runs_image=True) and "source_image" not in dep
        problem = enroot_problem(runner, image, "deployment.image", squashed_later=squashed_later)
        if problem:
            raise UserError(problem)
        if runner != "none":
            _required(dep, "checkpoint_path")
        one_instance(execution)
        _tasks_per_node(execution, _positive(execution, "num_nodes"))

    def command(self, dep: Mapping[str, Any], execution: Mapping[str, Any]) -> str:
        return unescape_dollars(_required(dep, "command"))

    def plan(self, eval_cfg: Mapping[str, Any], runtime: Runtime) -> DeploymentPlan:
        dep = eval_cfg.get("deployment") or {}
        execution = eval_cfg.get("execution") or {}
        self.check(eval_cfg)
        runner = runner_of(execution)
        executor = executors.for_execution(execution)
        image = None if runner == "none" else _required(dep, "image")
        nodes = _positive(execution, "num_nodes")
        plain, from_host, names = environment(eval_cfg, runtime.environ)
        image = runner_image(runner, image)
        argv = container_runner_wrap(
            runner, image, self.command(dep, execution),
            mounts(dep, execution) if runner != "none" else {}, names,
            nodes=nodes, ntasks_per_node=_tasks_per_node(execution, nodes), gpus=_gpus(execution),
            mount_home=bool((execution.get("mounts") or {}).get("mount_home", False)),
            srun=executor.srun(execution),
        )
        endpoints = dep.get("endpoints") or {}
        port = int(dep.get("port") or 8000)
        return DeploymentPlan(
            type=self.name, argv=argv, model_id=str(dep.get("served_model_name") or "model"),
            base_url=f"http://{HOST}:{port}",
            health_path=str(dep.get("health_check_path") or endpoints.get("health") or "/health"),
            completions_path=str(endpoints.get("completions") or "/v1/completions").rstrip("/") or "/v1/completions",
            readiness_timeout_s=self.readiness_timeout(dep),
            host=executor.deployment_host(None), executor=executor.name, port=port, runner=runner, image=image,
            env=plain, env_from_host=from_host, env_names=names,
        )


    def start(self, plan: DeploymentPlan, log_file: Path, runtime: Runtime) -> subprocess.Popen[bytes] | None:
        if plan.image and plan.image.endswith(".sqsh") and not Path(plan.image).is_file():
            raise UserError(f"deployment.image={plan.image}: the squashed image is missing (the squash_image rule makes it)")
        return super().start(plan, log_file, runtime)


class Vllm(Generic):
    """vLLM's OpenAI server in its image: `deployment.command` is the template of configs/deployment/vllm.yaml."""

    def check(self, cfg: Mapping[str, Any]) -> None:
        super().check(cfg)
        nodes = _positive(cfg.get("execution") or {}, "num_nodes")
        if nodes > 1:
            raise UserError(
                f"deployment.type=vllm runs on one node; execution.num_nodes={nodes} needs a generic deployment "
                "whose command starts the multi-node server (e.g. with Ray)"
            )


TYPES: dict[str, str] = {
    "local": "nemotron_eval.deploy.local:Local",
    "generic": "nemotron_eval.deploy.types:Generic",
    "vllm": "nemotron_eval.deploy.types:Vllm",
    "none": "nemotron_eval.deploy.endpoint:Existing",
    "stub": "nemotron_eval.deploy.stub:Stub",
}


@functools.cache
def get(kind: Any) -> Deployment:
    """The deployment type `kind` (its one instance); one UserError line naming the valid ones otherwise."""
    if kind not in TYPES:
        raise UserError(f"deployment.type={kind!r}: unknown; valid: {', '.join(TYPES)}{did_you_mean(str(kind), TYPES)}")
    module, _, cls = TYPES[kind].partition(":")
    deployment: Deployment = getattr(importlib.import_module(module), cls)(kind)
    return deployment


# --- shared helpers ------------------------------------------------------------------------------------------


def _positive(execution: Mapping[str, Any], key: str) -> int:
    value = execution.get(key, 1)
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"execution.{key}={value!r}: must be a whole number of at least 1")
    return value


def one_instance(execution: Mapping[str, Any]) -> None:
    """execution.num_instances above 1 is refused: one deployment per model."""
    if _positive(execution, "num_instances") > 1:
        raise UserError(
            f"execution.num_instances={execution['num_instances']}: this pipeline starts one deployment per model "
            "(NeMo Evaluator Launcher's several instances behind a proxy are not supported); valid: 1"
        )


def _tasks_per_node(execution: Mapping[str, Any], nodes: int) -> int:
    """execution.deployment.n_tasks spread over the nodes (NVIDIA's default: one per node), else ntasks_per_node."""
    n_tasks = (execution.get("deployment") or {}).get("n_tasks")
    if n_tasks is None:
        return max(1, int(execution.get("ntasks_per_node") or 1))
    if int(n_tasks) < nodes or int(n_tasks) % nodes:
        raise UserError(f"execution.deployment.n_tasks={n_tasks}: must be a multiple of execution.num_nodes={nodes}")
    return int(n_tasks) // nodes


def _gpus(execution: Mapping[str, Any]) -> int | None:
    """The GPUs per node from execution.gres ("gpu:8", "gpu:h100:8"); None when not said."""
    from nemotron_eval.config.validators import gpus_per_node

    return gpus_per_node(execution["gres"]) if execution.get("gres") else None


def mounts(dep: Mapping[str, Any], execution: Mapping[str, Any]) -> dict[str, str]:
    """The checkpoint at /checkpoint, then execution.mounts.deployment (host path: container path)."""
    found = {str(_required(dep, "checkpoint_path")): CHECKPOINT_MOUNT}
    for src, dst in ((execution.get("mounts") or {}).get("deployment") or {}).items():
        found[str(src)] = str(dst)
    return found


def runner_image(runner: str, image: str | None) -> str | None:
    """An image as the runner names it (deployment.image, a harness's container): a file as is; a registry
    reference as docker:// for apptainer, as enroot's `registry#repository:tag` for pyxis (which imports it)."""
    from nemotron_eval.deploy.images import enroot_uri, is_image_file

    if runner == "none" or image is None:
        return None
    if is_image_file(image):
        return image
    if runner == "apptainer":
        return f"docker://{image}"
    return enroot_uri(image).removeprefix("docker://")


def read_endpoint(endpoint_file: Path | str) -> dict[str, Any] | None:
    import json

    try:
        info = json.loads(Path(endpoint_file).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return info if isinstance(info, dict) and "url" in info else None


def _opener() -> Any:
    import urllib.request

    return urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never send localhost through a proxy


def is_healthy(health_url: str, timeout_s: float = 2.0) -> bool:
    try:
        with _opener().open(health_url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):  # URLError is an OSError
        return False


def get_json(url: str, timeout_s: float = 10.0) -> Any:
    """GET `url` and parse its JSON (OSError when it does not answer, ValueError when it is not JSON)."""
    import json

    with _opener().open(url, timeout=timeout_s) as response:
        return json.loads(response.read())
