"""The `local` deployment type: this project's CPU server (`python -m nemotron_eval.deploy.server`) on the host
the serve step runs on, in this project's environment; its `deployment` section is ours entirely (closed)."""

from __future__ import annotations

import shlex
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nemotron_eval.config.validators import integer, one_of, text
from nemotron_eval.deploy import process as proc
from nemotron_eval.deploy.types import (
    Deployment, DeploymentPlan, Runtime, _positive, _required, environment, is_healthy, one_instance, read_endpoint,
)  # fmt: skip
from nemotron_eval.core.errors import UserError
from nemotron_eval.executors.runners import runner_of
from nemotron_eval.artifacts.model import DTYPES

if TYPE_CHECKING:
    from nemotron_eval.data.tasks import Task

# The CPU server's harnesses per core (pipeline/slots.py): running at once (Local.tasks_at_once; each holds ~0.9 GB;
# measured in the default run: ~60 s of CPU for five tasks' harnesses against ~320 s for the server) and starting
# at once (a starting harness imports lm-eval and indexes and formats its task: ~10-15 s of a core)
TASKS_PER_CORE = 1.0
STARTING_PER_CORE = 0.5


class Local(Deployment):
    """The project's CPU server on this host; `deployment.command` is its command line, to which the serve step
    adds where to write its address and statistics. One process on one host: one node, one instance, no
    container runner; it serves /v1/completions only, from a checkpoint with a config, a tokenizer and weights."""

    readiness_default_s = 300
    rules = (
        ("deployment.port", integer(0, 65535)),  # 0: the server picks a free port
        ("deployment.dtype", one_of(*DTYPES)),
        ("deployment.prefix_cache_mb", integer(0)),
        ("deployment.command", text(None, "a command line", null=False)),
    )
    keys = (
        "type", "image", "checkpoint_path", "served_model_name", "host", "port", "dtype", "max_batch_size",
        "prefix_cache_mb", "readiness_timeout_s", "health_check_path", "endpoints", "command", "env_vars",
    )
    not_scoring = (*Deployment.not_scoring, "prefix_cache_mb")

    def check(self, cfg: Mapping[str, Any]) -> None:
        dep, execution = cfg.get("deployment") or {}, cfg.get("execution") or {}
        _required(dep, "command")
        one_instance(execution)
        nodes = _positive(execution, "num_nodes")
        if nodes > 1:
            raise UserError(f"execution.num_nodes={nodes}: the local deployment is one CPU server on one node; valid: 1 "
                            "(a generic deployment spans nodes)")
        runner = runner_of(execution)
        if runner != "none":
            raise UserError(f"execution.container_runner={runner}: the local deployment runs this project's CPU server "
                            "on the host, in its own environment; valid: none (a vllm or generic deployment runs an image)")

    def check_task(self, task: Task, checkpoint: Path | None) -> None:
        if task.endpoint_type != "completions":
            raise UserError(
                f"task {task.short!r} needs a {task.endpoint_type} endpoint; the local CPU deployment serves "
                "/v1/completions only (use a vllm or generic deployment, or an existing endpoint)"
            )
        if checkpoint is not None:
            from nemotron_eval.artifacts.model import check_checkpoint

            check_checkpoint(checkpoint)

    def tasks_at_once(self, cores: int) -> int | None:
        """The server shares the cores with the harnesses: TASKS_PER_CORE tasks per core; enough that a task
        that starts finds the server busy with the others."""
        return max(1, int(cores * TASKS_PER_CORE))

    def harnesses_starting_at_once(self, cores: int) -> int | None:
        """A starting harness takes a core from the server: STARTING_PER_CORE per core (one on two cores), so
        the server computes for the running harnesses while the next one starts."""
        return max(1, int(cores * STARTING_PER_CORE))

    def plan(self, eval_cfg: Mapping[str, Any], runtime: Runtime) -> DeploymentPlan:
        self.check(eval_cfg)
        dep = eval_cfg.get("deployment") or {}
        argv = shlex.split(_required(dep, "command"))
        if argv and argv[0] == "python":
            argv[0] = sys.executable  # the server runs with this environment's interpreter
        argv += ["--endpoint-file", str(runtime.server_endpoint_file), "--deployment-id", runtime.deployment_id,
                 "--stats-file", str(runtime.stats_file), "--listening-file", str(runtime.server_listening_file)]
        plain, from_host, names = environment(eval_cfg, runtime.environ)
        host, port = str(dep.get("host") or "127.0.0.1"), int(dep.get("port") or 0)
        return DeploymentPlan(
            type=self.name, argv=argv, model_id=str(dep.get("served_model_name") or "model"),
            base_url=f"http://{host}:{port}",  # port 0: the server picks one and writes it to its endpoint file
            health_path="/health", completions_path="/v1/completions",
            readiness_timeout_s=self.readiness_timeout(dep), host=host, port=port,
            env=plain, env_from_host=from_host, env_names=names,
        )

    def wait_ready(
        self, plan: DeploymentPlan, process: subprocess.Popen[bytes] | None, log_file: Path, runtime: Runtime,
        stop: threading.Event, on_listening: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any] | None:
        """The server's endpoint once it answers; `on_listening` gets it as soon as the port listens, before the
        model is loaded (the server writes its listening file first): requests sent from then on wait in the
        port's queue until it serves, so the harnesses start while it loads."""
        assert process is not None
        endpoint_file, listening_file = runtime.server_endpoint_file, runtime.server_listening_file
        told: list[bool] = []

        def ready() -> dict[str, Any] | None:
            info = read_endpoint(endpoint_file)
            if info is not None and info.get("pid") == process.pid and is_healthy(info["health_url"]):
                return info
            if on_listening is not None and not told:
                early = read_endpoint(listening_file)
                if early is not None and early.get("pid") == process.pid:
                    told.append(True)
                    on_listening(early)
            return None

        return proc.wait_until(ready, exited=process.poll, timeout_s=plan.readiness_timeout_s, log_file=log_file,
                               what="the model server", stop=stop, poll_s=0.2, timeout_key="deployment.readiness_timeout_s")
