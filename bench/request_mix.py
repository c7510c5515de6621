"""The CPU server on a realistic evaluation request mix, prefix cache off and on, side by side in one run.

    .venv/bin/python bench/request_mix.py CHECKPOINT [--dtype float32|bfloat16] [--concurrency 8]
        [--cache-mb 4096] [--fixtures tests/fixtures/prompts] [--tasks arc_challenge,hellaswag,...] [--repeat 1]

Replays the recorded requests of the five default tasks (tests/fixtures/prompts, real harness requests: every
answer choice of each item) against a fresh server per mode, at `--concurrency` requests in flight: each task's
requests in lm-eval's own order (longest first), the tasks interleaved as five harnesses running together would
send them, each tagged with its task (/c/<task>/v1/completions). Prints, per mode: prompt tokens per second, the
share of requested prompt tokens the model computed, the server's peak memory and the cache's size; then the trie
floor (distinct prefix tokens / requested tokens, with the checkpoint's tokenizer over the same prompts: what an
exact prefix cache must compute at least) and the largest log-prob difference between the two modes.
Compare numbers from the same machine and run only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from nemotron_eval.deploy.server.engine import DEFAULT_PREFIX_CACHE_MB

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support, shared with the tests
from support.request_mix import FIXTURES, MixRequest, get, load_requests, send, trie_floor
from support.server_process import start_and_wait, stop_server


def harness_order(requests: list[MixRequest], token_counts: dict[str, int]) -> list[MixRequest]:
    """Each task's requests as lm-eval sends them (longest first), the tasks interleaved one by one."""
    by_task: dict[str, list[MixRequest]] = {}
    for r in requests:
        by_task.setdefault(r.task, []).append(r)
    queues = [sorted(rs, key=lambda r: -token_counts[r.prompt] if r.scoring else -len(r.prompt))
              for _, rs in sorted(by_task.items())]
    out = []
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def replay(checkpoint: Path, requests: list[MixRequest], *, dtype: str, concurrency: int, cache_mb: int,
           label: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        proc, info = start_and_wait(checkpoint, endpoint_file=Path(tmp) / "endpoint.json",
                                    log_file=Path(tmp) / "server.log", dtype=dtype, max_batch_size=concurrency,
                                    extra_args=["--prefix-cache-mb", str(cache_mb)])
        try:
            url = info["url"]
            send(url, MixRequest("warmup", 0, 0, {"prompt": "Paris", "max_tokens": 1}), tagged=False)
            before = get(url + "/stats")
            done, lock, started = [0], threading.Lock(), time.monotonic()

            def one(r: MixRequest) -> dict[str, Any]:
                answer, _ = send(url, r)
                with lock:
                    done[0] += 1
                    n, elapsed = done[0], time.monotonic() - started
                    if n % 10 == 0 or n == len(requests):
                        eta = elapsed / n * (len(requests) - n)
                        print(f"  {label}: {n}/{len(requests)} requests, {n / elapsed:.2f}/s, "
                              f"ETA {eta:.0f} s", file=sys.stderr, flush=True)
                return answer

            with ThreadPoolExecutor(concurrency) as pool:
                answers = list(pool.map(one, requests))
            seconds = time.monotonic() - started
            after = get(url + "/stats")
            rss = peak_rss_mb(proc.pid)
        finally:
            stop_server(proc)
    prompt = after["prompt_tokens"] - before["prompt_tokens"]
    computed = after["computed_tokens"] - before["computed_tokens"]
    return {"label": label, "answers": answers, "seconds": seconds, "prompt_tokens": prompt,
            "computed_tokens": computed, "busy_s": after["busy_s"] - before["busy_s"], "peak_rss_mb": rss,
            "cache_mb": (after["prefix_cache"] or {}).get("bytes", 0) / 2**20,
            "kv_bytes_per_token": after["kv_bytes_per_token"], "clients": after["clients"]}


def max_logprob_difference(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> float:
    worst = 0.0
    for x, y in zip(a, b):
        for cx, cy in zip(x["choices"], y["choices"]):
            if cx["text"] != cy["text"]:
                return float("inf")
            if cx["logprobs"] is None:
                continue
            for u, v in zip(cx["logprobs"]["token_logprobs"], cy["logprobs"]["token_logprobs"]):
                if u is not None:
                    worst = max(worst, abs(u - v))
    return worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--cache-mb", type=int, default=DEFAULT_PREFIX_CACHE_MB)
    p.add_argument("--fixtures", type=Path, default=FIXTURES)
    p.add_argument("--tasks", help="comma-separated task names (default: every fixture file)")
    p.add_argument("--repeat", type=int, default=1, help="send the whole mix this many times")
    a = p.parse_args()

    from transformers import AutoTokenizer

    requests = load_requests(a.fixtures, a.tasks.split(",") if a.tasks else None) * a.repeat
    tokenizer = AutoTokenizer.from_pretrained(a.checkpoint)
    token_lists = {r.prompt: tokenizer(r.prompt)["input_ids"] for r in requests}
    counts = {prompt: len(ids) for prompt, ids in token_lists.items()}
    requested = sum(counts[r.prompt] for r in requests)
    floor = trie_floor(token_lists[r.prompt] for r in requests)
    ordered = harness_order(requests, counts)
    tasks = sorted({r.task for r in requests})
    print(f"{len(requests)} requests from {', '.join(tasks)}: {requested} prompt tokens; "
          f"{a.dtype}, concurrency {a.concurrency}", flush=True)

    runs = [replay(a.checkpoint, ordered, dtype=a.dtype, concurrency=a.concurrency, cache_mb=mb, label=label)
            for label, mb in (("cache off", 0), (f"cache {a.cache_mb} MiB", a.cache_mb))]
    print(f"{'mode':<18}{'seconds':>9}{'tokens/s':>10}{'computed/requested':>20}{'busy_s':>9}"
          f"{'peak RSS MB':>13}{'cache MB':>10}")
    for r in runs:
        print(f"{r['label']:<18}{r['seconds']:>9.1f}{r['prompt_tokens'] / r['seconds']:>10.0f}"
              f"{r['computed_tokens'] / r['prompt_tokens']:>20.3f}{r['busy_s']:>9.1f}{r['peak_rss_mb']:>13.0f}"
              f"{r['cache_mb']:>10.0f}")
    off, on = runs
    print(f"{'trie floor':<18}{'':>9}{'':>10}{floor / requested:>20.3f}   ({floor} distinct prefix tokens "
          f"of {requested})")
    print(f"speed-up, cache on / off: {off['seconds'] / on['seconds']:.2f}x; "
          f"KV cache {on['kv_bytes_per_token']} bytes a token; "
          f"largest |log-prob difference| on vs off: {max_logprob_difference(off['answers'], on['answers']):.2g}")
    print("first / last answer per task (s after ready), off | on:")
    for task in tasks:
        c0, c1 = off["clients"].get(task, {}), on["clients"].get(task, {})
        print(f"  {task:<15}{c0.get('first_answer_s')!s:>8} / {c0.get('last_answer_s')!s:<8} | "
              f"{c1.get('first_answer_s')!s:>8} / {c1.get('last_answer_s')!s:<8}")


if __name__ == "__main__":
    main()
