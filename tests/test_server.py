"""The CPU OpenAI server, run as a subprocess on the real converted SmolLM2, checked against transformers in-process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from nemotron_eval.deploy.process import EndpointNotReady
from nemotron_eval.deploy.server.jobs import Job
from nemotron_eval.core.io import log_tail

from conftest import converted_smollm2, wait_for  # one cached conversion for every module
from support.request_mix import FIXTURES, MixRequest, load_requests
from support.server_process import start_server, stop_server, wait_for_endpoint

PROMPTS = [
    "Paris",
    "The quick brown fox jumps over the lazy dog.",
    "Question: Which gas do plants absorb from the air?\nAnswer: Carbon dioxide.\n\n" * 4,
    "Über café naïve — 日本語 🚀!",
]
SERVER = [sys.executable, "-m", "nemotron_eval.deploy.server"]


@pytest.fixture(scope="module")
def checkpoint(request: pytest.FixtureRequest) -> Path:
    return converted_smollm2(request)[0]


@pytest.fixture(scope="module")
def server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    run = tmp_path_factory.mktemp("serve")
    process = start_server(checkpoint, endpoint_file=run / "endpoint.json", log_file=run / "server.log",
                           served_model_name="smollm2", deployment_id="test-1", max_batch_size=8)
    try:
        info = wait_for_endpoint(run / "endpoint.json", pid=process.pid, log_file=run / "server.log", timeout_s=180)
        yield {**info, "process": process, "log": run / "server.log"}
    finally:
        stop_server(process)


@pytest.fixture(scope="module")
def server_nocache(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The same server with its prefix cache off: the reference for exactness, and for scheduling tests where
    only the scheduler may help."""
    run = tmp_path_factory.mktemp("serve-nocache")
    process = start_server(checkpoint, endpoint_file=run / "endpoint.json", log_file=run / "server.log",
                           served_model_name="smollm2", max_batch_size=8, extra_args=["--prefix-cache-mb", "0"])
    try:
        info = wait_for_endpoint(run / "endpoint.json", pid=process.pid, log_file=run / "server.log", timeout_s=180)
        yield {**info, "process": process, "log": run / "server.log"}
    finally:
        stop_server(process)


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def patient() -> Iterator[httpx.Client]:
    """A client for requests that queue behind minutes of work (real 25-shot prompts on 2 shared cores)."""
    with httpx.Client(trust_env=False, timeout=1800, limits=httpx.Limits(max_connections=20)) as c:
        yield c


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    class Reference:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()

        def logprobs(self, prompt: str) -> tuple[list[int], list[float], int]:
            """Prompt token ids, each token's log-prob given the ones before, and the greedy next token."""
            ids = self.tokenizer(prompt, return_tensors="pt").input_ids
            with torch.inference_mode():
                logprobs = torch.log_softmax(self.model(ids).logits.float(), dim=-1)[0]
            scores = logprobs[:-1].gather(1, ids[0, 1:, None])[:, 0].tolist()
            return ids[0].tolist(), scores, int(logprobs[-1].argmax())

        def greedy(self, prompt: str, max_new_tokens: int) -> str:
            ids = self.tokenizer(prompt, return_tensors="pt").input_ids
            with torch.inference_mode():
                out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                          do_sample=False)
            return str(self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))

    return Reference()


def complete(client: httpx.Client, server: dict[str, Any], **body: Any) -> dict[str, Any]:
    response = client.post(server["completions_url"], json={"model": "smollm2", **body})
    assert response.status_code == 200, response.text
    return dict(response.json())


def score(client: httpx.Client, server: dict[str, Any], prompt: str | list[int], max_tokens: int = 1) -> dict[str, Any]:
    """What lm-eval sends for a log-likelihood."""
    return complete(client, server, prompt=prompt, temperature=0, max_tokens=max_tokens, logprobs=1, echo=True,
                    seed=1234)


def stats(client: httpx.Client, server: dict[str, Any]) -> dict[str, Any]:
    return dict(client.get(server["url"] + "/health").json())


# ------------------------------------------------------------------------------------------------ scoring


@pytest.mark.slow
def test_endpoint_file_health_and_models(server: dict[str, Any], client: httpx.Client, checkpoint: Path) -> None:
    assert server["pid"] == server["process"].pid
    assert server["url"] == f"http://127.0.0.1:{server['port']}"
    assert server["completions_url"] == server["url"] + "/v1/completions"
    assert (server["model_id"], server["deployment_id"], server["dtype"]) == ("smollm2", "test-1", "float32")
    assert server["checkpoint"] == str(checkpoint.resolve()) and server["started_at"]
    for path in ("/health", "/v1/health"):
        assert client.get(server["url"] + path).status_code == 200
    models = client.get(server["url"] + "/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["smollm2"] and models["data"][0]["max_model_len"] == 8192


@pytest.mark.slow
def test_prompt_logprobs_equal_transformers(server: dict[str, Any], client: httpx.Client, reference: Any) -> None:
    for prompt in PROMPTS:
        ids, expected, next_token = reference.logprobs(prompt)
        before = stats(client, server)["forward_passes"]
        result = score(client, server, prompt)
        assert stats(client, server)["forward_passes"] == before + 1  # echo + max_tokens=1: one pass
        choice = result["choices"][0]
        logprobs = choice["logprobs"]
        assert len(logprobs["tokens"]) == len(ids) + 1  # the prompt, then the one generated token
        assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
        assert logprobs["token_logprobs"][1:-1] == pytest.approx(expected, abs=1e-4)
        assert logprobs["tokens"][:-1] == [reference.tokenizer.decode([i]) for i in ids]
        assert logprobs["tokens"][-1] == reference.tokenizer.decode([next_token])
        assert logprobs["text_offset"][: len(ids)] == [s for s, _ in reference.tokenizer(
            prompt, return_offsets_mapping=True)["offset_mapping"]]
        assert choice["text"] == prompt + reference.tokenizer.decode([next_token], skip_special_tokens=True)
        for top, lp in zip(logprobs["top_logprobs"][1:], logprobs["token_logprobs"][1:]):
            assert 1 <= len(top) <= 2 and max(top.values()) >= lp  # top-1, plus the actual token when it differs
        assert result["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1}
        # the same prompt as token ids scores the same
        by_ids = score(client, server, ids)["choices"][0]["logprobs"]["token_logprobs"]
        assert by_ids[1:] == pytest.approx(logprobs["token_logprobs"][1:], abs=1e-6)


@pytest.mark.slow
def test_max_tokens_0_scores_the_prompt_only(server: dict[str, Any], client: httpx.Client, reference: Any) -> None:
    prompt = PROMPTS[1]
    ids, expected, _ = reference.logprobs(prompt)
    result = score(client, server, prompt, max_tokens=0)
    choice = result["choices"][0]
    assert choice["text"] == prompt and choice["finish_reason"] == "length"
    assert len(choice["logprobs"]["tokens"]) == len(ids)
    assert choice["logprobs"]["token_logprobs"][1:] == pytest.approx(expected, abs=1e-4)
    assert result["usage"]["completion_tokens"] == 0


@pytest.mark.slow
def test_concurrent_requests_are_batched_and_equal_single(server: dict[str, Any], client: httpx.Client) -> None:
    single = [score(client, server, p)["choices"][0]["logprobs"]["token_logprobs"] for p in PROMPTS]
    before = stats(client, server)
    with ThreadPoolExecutor(8) as pool:
        batched = list(pool.map(lambda p: score(client, server, p), PROMPTS * 2))
    after = stats(client, server)
    assert after["requests"] - before["requests"] == 8
    assert after["batches"] - before["batches"] < 8, "concurrent requests were not batched"
    for expected, result in zip(single * 2, batched):
        got = result["choices"][0]["logprobs"]["token_logprobs"]
        assert got[0] is None and got[1:] == pytest.approx(expected[1:], abs=1e-4)


@pytest.mark.slow
def test_a_list_of_prompts_gives_one_choice_each(server: dict[str, Any], client: httpx.Client) -> None:
    result = score(client, server, PROMPTS[:2])  # type: ignore[arg-type]
    assert [c["index"] for c in result["choices"]] == [0, 1]
    assert [c["text"][: len(p)] for c, p in zip(result["choices"], PROMPTS)] == PROMPTS[:2]


# ------------------------------------------------------------------------------------------------ generation


@pytest.mark.slow
def test_greedy_generation_equals_transformers_generate(server: dict[str, Any], client: httpx.Client,
                                                        reference: Any) -> None:
    prompts = ["The capital of France is", "Question: What is 12 plus 7?\nAnswer:"]
    expected = [reference.greedy(p, 10) for p in prompts]
    with ThreadPoolExecutor(2) as pool:  # concurrently: decoded as one left-padded batch
        results = list(pool.map(lambda p: complete(client, server, prompt=p, max_tokens=10, temperature=0), prompts))
    for want, result in zip(expected, results):
        assert result["choices"][0]["text"] == want
        assert result["usage"]["completion_tokens"] <= 10
    text = expected[0]
    stop = text.strip()[3:6]  # a stop string in the middle of the greedy continuation
    cut = complete(client, server, prompt=prompts[0], max_tokens=10, temperature=0, stop=["@@@", stop])
    assert cut["choices"][0]["text"] == text[: text.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"


@pytest.mark.slow
def test_sampling_is_seeded(server: dict[str, Any], client: httpx.Client) -> None:
    body = {"prompt": "Once upon a time", "max_tokens": 6, "temperature": 1.0, "top_p": 0.9}
    first = complete(client, server, **body, seed=7)["choices"][0]["text"]
    assert complete(client, server, **body, seed=7)["choices"][0]["text"] == first


@pytest.mark.slow
def test_top_p_zero_is_greedy(server: dict[str, Any], client: httpx.Client) -> None:
    """NeMo's recipe sends top_p=0.0 for MMLU (config.params.top_p): the empty nucleus means greedy."""
    body = {"prompt": "The capital of France is", "max_tokens": 5}
    greedy = complete(client, server, **body, temperature=0.0)["choices"][0]["text"]
    assert complete(client, server, **body, temperature=1.0, top_p=0.0, seed=3)["choices"][0]["text"] == greedy


# ------------------------------------------------------------------------------------------------ refusals


@pytest.mark.slow
def test_prompt_beyond_the_context_window_is_refused(server: dict[str, Any], client: httpx.Client) -> None:
    response = client.post(server["completions_url"], json={"prompt": "hello " * 8300, "max_tokens": 1})
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "context window of 8192 tokens" in message and "never truncated" in message
    response = client.post(server["completions_url"], json={"prompt": "hello " * 8180, "max_tokens": 100})
    assert response.status_code == 400 and "max_tokens" in response.json()["error"]["message"]


@pytest.mark.slow
@pytest.mark.parametrize(("body", "words"), [
    ({"prompt": "x", "logprobs": 99}, "'logprobs' must be an integer between 0 and 20"),
    ({"prompt": []}, "'prompt' must be"),
    ({"prompt": ""}, "'prompt' is empty"),
    ({"prompt": "x", "stop": 3}, "'stop' must be"),
    ({"prompt": "x", "stream": True}, "'stream' is not supported"),
])
def test_bad_requests_get_400(server: dict[str, Any], client: httpx.Client, body: dict[str, Any], words: str) -> None:
    response = client.post(server["completions_url"], json=body)
    assert response.status_code == 400 and words in response.json()["error"]["message"]


@pytest.mark.slow
def test_port_in_use_exits_at_once_naming_the_port(checkpoint: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        proc = subprocess.run([*SERVER, "--checkpoint", str(checkpoint), "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and time.monotonic() - started < 10
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"port {port}" in lines[0] and "in use" in lines[0], proc.stderr


@pytest.mark.slow
def test_checkpoint_without_tokenizer_fails_fast(checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "no-tokenizer"
    broken.mkdir()
    for name in ("config.json", "model.safetensors"):
        (broken / name).symlink_to(checkpoint / name)
    started = time.monotonic()
    proc = subprocess.run([*SERVER, "--checkpoint", str(broken)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and time.monotonic() - started < 10
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(broken) in lines[0] and "no tokenizer" in lines[0], proc.stderr


# ------------------------------------------------------------------------------------------------ readiness


@pytest.mark.slow
def test_wait_for_endpoint_fails_fast_when_the_server_dies(checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "bad-config"
    broken.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        (broken / name).symlink_to(checkpoint / name)
    (broken / "config.json").write_text("{this is not json")
    process = start_server(broken, endpoint_file=tmp_path / "endpoint.json", log_file=tmp_path / "server.log")
    started = time.monotonic()
    try:
        with pytest.raises(EndpointNotReady) as raised:
            wait_for_endpoint(tmp_path / "endpoint.json", pid=process.pid, log_file=tmp_path / "server.log",
                              timeout_s=300)
    finally:
        stop_server(process)
    assert time.monotonic() - started < 60  # the process's exit, not the 300 s timeout
    assert process.returncode != 0
    message = str(raised.value)
    assert f"pid {process.pid}" in message and "could not be loaded" in message


def test_wait_for_endpoint_reports_the_log_tail_within_seconds(tmp_path: Path) -> None:
    log = tmp_path / "dead.log"
    with log.open("wb") as out:
        script = "import sys\nfor i in range(50): print('line', i)\nprint('boom: bad thing'); sys.exit(3)"
        process = subprocess.Popen([sys.executable, "-c", script], stdout=out, stderr=subprocess.STDOUT)
    started = time.monotonic()
    with pytest.raises(EndpointNotReady, match="boom: bad thing") as raised:
        wait_for_endpoint(tmp_path / "never.json", pid=process.pid, log_file=log, timeout_s=120)
    assert time.monotonic() - started < 5
    assert "line 49" in str(raised.value) and "line 10\n" not in str(raised.value)  # only the last 30 lines
    assert process.wait() == 3  # not reaped behind the caller's back
    with pytest.raises(EndpointNotReady, match="was not ready within 0.5 s"):
        wait_for_endpoint(tmp_path / "never.json", log_file=log, timeout_s=0.5)


def test_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"{i}\n" for i in range(100)))
    assert log_tail(log, 3) == "97\n98\n99"
    assert "no log" in log_tail(tmp_path / "missing.log", 3)


# ------------------------------------------------------------------------------------------------ units


def test_importing_the_server_does_not_import_torch() -> None:
    names = ("main", "app", "protocol", "engine", "jobs", "decoding", "checks")
    modules = ", ".join(f"nemotron_eval.deploy.server.{m}" for m in names)
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


@pytest.mark.slow
def test_bfloat16_is_selectable_and_close_to_float32(checkpoint: Path, reference: Any) -> None:
    import torch

    from nemotron_eval.deploy.server.engine import Engine

    engine = Engine(checkpoint, dtype="bfloat16")
    assert engine.model.dtype == torch.bfloat16
    ids, expected, _ = reference.logprobs(PROMPTS[2])
    before = engine.stats.snapshot()["forward_passes"]
    results = engine.run([Job(ids=ids, max_tokens=1, score_prompt=True, top_logprobs=1)])
    got = results[0].prompt_logprobs[1:]
    assert engine.stats.snapshot()["forward_passes"] == before + 1 and len(got) == len(expected)
    mean_error = sum(abs(a - b) for a, b in zip(got, expected)) / len(got)
    assert mean_error < 0.1  # bf16: close, not exact


# ------------------------------------------------------------------------------------------------ prefix cache


def tagged(client: httpx.Client, server: dict[str, Any], request: MixRequest) -> dict[str, Any]:
    response = client.post(f"{server['url']}/c/{request.task}/v1/completions", json={"model": "smollm2",
                                                                                        **request.body})
    assert response.status_code == 200, response.text
    return dict(response.json())


def server_stats(client: httpx.Client, server: dict[str, Any]) -> dict[str, Any]:
    return dict(client.get(server["url"] + "/stats").json())


def first_item_per_task() -> list[MixRequest]:
    """Real harness requests (tests/fixtures/prompts): the first item of each of the five tasks, every answer
    choice of it (about 15,000 prompt tokens, ARC-Challenge's 25 shots the most)."""
    first: dict[str, int] = {}
    for r in load_requests():
        first.setdefault(r.task, r.doc_id)
    requests = [r for r in load_requests() if r.doc_id == first[r.task]]
    assert {r.task for r in requests} == {"arc_challenge", "hellaswag", "mmlu", "openbookqa", "winogrande"}
    return requests


@pytest.mark.slow
def test_prefix_cache_is_exact_on_real_task_prompts(server: dict[str, Any], server_nocache: dict[str, Any],
                                                   patient: httpx.Client) -> None:
    """Every prompt log-prob (and top log-prob, and generated text) with the cache equals the cache-off server's
    within 1e-5: requests sent 8 at a time, so batches mix rows with different cached prefix lengths; then all
    again, now answered almost entirely from the cache."""
    requests = first_item_per_task()
    before = server_stats(patient, server)
    with ThreadPoolExecutor(8) as pool:
        cached = list(pool.map(lambda r: tagged(patient, server, r), requests))
        fresh = list(pool.map(lambda r: tagged(patient, server_nocache, r), requests))
    middle = server_stats(patient, server)
    with ThreadPoolExecutor(8) as pool:
        again = list(pool.map(lambda r: tagged(patient, server, r), requests))
    after = server_stats(patient, server)

    worst = 0.0
    scored_tokens = 0
    for request, a, b, c in zip(requests, cached, fresh, again):
        for x in (a, c):
            cx, cb = x["choices"][0], b["choices"][0]
            assert cx["text"] == cb["text"], request
            if not request.scoring:
                continue
            lx, lb = cx["logprobs"], cb["logprobs"]
            assert lx["tokens"] == lb["tokens"] and lx["text_offset"] == lb["text_offset"]
            assert lx["token_logprobs"][0] is None and lb["token_logprobs"][0] is None
            for u, v, tu, tv in zip(lx["token_logprobs"][1:], lb["token_logprobs"][1:], lx["top_logprobs"][1:],
                                    lb["top_logprobs"][1:]):
                worst = max(worst, abs(u - v))
                assert tu.keys() == tv.keys() and all(abs(tu[k] - tv[k]) <= 1e-5 for k in tu)
            scored_tokens += len(lx["token_logprobs"]) - 1
    assert scored_tokens > 12000 and worst <= 1e-5, f"largest difference {worst:.3g}"

    # the cache did its work: each item's context computed once, so ARC's four choices cost little more than one
    first = {k: middle["clients"][k]["computed_tokens"] - before["clients"].get(k, {}).get("computed_tokens", 0)
             for k in middle["clients"]}
    asked = {k: middle["clients"][k]["prompt_tokens"] - before["clients"].get(k, {}).get("prompt_tokens", 0)
             for k in middle["clients"]}
    assert first["arc_challenge"] < 0.35 * asked["arc_challenge"], (first, asked)
    nocache = server_stats(patient, server_nocache)
    assert nocache["cache_hit_tokens"] == 0 and nocache["computed_tokens"] == nocache["prompt_tokens"]
    assert nocache["prefix_cache"] is None
    # the second round: a scoring prompt seen before recomputes only its last token, a generation prompt nothing
    # but the token that starts its decoding
    assert after["computed_tokens"] - middle["computed_tokens"] == len(requests)
    assert after["prefix_cache"]["bytes"] <= after["prefix_cache"]["capacity_bytes"]


@pytest.mark.slow
def test_a_short_client_is_not_stuck_behind_another_clients_long_prompts(server_nocache: dict[str, Any],
                                                                         patient: httpx.Client) -> None:
    """One client floods the server with eight 25-shot ARC prompts (~1,600 tokens each, 8 in flight); another
    then sends OpenBookQA prompts (~20 tokens) one after the other. Its first answer must come long before the
    flood is done (without per-client scheduling the eight long prompts ran as one batch first). Cache off: the
    scheduler alone must do it."""
    long = [r for r in load_requests(FIXTURES, ["arc_challenge"])][:8]
    short = [r for r in load_requests(FIXTURES, ["openbookqa"])][:4]
    assert len(long) == 8 and min(len(r.prompt) for r in long) > 4000 and max(len(r.prompt) for r in short) < 400
    url = server_nocache["url"]
    started = time.monotonic()
    times: dict[str, list[float]] = {"flood": [], "short": []}

    def send(name: str, request: MixRequest) -> None:
        response = patient.post(f"{url}/c/{name}/v1/completions", json={"model": "smollm2", **request.body})
        assert response.status_code == 200, response.text
        times[name].append(time.monotonic() - started)

    with ThreadPoolExecutor(9) as pool:
        flood = [pool.submit(send, "flood", r) for r in long]
        time.sleep(0.5)  # the flood is queued (and its first batch running) before the short client starts
        short_started = time.monotonic() - started
        for r in short:
            send("short", r)
        for f in flood:
            f.result()
    flood_s = max(times["flood"])
    first_short = times["short"][0] - short_started
    assert first_short < 0.3 * flood_s, (times, short_started)
    assert max(times["short"]) < flood_s, times
    stats = server_stats(patient, server_nocache)
    assert stats["clients"]["short"]["requests"] == 4 and stats["clients"]["flood"]["requests"] == 8
    assert stats["clients"]["short"]["first_answer_s"] < stats["clients"]["flood"]["last_answer_s"]


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/c/bad tag/v1/completions", "/c/a/b/v1/completions", "/c//v1/completions",
                                  "/c/" + "x" * 65 + "/v1/completions", "/c/caf\u00e9/v1/completions"])
def test_a_bad_client_tag_gets_400(server: dict[str, Any], client: httpx.Client, path: str) -> None:
    response = client.post(server["url"] + path, json={"prompt": "x", "max_tokens": 1})
    assert response.status_code == 400, response.text
    assert "A-Z, a-z, 0-9" in response.json()["error"]["message"]


@pytest.mark.slow
def test_stats_endpoint_and_stats_file(checkpoint: Path, tmp_path: Path) -> None:
    """/stats while serving; --stats-file written once ready, every ~10 s while serving, and at SIGTERM."""
    stats_file = tmp_path / "stats.json"
    process = start_server(checkpoint, endpoint_file=tmp_path / "endpoint.json", log_file=tmp_path / "server.log",
                           extra_args=["--stats-file", str(stats_file), "--threads", "1"])
    try:
        info = wait_for_endpoint(tmp_path / "endpoint.json", pid=process.pid, log_file=tmp_path / "server.log",
                                 timeout_s=180)
        assert json.loads(stats_file.read_text())["requests"] == 0  # written as soon as the server is ready
        ctx = "Question: Which gas do plants absorb from the air?\nAnswer:" * 5
        with httpx.Client(trust_env=False, timeout=120) as c:
            for tag, suffix in (("taskA", " Carbon dioxide."), ("taskA", " Oxygen."), ("taskB", " Nitrogen.")):
                r = c.post(f"{info['url']}/c/{tag}/v1/completions",
                           json={"prompt": ctx + suffix, "max_tokens": 1, "echo": True, "logprobs": 1})
                assert r.status_code == 200
            c.post(info["completions_url"], json={"prompt": [ctx, "Paris"], "max_tokens": 2})  # client "default"
            live = c.get(info["url"] + "/stats").json()
        deadline = time.monotonic() + 15  # rewritten every ~10 s while serving
        while json.loads(stats_file.read_text())["requests"] < 4 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert json.loads(stats_file.read_text())["requests"] == 4
    finally:
        returncode = stop_server(process)
    assert returncode == 0
    final = json.loads(stats_file.read_text())
    for stats in (live, final):
        assert stats["requests"] == 4 and stats["prompts"] == 5 and stats["loads"] == 1 and stats["threads"] == 1
        assert set(stats["clients"]) == {"taskA", "taskB", "default"}
        assert stats["prompt_tokens"] == sum(c["prompt_tokens"] for c in stats["clients"].values())
        assert stats["computed_tokens"] + stats["cache_hit_tokens"] == stats["prompt_tokens"]
        assert stats["cache_hit_tokens"] > 0  # the second and third prompts reuse the first one's context
        assert 0 < stats["busy_s"] <= stats["wall_s"] and stats["model_load_s"] > 0
        assert stats["busy_s"] == pytest.approx(sum(c["busy_s"] for c in stats["clients"].values()), abs=0.01)
        # the time since ready, accounted from the batches (a decoding step among them), agrees with the clock
        idle = stats["idle"]
        accounted = (stats["ready_s"] + stats["busy_s"] + idle["before_first_s"] + idle["short_s"]
                     + sum(length for _, length in idle["stretches"]) + idle["since_last_s"])
        assert accounted == pytest.approx(stats["wall_s"], abs=0.05), stats
        assert idle["before_first_s"] > 0 and idle["short_s"] > 0  # the client's turnarounds between its requests
        a = stats["clients"]["taskA"]
        assert a["requests"] == 2 and 0 < a["first_answer_s"] <= a["last_answer_s"]
        assert stats["clients"]["default"]["prompts"] == 2 and stats["generated_tokens"] >= 3
    assert final["wall_s"] >= live["wall_s"]


@pytest.mark.parametrize("args, named", [
    (["--threads", "-1"], "--threads"), (["--max-batch-size", "0"], "--max-batch-size"),
    (["--prefix-cache-mb", "-5"], "--prefix-cache-mb"), (["--max-request-mb", "0"], "--max-request-mb"),
])
def test_a_bad_setting_is_one_line_naming_it(args: list[str], named: str, capsys: pytest.CaptureFixture[str]) -> None:
    from nemotron_eval.deploy.server.main import parse_args

    with pytest.raises(SystemExit) as exit_:
        parse_args(["--checkpoint", "ckpt", *args])
    assert exit_.value.code == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said.startswith("python -m nemotron_eval.deploy.server: error:") and named in said, said


def test_stats_file_in_a_missing_folder_fails_at_once(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (tmp_path / "ckpt" / name).write_text("{}")
    started = time.monotonic()
    proc = subprocess.run([*SERVER, "--checkpoint", str(tmp_path / "ckpt"), "--stats-file",
                           str(tmp_path / "nope" / "stats.json")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and time.monotonic() - started < 10
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--stats-file" in lines[0] and "does not exist" in lines[0], proc.stderr


# ------------------------------------------------------------------------------------------------ no client stalls
# The real server process on a tiny random Llama (tests/support/tiny_model.py): what is checked here is the server
# (bounds, errors, scheduling, dropping work), not the model's numbers.


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from support.tiny_model import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "checkpoint")


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    run = tmp_path_factory.mktemp("serve-tiny")
    process = start_server(tiny_checkpoint, endpoint_file=run / "endpoint.json", log_file=run / "server.log",
                           served_model_name="tiny", max_batch_size=8)
    try:
        info = wait_for_endpoint(run / "endpoint.json", pid=process.pid, log_file=run / "server.log", timeout_s=180)
        yield {**info, "process": process, "log": run / "server.log"}
    finally:
        stop_server(process)


def send_raw(server: dict[str, Any], path: str, body: bytes, length: int | None = None) -> socket.socket:
    """A request sent on a socket of its own (closing it is the client going away)."""
    sock = socket.create_connection(("127.0.0.1", server["port"]))
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n\r\n")
    sock.sendall(head.encode() + body)
    return sock


def assert_openai_error(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert err["code"] == status and words in err["message"] and err["type"], err


@pytest.mark.parametrize(("method", "path", "content", "status", "words"), [
    ("GET", "/nope", None, 404, "Not Found"),
    ("GET", "/v1/completions", None, 405, "Method Not Allowed"),
    ("DELETE", "/health", None, 405, "Method Not Allowed"),
    ("POST", "/v1/completions", b"[" * 100_000, 400, "deeper than 16 levels"),
    ("POST", "/v1/completions", b'{"prompt": ' + b"[" * 17 + b"]" * 17 + b"}", 400, "deeper than 16 levels"),
    ("POST", "/v1/completions", b'{"prompt": "x"', 400, "not valid JSON"),
    ("POST", "/v1/completions", b"\xff\xfe\x00", 400, "not valid JSON"),
    ("POST", "/v1/completions", b"x" * (9 * 2**20), 413, "limit of 8388608 bytes (8 MiB"),
    # chunked (no Content-Length): counted as it arrives
    ("POST", "/v1/completions", (b"x" * 2**20 for _ in range(9)), 413, "limit of 8388608 bytes (8 MiB"),
    ("POST", "/v1/completions", json.dumps({"prompt": ["a"] * 4097}).encode(), 400, "at most 4096"),
    ("POST", "/v1/completions", json.dumps({"prompt": [[1, 2, 999]]}).encode(), 400, "outside the vocabulary"),
])
def test_every_error_is_openai_json(tiny: dict[str, Any], method: str, path: str, content: bytes | None, status: int,
                                    words: str) -> None:
    with httpx.Client(trust_env=False, timeout=60) as c:
        assert_openai_error(c.request(method, tiny["url"] + path, content=content), status, words)


def test_a_body_declared_too_large_is_refused_before_it_is_read(tiny: dict[str, Any]) -> None:
    sock = send_raw(tiny, "/v1/completions", b'{"prompt": "', length=10**9)
    answer = b""
    with sock:
        sock.settimeout(30)
        while b'"code":413' not in answer and (chunk := sock.recv(65536)):  # the server closes after it
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413") and b'"code":413' in answer, answer


def test_health_answers_while_a_big_request_is_tokenized_and_a_client_that_leaves_is_dropped(
        tiny: dict[str, Any]) -> None:
    """A body just under the 8 MiB limit (4,000 prompts of 2,000 bytes: 8 million tokens of the byte tokenizer)
    is parsed and tokenized off the event loop: /health answers at once throughout. Then the client closes its
    connection: its queued prompts are dropped, and the model stops computing them."""
    url = tiny["url"]
    prompts = [f"{i:04d} " + "the quick brown fox jumps over the lazy dog " * 46 for i in range(4000)]
    body = json.dumps({"prompt": prompts, "max_tokens": 1, "echo": True, "logprobs": 1}).encode()
    assert 7.5 * 2**20 < len(body) < 8 * 2**20
    with httpx.Client(trust_env=False, timeout=30) as c:
        before = c.get(url + "/stats").json()
        started = time.monotonic()
        sock = send_raw(tiny, "/c/big/v1/completions", body)
        waits = []
        while time.monotonic() - started < 6:
            t = time.monotonic()
            assert c.get(url + "/health").status_code == 200
            waits.append(time.monotonic() - t)
            time.sleep(0.05)
        queued = wait_for(lambda: (s := c.get(url + "/stats").json())["pending"] > 1000 and s, 60, 0.05)
        assert max(waits) < 1.5, f"/health waited {max(waits):.2f} s while a big request was tokenized"
        sock.close()
        dropped = wait_for(lambda: (s := c.get(url + "/stats").json())["pending"] == 0 and s, 60, 0.05)
        time.sleep(1)
        after = c.get(url + "/stats").json()
    assert after["cancelled_prompts"] - before["cancelled_prompts"] > 1000
    assert after["computed_tokens"] == dropped["computed_tokens"]  # nothing more computed for the client gone
    assert after["computed_tokens"] - before["computed_tokens"] < 0.5 * 4000 * 2000
    assert queued["requests"] == before["requests"]  # still unanswered while /health was polled
    print(f"/health while an {len(body) / 2**20:.1f} MiB request was read and tokenized: worst {max(waits):.3f} s; "
          f"{after['cancelled_prompts'] - before['cancelled_prompts']} prompts dropped when its client left")


def test_a_long_generation_blocks_no_short_request_and_stops_when_its_client_leaves(tiny: dict[str, Any]) -> None:
    """A generation of 100,000 tokens is decoded step by step between other requests: 1-token requests from
    another client are answered while it runs. When its client goes away, decoding it stops."""
    url = tiny["url"]
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 100_000, "temperature": 0}).encode()
    with httpx.Client(trust_env=False, timeout=60) as c:
        sock = send_raw(tiny, "/c/long/v1/completions", body)
        first = wait_for(lambda: (s := c.get(url + "/stats").json())["decoding"] == 1 and s, 60, 0.05)
        waits = []
        for i in range(5):
            t = time.monotonic()
            r = c.post(url + "/c/short/v1/completions", json={"prompt": f"Question {i}?", "max_tokens": 1,
                                                              "echo": True, "logprobs": 1})
            waits.append(time.monotonic() - t)
            assert r.status_code == 200, r.text
        during = c.get(url + "/stats").json()
        assert during["decoding"] == 1 and during["generated_tokens"] > first["generated_tokens"]
        assert max(waits) < 5, waits  # a prompt's pass and one decoding step, on a busy machine
        sock.close()
        stopped = wait_for(lambda: (s := c.get(url + "/stats").json())["decoding"] == 0 and s, 30, 0.05)
        time.sleep(1)
        after = c.get(url + "/stats").json()
    assert after["generated_tokens"] == stopped["generated_tokens"] < 100_000
    assert stopped["cancelled_prompts"] >= first["cancelled_prompts"] + 1
    print(f"worst wait of a 1-token request during a long generation: {max(waits):.3f} s")


def test_temperatures_in_range_work_and_neighbours_are_unharmed(tiny: dict[str, Any]) -> None:
    """Every temperature of the documented range samples (1e-300 divided float32 logits into NaN: HTTP 500 for the
    request and its batch neighbours), requests sent together so that they share batches."""
    bodies = [{"prompt": "Hello", "max_tokens": 4, "temperature": t, "seed": 5} for t in (1e-300, 5e-324, 1e-40, 2.0)]
    bodies += [{"prompt": "Hello", "max_tokens": 4, "temperature": 0}, {"prompt": "Hi", "max_tokens": 1, "echo": True,
                                                                       "logprobs": 2}]
    with httpx.Client(trust_env=False, timeout=120) as c, ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda b: c.post(tiny["completions_url"], json=b), bodies))
    assert [r.status_code for r in responses] == [200] * len(bodies), [r.text for r in responses]
    greedy = responses[4].json()["choices"][0]["text"]
    assert all(r.json()["choices"][0]["text"] == greedy for r in responses[:3])  # a tiny temperature is greedy


# ------------------------------------------------------------------------------------------------ the engine alone


@pytest.fixture(scope="module")
def tiny_engine(tiny_checkpoint: Path) -> Any:
    from nemotron_eval.deploy.server.engine import Engine

    return Engine(tiny_checkpoint)


def gen_job(ids: list[int], max_tokens: int = 12, **kw: Any) -> Job:
    return Job(ids=ids, max_tokens=max_tokens, score_prompt=False, top_logprobs=1, temperature=0, **kw)


def test_a_failing_prompt_fails_alone_in_its_batch(tiny_engine: Any) -> None:
    prompts = [list(b"The first prompt."), list(b"The second one!!"), list(b"And the third...")]
    alone = [tiny_engine.run([Job(ids=p, max_tokens=1, score_prompt=True, top_logprobs=1)])[0] for p in prompts]
    bad = Job(ids=[10**6] * 16, max_tokens=1, score_prompt=True, top_logprobs=1)  # no such token: the pass fails
    got = tiny_engine.run([Job(ids=prompts[0], max_tokens=1, score_prompt=True, top_logprobs=1), bad,
                           *(Job(ids=p, max_tokens=1, score_prompt=True, top_logprobs=1) for p in prompts[1:])])
    assert isinstance(got[1], IndexError)
    for a, g in zip(alone, got[:1] + got[2:]):
        assert g.prompt_logprobs[1:] == pytest.approx(a.prompt_logprobs[1:], abs=1e-5) and g.gen_ids == a.gen_ids


def test_a_failing_decoding_step_fails_only_its_row(tiny_engine: Any) -> None:
    """Rows of different requests decode together; when one row breaks the step (here: a token id the model does not
    have, put in by hand), the step runs again row by row and only that row fails."""
    prompts = [list(b"Alpha beta gamma"), list(b"Delta"), list(b"Epsilon zeta eta theta")]
    alone = [tiny_engine.run([gen_job(p)])[0] for p in prompts]
    jobs = [gen_job(p) for p in prompts]
    out: dict[int, Any] = {}
    for i, job in enumerate(jobs):
        job.done = lambda value, i=i: out.__setitem__(i, value)
        tiny_engine.scheduler.add(job)
    import torch

    with torch.inference_mode():
        tiny_engine._tick()  # the prompts' pass: all three decode now
        assert len(tiny_engine.decoding) == 3
        row = tiny_engine.decoding.jobs.index(jobs[1])
        tiny_engine.decoding.results[row].gen_ids[-1] = 10**6
        while len(tiny_engine.scheduler) or len(tiny_engine.decoding):
            tiny_engine._tick()
    assert isinstance(out[1], IndexError)
    for i in (0, 2):
        assert out[i].gen_ids == alone[i].gen_ids
        assert out[i].gen_logprobs == pytest.approx(alone[i].gen_logprobs, abs=1e-5)


def test_generations_started_at_different_times_equal_each_alone(tiny_engine: Any) -> None:
    """A generation joins the rows already decoding (its cache left-padded to theirs) and leaves when done: its
    tokens are those it gets alone."""
    prompts = [list(b"One two three four five six"), list(b"Seven"), list(b"Eight nine ten eleven")]
    lengths = [40, 5, 25]
    alone = [tiny_engine.run([gen_job(p, n)])[0] for p, n in zip(prompts, lengths)]
    import torch

    jobs = [gen_job(p, n) for p, n in zip(prompts, lengths)]
    out: dict[int, Any] = {}
    with torch.inference_mode():
        for i, job in enumerate(jobs):  # a new prompt every third step
            job.done = lambda value, i=i: out.__setitem__(i, value)
            tiny_engine.scheduler.add(job)
            for _ in range(3):
                tiny_engine._tick()
        while len(tiny_engine.scheduler) or len(tiny_engine.decoding):
            tiny_engine._tick()
    for i, a in enumerate(alone):
        assert out[i].gen_ids == a.gen_ids and len(a.gen_ids) == lengths[i]
        assert out[i].gen_logprobs == pytest.approx(a.gen_logprobs, abs=1e-5)


def test_the_head_is_padded_only_where_its_rows_depend_on_the_block(tiny_engine: Any) -> None:
    """A pass projects only the rows it needs where the output head gives a row the same logits whatever the number
    of rows (oneDNN's packed product, checked at load); a head whose rows depend on it (as a plain matrix product's
    may, by a few ulps) fails that check and gets blocks padded to HEAD_ROWS. Scores are the same bit for bit
    either way with the packed head."""
    from types import SimpleNamespace

    import torch

    from nemotron_eval.deploy.server import checks
    from nemotron_eval.deploy.server.engine import HEAD_ROWS

    assert tiny_engine.packed_linears > 0 and not tiny_engine._pad_head
    head = tiny_engine._head
    skewed = SimpleNamespace(torch=torch, model=tiny_engine.model,
                             _head=lambda x: head(x) + 1e-3 * x.shape[0])  # a row's logits depend on the count
    assert not checks.head_rows_independent(skewed, HEAD_ROWS)
    assert checks.head_rows_independent(tiny_engine, HEAD_ROWS)

    projected: list[int] = []
    tiny_engine._head = lambda x: (projected.append(x.shape[0]), head(x))[1]
    prompts = [list(b"A short one."), list(b"And a somewhat longer prompt, scored too.")]
    try:
        results = {}
        for pad in (False, True):
            tiny_engine._pad_head = pad
            projected.clear()
            results[pad] = tiny_engine.run([Job(ids=p, max_tokens=1, score_prompt=True, top_logprobs=2)
                                            for p in prompts])
            rows = sum(len(p) for p in prompts)  # one batch: every position of both prompts, packed together
            assert projected == ([HEAD_ROWS] if pad else [rows]), (pad, projected)
    finally:
        tiny_engine._head, tiny_engine._pad_head = head, False
    for padded, unpadded in zip(results[True], results[False]):
        assert padded.prompt_logprobs == unpadded.prompt_logprobs
        assert padded.prompt_top == unpadded.prompt_top


def test_requests_sent_while_the_model_loads_are_answered_once_it_serves(tiny_checkpoint: Path,
                                                                           tmp_path: Path) -> None:
    """With --listening-file the port listens (and says so) before torch and the model load: a request sent then
    waits in the port's queue and gets its answer once the server serves, as the harnesses that start meanwhile
    rely on."""
    listening, endpoint, log = tmp_path / "listening.json", tmp_path / "endpoint.json", tmp_path / "server.log"
    process = start_server(tiny_checkpoint, endpoint_file=endpoint, log_file=log, served_model_name="tiny",
                           extra_args=["--listening-file", str(listening)])
    try:
        early = wait_for(lambda: json.loads(listening.read_text()) if listening.exists() else None, timeout_s=60,
                         poll_s=0.02)
        loaded_yet = endpoint.exists()
        assert early["state"] == "loading" and early["pid"] == process.pid and early["model_id"] == "tiny"
        with httpx.Client(timeout=120, trust_env=False) as early_client:
            answer = early_client.post(early["completions_url"],
                                       json={"model": "tiny", "prompt": "Hello", "max_tokens": 2, "temperature": 0})
        assert answer.status_code == 200 and len(answer.json()["choices"]) == 1
        assert not loaded_yet, "the server was ready before it said it listens"
        ready = json.loads(endpoint.read_text())
        assert ready["url"] == early["url"] and "state" not in ready
    finally:
        stop_server(process)
