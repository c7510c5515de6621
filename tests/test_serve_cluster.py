"""The serve step with a `generic` deployment run by container runner `none`: the command is a tiny local HTTP
server standing in for NVIDIA's Ray deployment (no GPU or container here). Ready, failed at start-up, never ready,
died while serving, stopped by SIGTERM (its whole process group with it). eval.yaml comes from the compile chain."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from nemotron_eval.deploy.process import EndpointNotReady, group_alive
from nemotron_eval.deploy.process import alive as process_running
from nemotron_eval.deploy.serve import wait_for_service
from nemotron_eval.executors.slurm import first_node

from conftest import BIN, slurm_problem, wait_for

SERVER = '''
import http.server, os, sys, threading
port, pid_file = int(sys.argv[1]), sys.argv[2]
open(pid_file, "w").write(str(os.getpid()))
print("loading the model", flush=True)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/quit":
            print("asked to quit", flush=True)
            os._exit(7)
        ok = self.path == "/v1/health"
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(b"ok" if ok else b"no")

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CONFIG = """
defaults:
  - execution: {execution}
  - deployment: generic
  - _self_
run:
  model: rl:latest
  env: {{host: null, user: null, account: null, partition: debug, time: "00:10:00", remote_job_dir: /tmp, mounts: []}}
execution:
  container_runner: none
deployment:
  image: nvcr.io/nvidia/nemo:25.11.nemotron_3_nano
  served_model_name: nemo-model
  env_vars:
    DEPLOY_MARKER: lit:from-config
evaluation:
  tasks: [{{name: hellaswag}}]
"""


@pytest.fixture
def eval_yaml(planner, tmp_path: Path):
    """eval.yaml as the compile chain writes it for a generic deployment: `eval_yaml(command, port=..)` -> path."""

    def write(command: str, *, port: int, timeout_s: float = 30, execution: str = "local", overrides: tuple[str, ...] = ()) -> Path:
        (tmp_path / "generic.yaml").write_text(CONFIG.format(execution=execution))
        plan = planner(str(tmp_path / "generic.yaml"), [f"deployment.port={port}", f"deployment.readiness_timeout_s={timeout_s}",
                                                        f"deployment.command={command}", *overrides])
        path = tmp_path / "eval.yaml"
        path.write_text(plan.model("demo_latest").eval_text)
        return path

    return write


def server_command(tmp_path: Path, port: int) -> str:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    # `$$` as in NVIDIA's configs: the shell sees `$DEPLOY_MARKER`, set from deployment.env_vars
    return f"echo marker=$$DEPLOY_MARKER; exec {sys.executable} {script} {port} {tmp_path / 'server.pid'}"


def start(tmp_path: Path, eval_file: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    endpoint, log = tmp_path / "run" / "endpoint.json", tmp_path / "logs" / "serve.log"
    proc = subprocess.Popen(
        [str(BIN / "nemotron-step"), "serve", "--eval", str(eval_file), "--model", "rl_latest",
         "--endpoint-file", str(endpoint), "--log", str(log)],
        stderr=subprocess.PIPE,
    )
    return proc, endpoint, log


@pytest.fixture
def stop_later() -> Any:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs.append
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_reaches_ready_serves_and_stops_with_its_process_group(tmp_path: Path, stop_later: Any, eval_yaml: Any) -> None:
    port = free_port()
    proc, endpoint, log = start(tmp_path, eval_yaml(server_command(tmp_path, port), port=port))
    stop_later(proc)
    wait_for(endpoint.exists, 10, poll_s=0.1)
    assert json.loads(endpoint.read_text())["state"] in ("starting", "ready")
    info = wait_for_service(endpoint, timeout_s=30)
    assert info["state"] == "ready" and info["type"] == "generic" and info["model_id"] == "nemo-model"
    assert info["health_url"] == f"http://127.0.0.1:{port}/v1/health"
    assert info["completions_url"] == f"http://127.0.0.1:{port}/v1/completions"
    assert info["deployment_id"].startswith("rl_latest-")
    assert "marker=from-config" in log.read_text()
    server_pid = int((tmp_path / "server.pid").read_text())
    assert process_running(server_pid) and group_alive(info["pid"])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert not process_running(server_pid) and not group_alive(info["pid"])


def test_a_command_that_exits_at_once_fails_within_seconds_with_its_log(tmp_path: Path, stop_later: Any, eval_yaml: Any) -> None:
    port = free_port()
    command = "echo 'Traceback: CUDA driver not found' >&2; exit 3"
    proc, endpoint, log = start(tmp_path, eval_yaml(command, port=port, timeout_s=600))
    stop_later(proc)
    started = time.monotonic()
    with pytest.raises(EndpointNotReady, match=r"(?s)exited with status 3 before .*CUDA driver not found"):
        wait_for_service(endpoint, timeout_s=60)
    assert time.monotonic() - started < 5
    proc.send_signal(signal.SIGTERM)  # as Snakemake stops the service once its consumers failed
    assert proc.wait(timeout=10) == 1
    assert json.loads(endpoint.read_text())["state"] == "failed"


def test_a_command_that_never_answers_times_out_with_its_log(tmp_path: Path, stop_later: Any, eval_yaml: Any) -> None:
    port = free_port()
    command = f"echo 'still compiling kernels'; echo $$$$ > {tmp_path / 'sleeper.pid'}; exec sleep 120"
    proc, endpoint, _ = start(tmp_path, eval_yaml(command, port=port, timeout_s=2))
    stop_later(proc)
    started = time.monotonic()
    with pytest.raises(EndpointNotReady, match=r"(?s)the generic deployment \(none\) was not ready within 2 s.*still compiling kernels"):
        wait_for_service(endpoint, timeout_s=60)
    assert time.monotonic() - started < 10
    proc.send_signal(signal.SIGTERM)  # as Snakemake stops the service once its consumers failed
    assert proc.wait(timeout=20) == 1
    assert not process_running(int((tmp_path / "sleeper.pid").read_text()))  # the process group was stopped


def test_a_deployment_that_dies_while_serving_marks_the_endpoint_failed(tmp_path: Path, stop_later: Any, eval_yaml: Any) -> None:
    import urllib.request

    port = free_port()
    proc, endpoint, _ = start(tmp_path, eval_yaml(server_command(tmp_path, port), port=port))
    stop_later(proc)
    info = wait_for_service(endpoint, timeout_s=30)
    with pytest.raises(OSError):
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"{info['url']}/quit", timeout=5)
    wait_for(lambda: json.loads(endpoint.read_text())["state"] == "failed", 10, poll_s=0.1)  # noticed within a second or so
    proc.send_signal(signal.SIGTERM)  # as Snakemake stops the service once its consumers failed
    assert proc.wait(timeout=10) == 1
    failed = json.loads(endpoint.read_text())
    assert failed["state"] == "failed" and "exited with status 7 while serving" in failed["error"] and "asked to quit" in failed["error"]
    with pytest.raises(EndpointNotReady, match="while serving"):
        wait_for_service(endpoint, timeout_s=5)


def test_a_missing_squashed_image_is_named(tmp_path: Path, eval_yaml: Any) -> None:
    cfg_file = eval_yaml("exit 0", port=1, execution="slurm/default", overrides=("execution.container_runner=pyxis",))
    sqsh = yaml.safe_load(cfg_file.read_text())["deployment"]["image"]
    assert sqsh == str(tmp_path / "build/images/nvcr.io+nvidia+nemo+25.11.nemotron_3_nano.sqsh")
    proc, endpoint, _ = start(tmp_path, cfg_file)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert f"deployment.image={sqsh}: the squashed image is missing".encode() in err
    assert json.loads(endpoint.read_text())["state"] == "failed"


def test_none_publishes_the_existing_endpoint_until_stopped(tmp_path: Path, planner: Any) -> None:
    (tmp_path / "none.yaml").write_text(CONFIG.format(execution="local").replace("deployment: generic", "deployment: none")
                                        .split("deployment:\n  image")[0] + "evaluation:\n  tasks: [{name: hellaswag}]\n")
    plan = planner(str(tmp_path / "none.yaml"), ["target.api_endpoint.url=https://llm.example.com/v1/completions",
                                                 "target.api_endpoint.model_id=m", "target.api_endpoint.api_key_name=MY_KEY"])
    (tmp_path / "eval.yaml").write_text(plan.model("demo_latest").eval_text)
    proc, endpoint, _ = start(tmp_path, tmp_path / "eval.yaml")
    try:
        wait_for(lambda: endpoint.exists() and json.loads(endpoint.read_text())["state"] == "ready", 15, poll_s=0.1)
        info = json.loads(endpoint.read_text())
        assert {k: info[k] for k in ("type", "url", "completions_url", "health_url", "model_id", "api_key_name")} == {
            "type": "none", "url": "https://llm.example.com", "completions_url": "https://llm.example.com/v1/completions",
            "health_url": "https://llm.example.com/health", "model_id": "m", "api_key_name": "MY_KEY"}
        assert wait_for_service(endpoint, timeout_s=5)["deployment_id"] == info["deployment_id"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_first_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert first_node({}) == "127.0.0.1"
    assert first_node({"SLURMD_NODENAME": "gpu07"}) == "gpu07"
    scontrol = tmp_path / "scontrol"  # a stand-in: `scontrol show hostnames gpu[03-04]`
    scontrol.write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu[03-04]" ] && printf "gpu03\\ngpu04\\n"\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert first_node({"SLURM_JOB_NODELIST": "gpu[03-04]", "SLURMD_NODENAME": "gpu04"}) == "gpu03"


@pytest.mark.slurm
def test_inside_a_slurm_job_step_the_deployment_is_a_nested_step(tmp_path: Path, eval_yaml: Any) -> None:
    """As Snakemake runs it on Slurm: the serve step inside `srun -n1` of a batch job; the deployment's own
    `srun --overlap` step answers at the first node; SIGTERM to the serve step cancels that step."""
    problem = slurm_problem()
    if problem:
        pytest.skip(problem)
    port = free_port()
    cfg_file = eval_yaml(server_command(tmp_path, port), port=port, execution="slurm/default")
    endpoint, log, report = tmp_path / "run" / "endpoint.json", tmp_path / "serve.log", tmp_path / "report.txt"
    serve = f"{BIN / 'nemotron-step'} serve --eval {cfg_file} --model m"
    script = tmp_path / "job.sh"
    script.write_text(f"""#!/bin/bash
srun -n1 {serve} --endpoint-file {endpoint} --log {log} &
for i in $(seq 1 100); do grep -qs '"ready"\\|"failed"' {endpoint} && break; sleep 0.2; done
squeue -h -s -j $SLURM_JOB_ID -o %i > {report}
pkill -TERM -f "^[^ ]*python[^ ]* {serve}"  # the step itself (its script's interpreter), not srun
wait $!; echo "exit=$?" >> {report}
""")
    res = subprocess.run(["sbatch", "--wait", "-c", "2", f"--output={tmp_path / 'job.out'}", str(script)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr + (tmp_path / "job.out").read_text()
    info = json.loads(endpoint.read_text())
    assert info["state"] == "ready", info
    lines = report.read_text().split()
    assert {line.split(".")[-1] for line in lines if "." in line} >= {"0", "1", "batch"}  # serve step 0, deployment step 1
    assert lines[-1] == "exit=0"
    assert log.read_text().startswith("$ srun --overlap --mem=0 --nodes 1 --ntasks 1 --ntasks-per-node 1 --kill-on-bad-exit=1 bash -c")
    assert not process_running(int((tmp_path / "server.pid").read_text()))
