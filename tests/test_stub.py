"""The stub deployment (deploy/stub.py): a real process answering real HTTP, deterministic, without torch."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from nemotron_eval.deploy import stub, types


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("stub")
    checkpoint = stub.write_checkpoint(folder / "checkpoint")
    endpoint, stats = folder / "endpoint.json", folder / "stats.json"
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "nemotron_eval.deploy.stub", "--checkpoint", str(checkpoint),
                             "--endpoint-file", str(endpoint), "--stats-file", str(stats), "--served-model-name", "m"],
                            stderr=subprocess.PIPE, text=True)
    while not endpoint.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() - started < 10
        time.sleep(0.01)
    info = {**json.loads(endpoint.read_text()), "listening_s": time.monotonic() - started, "checkpoint_dir": checkpoint,
            "stats_file": stats, "proc": proc}
    yield info
    proc.terminate()
    proc.wait(timeout=10)


def post(url: str, body: Any) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_it_starts_at_once_without_torch(server) -> None:
    assert server["listening_s"] < 3  # a fraction of a second alone; the margin is for a busy machine
    code = ("import sys, nemotron_eval.deploy.stub; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'fastapi')))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    with urllib.request.urlopen(server["health_url"], timeout=5) as response:
        assert response.status == 200


def test_echo_logprobs_are_deterministic_and_follow_the_tokenizer(server) -> None:
    """One log-prob per byte of the prompt (the stub checkpoint's tokenizer gives the same count, as lm-eval's
    context lengths need), the same answer twice, and top_logprobs consistent with token_logprobs."""
    from transformers import AutoTokenizer

    prompt = "Question: Où est Paris?\nAnswer: in France"
    body = {"model": "m", "prompt": prompt, "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0}
    code, first = post(server["completions_url"], body)
    assert code == 200
    _, again = post(server["client_completions_url"].replace("{client}", "arc"), body)
    lp, lp_again = first["choices"][0]["logprobs"], again["choices"][0]["logprobs"]
    assert lp["token_logprobs"] == lp_again["token_logprobs"] and first["choices"][0]["text"] == again["choices"][0]["text"]
    tokenizer = AutoTokenizer.from_pretrained(str(server["checkpoint_dir"]))
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(prompt.encode()) == len(lp["token_logprobs"]) - 1  # the prompt's, then the generated one
    assert tokenizer.decode(ids) == prompt
    assert lp["token_logprobs"][0] is None and all(-9.5 <= v < 0 for v in lp["token_logprobs"][1:])
    for value, tops, token in zip(lp["token_logprobs"][1:], lp["top_logprobs"][1:], lp["tokens"][1:]):
        assert tops[token] == value and max(tops.values()) == -0.01  # greedy iff the token is the top one
    assert first["choices"][0]["text"].startswith(prompt)


def test_generation_stops_at_a_stop_string_or_max_tokens(server) -> None:
    _, long = post(server["completions_url"], {"prompt": ["Q: 2+2?\nA:", "Other"], "max_tokens": 40})
    texts = [c["text"] for c in long["choices"]]
    assert [len(t.encode()) for t in texts] == [40, 40] and texts[0] != texts[1]
    assert all(c["finish_reason"] == "length" for c in long["choices"])
    stop = texts[0][10:12]
    _, cut = post(server["completions_url"], {"prompt": "Q: 2+2?\nA:", "max_tokens": 40, "stop": [stop]})
    assert cut["choices"][0]["text"] == texts[0][:texts[0].index(stop)] and cut["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("body, says", [
    ({"prompt": ""}, "'prompt'"),
    ({"prompt": "x", "max_tokens": -1}, "'max_tokens'"),
    ({"prompt": "x", "logprobs": 99}, "'logprobs'"),
    ({"prompt": [300]}, "between 0 and 256"),
    ([1, 2], "JSON object"),
])
def test_a_bad_request_gets_400_saying_why(server, body, says: str) -> None:
    code, answer = post(server["completions_url"], body)
    assert code == 400 and says in answer["error"]["message"]


def test_stats_count_per_client_and_reach_the_file_at_shutdown(tmp_path: Path) -> None:
    checkpoint = stub.write_checkpoint(tmp_path / "c")
    endpoint, stats = tmp_path / "e.json", tmp_path / "s.json"
    proc = subprocess.Popen([sys.executable, "-m", "nemotron_eval.deploy.stub", "--checkpoint", str(checkpoint),
                             "--endpoint-file", str(endpoint), "--stats-file", str(stats)], stderr=subprocess.DEVNULL)
    try:
        while not endpoint.exists():
            assert proc.poll() is None
            time.sleep(0.01)
        info = json.loads(endpoint.read_text())
        post(info["client_completions_url"].replace("{client}", "hellaswag"), {"prompt": "abcd", "max_tokens": 2})
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    written = json.loads(stats.read_text())
    assert written["clients"]["hellaswag"]["requests"] == 1 and written["clients"]["hellaswag"]["prompt_tokens"] == 4
    assert written["generated_tokens"] == 2


def test_it_is_a_registered_deployment_type() -> None:
    kind = types.get("stub")
    assert isinstance(kind, stub.Stub) and kind.tasks_at_once(2) is None and kind.readiness_timeout({}) == 30


def test_latency_holds_each_request_without_holding_the_others(tmp_path: Path) -> None:
    """`--latency-ms` (deployment.latency_ms): a request takes at least that long, and two at once take about as
    long as one (each waits in its own thread), so a test can hold a task mid-way and the server stays concurrent."""
    import threading

    checkpoint = stub.write_checkpoint(tmp_path / "c")
    endpoint = tmp_path / "e.json"
    proc = subprocess.Popen([sys.executable, "-m", "nemotron_eval.deploy.stub", "--checkpoint", str(checkpoint),
                             "--endpoint-file", str(endpoint), "--latency-ms", "600"], stderr=subprocess.DEVNULL)
    try:
        while not endpoint.exists():
            assert proc.poll() is None
            time.sleep(0.01)
        url = json.loads(endpoint.read_text())["completions_url"]
        started = time.monotonic()
        assert post(url, {"prompt": "abc", "max_tokens": 1})[0] == 200
        assert time.monotonic() - started >= 0.6
        codes: list[int] = []
        threads = [threading.Thread(target=lambda: codes.append(post(url, {"prompt": "abc", "max_tokens": 1})[0]))
                   for _ in range(2)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.monotonic() - started
        assert codes == [200, 200] and 0.6 <= took < 1.0, took  # one after the other would take 1.2 s
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_latency_ms_is_the_stub_types_own_setting(planner, tmp_path: Path) -> None:
    """deployment.latency_ms: checked by the stub type's schema rule, passed to the server as --latency-ms, and
    no part of what scores (its type's not_scoring: a task's fingerprint does not change with it)."""
    from nemotron_eval.core.errors import UserError

    with pytest.raises(UserError, match=r"^deployment\.latency_ms=-1: a whole number >= 0"):
        planner("local", ["deployment=stub", "deployment.latency_ms=-1"]).model("demo_latest")
    plans = [planner("local", ["deployment=stub", f"deployment.latency_ms={ms}"]).model("demo_latest") for ms in (0, 250)]
    runtime = types.Runtime(run_dir=tmp_path / "run", deployment_id="d-1", environ={})
    argv = [types.get("stub").plan(p.eval, runtime).argv for p in plans]
    assert "--latency-ms" not in argv[0] and argv[1][-2:] == ["--latency-ms", "250"]
    assert argv[0] == argv[1][:-2]
    assert [p.job["run"]["tasks"]["openbookqa"]["fingerprint"] for p in plans].count(
        plans[0].job["run"]["tasks"]["openbookqa"]["fingerprint"]) == 2


def raw(server: dict[str, Any], request: bytes) -> tuple[int, dict[str, Any]]:
    """Send bytes as they are (after the request line, "Connection: close" is added); the status and JSON body of
    the answer."""
    import socket

    with socket.create_connection(("127.0.0.1", server["port"]), timeout=10) as sock:
        line, _, rest = request.partition(b"\r\n")
        sock.sendall(line + b"\r\nConnection: close\r\n" + rest)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize(("request_bytes", "status", "says"), [
    (b"POST /v1/completions HTTP/1.1\r\nContent-Length: 1000000000\r\n\r\n{", 413, "limit of 8388608 bytes"),
    (b"POST /v1/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400, "Content-Length '-5'"),
    (b"POST /v1/completions HTTP/1.1\r\nContent-Length: 5000\r\n\r\n" + b"[" * 5000, 400, "deeper than 16 levels"),
    (b"PUT /v1/completions HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405, "PUT /v1/completions"),
    (b"GET /nowhere HTTP/1.1\r\n\r\n", 404, "no GET /nowhere"),
    (b"GET /x extra HTTP/1.1\r\n\r\n", 400, "the request: Bad request syntax"),
])
def test_bounds_and_errors_are_the_servers_own_and_json(server, request_bytes: bytes, status: int, says: str) -> None:
    """The stub shares the CPU server's bounds (deploy.server.protocol) and answers every error as OpenAI's JSON."""
    code, answer = raw(server, request_bytes)
    assert code == status and answer["error"]["code"] == status and says in answer["error"]["message"], answer


def test_too_many_prompts_are_refused(server) -> None:
    code, answer = post(server["completions_url"], {"prompt": ["a"] * 4097, "max_tokens": 1})
    assert code == 400 and "at most 4096" in answer["error"]["message"]
