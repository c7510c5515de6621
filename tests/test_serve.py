"""The deployment step (service) and its consumers' wait: ready, failed at start-up, killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from nemotron_eval.deploy.process import EndpointNotReady
from nemotron_eval.deploy.process import alive as process_running
from nemotron_eval.deploy.serve import wait_for_service

from conftest import BIN, converted_smollm2


@pytest.fixture
def eval_yaml(planner, tmp_path: Path):
    """eval.yaml of the local config (the CPU server) as the compile chain writes it, for a given checkpoint."""

    def write(checkpoint: Path, **deployment) -> Path:
        overrides = [f"deployment.checkpoint_path={checkpoint}", "deployment.served_model_name=m",
                     "deployment.readiness_timeout_s=120", *[f"deployment.{k}={v}" for k, v in deployment.items()]]
        path = tmp_path / "eval.yaml"
        path.write_text(planner("local", overrides).model("m_latest").eval_text)
        return path

    return write


def start(tmp_path: Path, eval_file: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    endpoint, log = tmp_path / "run" / "endpoint.json", tmp_path / "serve.log"
    proc = subprocess.Popen([str(BIN / "nemotron-step"), "serve", "--eval", str(eval_file), "--model", "m_latest",
                             "--endpoint-file", str(endpoint), "--log", str(log)], stderr=subprocess.PIPE)
    return proc, endpoint, log


def test_a_deployment_that_dies_at_start_up_fails_its_consumers_in_seconds(tmp_path: Path, eval_yaml) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")  # no tokenizer, no weights
    proc, endpoint, _ = start(tmp_path, eval_yaml(broken))
    started = time.monotonic()
    with pytest.raises(EndpointNotReady, match="no tokenizer"):
        wait_for_service(endpoint, timeout_s=120)
    assert time.monotonic() - started < 20
    proc.send_signal(signal.SIGTERM)  # as Snakemake stops the service once its consumers failed
    assert proc.wait(timeout=30) == 1
    assert json.loads(endpoint.read_text())["state"] == "failed"


def test_port_in_use_is_named(tmp_path: Path, eval_yaml) -> None:
    import socket

    looks_complete = tmp_path / "ck"
    looks_complete.mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (looks_complete / name).write_text("{}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc, endpoint, _ = start(tmp_path, eval_yaml(looks_complete, port=port))
        with pytest.raises(EndpointNotReady, match=f"port {port} on 127.0.0.1 is already in use"):
            wait_for_service(endpoint, timeout_s=60)
        proc.send_signal(signal.SIGTERM)  # as Snakemake stops the service once its consumers failed
        assert proc.wait(timeout=30) == 1


@pytest.mark.slow
def test_serves_until_terminated_and_takes_the_server_down(request: pytest.FixtureRequest, tmp_path: Path, eval_yaml) -> None:
    checkpoint, _ = converted_smollm2(request)
    proc, endpoint, log = start(tmp_path, eval_yaml(checkpoint))
    published = json.loads(endpoint.read_text()) if endpoint.exists() else None
    info = wait_for_service(endpoint, timeout_s=120)
    assert info["state"] == "ready" and info["deployment_id"].startswith("m_latest-") and info["model_id"] == "m"
    assert published is None or published["state"] in ("starting", "ready")
    server_pid = info["pid"]
    assert process_running(server_pid)
    proc.send_signal(signal.SIGKILL)  # even a killed deployment step leaves no server behind
    proc.wait()
    deadline = time.monotonic() + 20
    while process_running(server_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not process_running(server_pid)


def test_the_cpu_server_is_published_as_listening_while_it_loads(tmp_path: Path, eval_yaml) -> None:
    """The CPU server's port takes requests before its model is loaded: the serve step publishes it as `listening`
    (with its URLs, the server's pid) before `ready`. A consumer that may send early gets it then, and its request
    is answered once the model is loaded; others still wait for `ready`."""
    import httpx

    from support.tiny_model import write_tiny_checkpoint

    proc, endpoint, _ = start(tmp_path, eval_yaml(write_tiny_checkpoint(tmp_path / "tiny")))
    try:
        states: list[str] = []
        deadline = time.monotonic() + 120
        while "listening" not in states and time.monotonic() < deadline:
            if endpoint.exists():
                state = json.loads(endpoint.read_text())["state"]
                if not states or states[-1] != state:
                    states.append(state)
            time.sleep(0.02)
        early = wait_for_service(endpoint, timeout_s=60, listening=True)
        assert states[-1] == "listening" and "ready" not in states, states
        assert early["state"] == "listening" and process_running(early["pid"]) and early["pid"] != proc.pid
        with httpx.Client(timeout=120, trust_env=False) as client:
            answer = client.post(early["completions_url"], json={"model": "m", "prompt": "Hi", "max_tokens": 1})
        assert answer.status_code == 200
        ready = wait_for_service(endpoint, timeout_s=60)
        assert ready["state"] == "ready" and ready["url"] == early["url"] and ready["pid"] == early["pid"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_a_listening_deployment_whose_server_died_is_gone(tmp_path: Path) -> None:
    from nemotron_eval.deploy.serve import deployment_gone

    dead = subprocess.Popen(["true"])
    dead.wait()
    log = tmp_path / "serve.log"
    log.write_text("loading the model\nKilled\n")
    endpoint = tmp_path / "endpoint.json"
    endpoint.write_text(json.dumps({"state": "listening", "pid": dead.pid, "log": str(log)}))
    reason = deployment_gone(endpoint)
    assert reason is not None and f"pid {dead.pid}" in reason and "Killed" in reason
    endpoint.write_text(json.dumps({"state": "listening", "pid": os.getpid(), "log": str(log)}))
    assert deployment_gone(endpoint) is None
