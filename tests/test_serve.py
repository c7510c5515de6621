"""The deployment step (service) and its consumers' wait: ready, failed at start-up, killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nemotron_eval.deploy.process import EndpointNotReady
from nemotron_eval.deploy.process import alive as process_running
from nemotron_eval.deploy.serve import wait_for_service

from conftest import BIN, converted_smollm2, wait_for


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


@pytest.mark.parametrize("starter_lives", [False, True], ids=["starter_dead", "starter_alive"])
def test_a_deployment_step_runs_only_while_its_starter_lives(tmp_path: Path, eval_yaml, starter_lives: bool) -> None:
    """Snakemake killed while a step's interpreter starts leaves the step a child of init before it could watch
    its parent: it would serve forever. The step knows its starter from NEMOTRON_SPAWNER (rules/common.smk sets
    it): a real process stands for Snakemake here, one that is not the step's parent (as when a shell stands
    between them). Dead, the step ends at once (143, as if stopped) and writes nothing; alive, the step runs."""
    from nemotron_eval.pipeline.steps import SPAWNER_ENV, spawner_entry

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    starter = subprocess.Popen(["sleep", "60"])
    entry = spawner_entry(starter.pid)
    if not starter_lives:
        starter.kill()
        starter.wait()
    endpoint, log = tmp_path / "run" / "endpoint.json", tmp_path / "serve.log"
    proc = subprocess.Popen([str(BIN / "nemotron-step"), "serve", "--eval", str(eval_yaml(broken)), "--model",
                             "m_latest", "--endpoint-file", str(endpoint), "--log", str(log)],
                            env={**os.environ, SPAWNER_ENV: entry}, stderr=subprocess.PIPE, text=True)
    try:
        if starter_lives:  # it serves: the broken checkpoint fails as a started deployment does
            with pytest.raises(EndpointNotReady, match="no tokenizer"):
                wait_for_service(endpoint, timeout_s=120)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 1
        else:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 128 + signal.SIGTERM, err
            assert f"the process that started this step (PID {starter.pid}) has ended" in err
            assert not endpoint.exists() and not log.exists()
    finally:
        for p in (proc, starter):
            p.kill()
            p.wait()


DIES_EARLY = """
import os, subprocess, sys, threading, time
from nemotron_eval.deploy.process import dies_with_this_process

ask = dies_with_this_process()

def before_exec():
    open(sys.argv[1], "w").write(str(os.getpid()))
    time.sleep(1.0)  # this process is gone meanwhile: the child belongs to init before it asks
    ask()

threading.Timer(0.3, os._exit, (0,)).start()
subprocess.Popen(["sleep", "60"], preexec_fn=before_exec)
"""


def test_a_child_whose_starter_died_before_it_asked_to_die_with_it_ends_at_once(tmp_path: Path) -> None:
    """dies_with_this_process, the preexec of every deployment and harness: the kernel's SIGTERM on the parent's death
    is asked for after the fork, and a parent that died in between sends nothing. A real process starts `sleep 60`
    and exits while its child is between the fork and the exec: the child ends instead of sleeping on."""
    pid_file = tmp_path / "child.pid"
    subprocess.run([sys.executable, "-c", DIES_EARLY, str(pid_file)], timeout=30, check=True)
    child = int(wait_for(lambda: pid_file.is_file() and pid_file.read_text(), 10))
    try:
        wait_for(lambda: not process_running(child), 10)
    finally:
        if process_running(child):
            os.kill(child, signal.SIGKILL)
