"""Prompt-scoring throughput of the CPU deployment (what every log-likelihood task pays for).

    .venv/bin/python bench/server_throughput.py CHECKPOINT [--dtype float32|bfloat16] [--clients 8] [--requests 32]
        [--tokens 800] [--max-batch-tokens 2048,16384]

Starts the server on the checkpoint (e.g. models/smollm2 after `make eval`), sends `--requests` echo+logprobs
requests (max_tokens=1, as lm-eval does) of about `--tokens` prompt tokens from `--clients` threads, and prints
prompt tokens per second; with several `--max-batch-tokens` values, one server each, side by side. The prompts
share no prefix (the prefix cache does not help; bench/request_mix.py measures it). Compare numbers from the same
machine only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support, shared with the tests
from support.server_process import start_and_wait, stop_server

TEXT = "The quick brown fox jumps over the lazy dog while the farmer counts his sheep in the field. "


def score(url: str, prompt: str) -> int:
    body = json.dumps({"model": "m", "prompt": prompt, "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0}).encode()
    req = urllib.request.Request(f"{url}/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as response:
        return int(json.load(response)["usage"]["prompt_tokens"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--tokens", type=int, default=800, help="approximate prompt length")
    p.add_argument("--max-batch-tokens", help="the server's --max-batch-tokens, several comma-separated "
                                              "(default: the server's default)")
    a = p.parse_args()
    prompts = [f"{i}: " + TEXT * max(1, a.tokens // 20) for i in range(a.requests)]
    budgets = [int(b) for b in a.max_batch_tokens.split(",")] if a.max_batch_tokens else [None]
    for budget in budgets:
        extra = ["--max-batch-tokens", str(budget)] if budget else []
        with tempfile.TemporaryDirectory() as tmp:
            proc, info = start_and_wait(a.checkpoint, endpoint_file=Path(tmp) / "endpoint.json",
                                        log_file=Path(tmp) / "server.log", dtype=a.dtype, max_batch_size=a.clients,
                                        extra_args=extra)
            try:
                score(info["url"], prompts[0])  # warm-up
                started = time.perf_counter()
                with ThreadPoolExecutor(a.clients) as pool:
                    tokens = sum(pool.map(lambda prompt: score(info["url"], prompt), prompts))
                seconds = time.perf_counter() - started
            finally:
                stop_server(proc)
        print(f"{a.dtype}, {a.clients} clients, max batch tokens {budget or 'default'}: {tokens} prompt tokens "
              f"in {seconds:.1f} s = {tokens / seconds:.0f} tokens/s", flush=True)


if __name__ == "__main__":
    main()
