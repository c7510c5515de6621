"""The `none` deployment type: no deployment, an endpoint that already runs (NeMo Evaluator Launcher's `none`)."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nemotron_eval.config.validators import integer
from nemotron_eval.deploy.types import Deployment, DeploymentPlan, Runtime
from nemotron_eval.core.errors import UserError


class Existing(Deployment):
    """An endpoint that already runs (`target.api_endpoint.url`, the completions URL itself); its key is read from
    the environment variable `target.api_endpoint.api_key_name` names. Its served model name picks the model, so
    it counts for the scores."""

    readiness_default_s = 0
    health_checked = False  # an existing endpoint need not serve /health
    rules = (("deployment.port", integer(1, 65535)),)
    not_scoring = tuple(k for k in Deployment.not_scoring if k != "served_model_name")

    def check(self, cfg: Mapping[str, Any]) -> None:
        api = (cfg.get("target") or {}).get("api_endpoint") or {}
        if not api.get("url") or api.get("url") == "???":
            raise UserError("deployment.type=none needs target.api_endpoint.url (e.g. https://host/v1/completions)")
        if not api.get("model_id") or api.get("model_id") == "???":
            raise UserError("deployment.type=none needs target.api_endpoint.model_id (the served model's name)")

    def plan(self, eval_cfg: Mapping[str, Any], runtime: Runtime) -> DeploymentPlan:
        self.check(eval_cfg)
        api = (eval_cfg.get("target") or {}).get("api_endpoint") or {}
        url = str(api["url"]).rstrip("/")
        # the URL is the completions endpoint itself (as the launcher takes it); its server's root serves /health
        base = url.removesuffix("/completions").removesuffix("/v1")
        return DeploymentPlan(
            type=self.name, argv=[], model_id=str(api["model_id"]), base_url=base, health_path="/health",
            completions_path=url[len(base):], readiness_timeout_s=0, api_key_name=api.get("api_key_name") or None,
        )

    def start(self, plan: DeploymentPlan, log_file: Path, runtime: Runtime) -> subprocess.Popen[bytes] | None:
        return None

    def wait_ready(
        self, plan: DeploymentPlan, process: subprocess.Popen[bytes] | None, log_file: Path, runtime: Runtime,
        stop: threading.Event, on_listening: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any] | None:
        return {**plan.urls(), "model_id": plan.model_id, "api_key_name": plan.api_key_name, "pid": None}
