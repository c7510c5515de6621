"""An OpenAI-compatible completions server for a Hugging Face causal LM on CPU.

    python -m nemotron_eval.deploy.server --checkpoint DIR [--port 0] [--dtype float32|bfloat16] [--endpoint-file F]

One worker thread owns the model. It gathers pending prompts (up to --max-batch-size, waiting a few milliseconds
for more), left-pads them with an attention mask and explicit position ids, and runs them in one forward pass; the
prompt's log-probs and the first new token come from that same pass, so `echo` + `max_tokens=1` (what lm-eval sends
for log-likelihoods) costs one pass. Further tokens are decoded with the KV cache.

The checks a user can get wrong (checkpoint folder, port) run before torch is imported, so they fail in well under
a second; heavy imports happen inside `Engine` and `build_app`.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import itertools
import logging
import os
import queue
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nemotron_eval.errors import UserError
from nemotron_eval.io import write_json_atomic
from nemotron_eval.model import DTYPES, check_checkpoint

if TYPE_CHECKING:
    import torch
    from fastapi import FastAPI

log = logging.getLogger("nemotron_eval.deploy.server")

MAX_TOP_LOGPROBS = 20
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


class BadRequest(ValueError):
    """A request the server refuses with HTTP 400; the message says what is wrong."""


# --------------------------------------------------------------------------------------------------- the engine


@dataclass
class Job:
    """One prompt of one request, as the worker sees it."""

    ids: list[int]
    max_tokens: int
    score_prompt: bool  # log-probs of the prompt's own tokens (echo + logprobs)
    top_logprobs: int | None  # None: no log-probs at all
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    done: Callable[[Result | BaseException], None] = lambda _: None


@dataclass
class Result:
    prompt_logprobs: list[float | None] = field(default_factory=list)  # first entry None
    prompt_top: list[dict[int, float] | None] = field(default_factory=list)
    gen_ids: list[int] = field(default_factory=list)
    gen_logprobs: list[float] = field(default_factory=list)
    gen_top: list[dict[int, float]] = field(default_factory=list)
    text: str = ""  # generated text, special tokens skipped, cut at the first stop string
    finish_reason: str = "length"
    finished: bool = False


def plan_batches(jobs: Sequence[Job], max_batch_size: int, max_batch_tokens: int) -> list[list[Job]]:
    """Split gathered jobs into forward passes: generating jobs apart from scoring-only ones (which need no
    decode steps), similar lengths together, at most `max_batch_size` rows and `max_batch_tokens` padded tokens.

    On CPU a padded token costs as much as a real one, so a batch is also closed before padding would exceed
    half its real tokens (small batches may waste up to 256 tokens: tiny matrix products are slow anyway)."""
    batches: list[list[Job]] = []
    for decoding in (False, True):
        group = sorted((j for j in jobs if (j.max_tokens > 1) == decoding), key=lambda j: len(j.ids))
        current: list[Job] = []
        real = 0
        for job in group:
            padded = (len(current) + 1) * len(job.ids)  # sorted: this job is the longest so far
            waste = padded - real - len(job.ids)
            if current and (len(current) >= max_batch_size or padded > max_batch_tokens
                            or waste > max((real + len(job.ids)) // 2, 256)):
                batches.append(current)
                current, real = [], 0
            current.append(job)
            real += len(job.ids)
        if current:
            batches.append(current)
    return batches


class Engine:
    """Loads the model and runs batched forward passes on one worker thread."""

    def __init__(
        self,
        checkpoint: Path,
        *,
        dtype: str = "float32",
        max_batch_size: int = 8,
        max_batch_tokens: int = 16384,
        batch_wait_s: float = 0.005,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.torch = torch
        self.checkpoint = checkpoint
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.batch_wait_s = batch_wait_s
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=getattr(torch, dtype)).eval()
        config = self.model.config
        self.context_length: int | None = getattr(config, "max_position_embeddings", None)
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        self.pad_id: int = next(
            i for i in (self.tokenizer.pad_token_id, *sorted(self.eos_ids), 0) if i is not None
        )
        self._body = self.model.get_decoder()
        self._head = self.model.get_output_embeddings()
        self._cache_arg = "cache" if "cache" in inspect.signature(self._body.forward).parameters else "past_key_values"
        self._split = self._split_matches_full()
        self.stats = {"requests": 0, "batches": 0, "forward_passes": 0, "prompt_tokens": 0, "generated_tokens": 0}
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="model-worker", daemon=True)

    # -- public

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        return self.tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    # -- the worker thread

    def _work(self) -> None:
        with self.torch.inference_mode():
            while (jobs := self._gather()) is not None:
                for batch in plan_batches(jobs, self.max_batch_size, self.max_batch_tokens):
                    self._run_batch(batch)

    def _gather(self) -> list[Job] | None:
        first = self._queue.get()
        if first is None:
            return None
        jobs = [first]
        deadline = time.monotonic() + self.batch_wait_s
        while len(jobs) < self.max_batch_size:
            try:
                job = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # stop after this batch
                break
            jobs.append(job)
        return jobs

    def _run_batch(self, batch: list[Job]) -> None:
        started = time.monotonic()
        try:
            results, passes = self._forward_batch(batch)
        except Exception as exc:  # a failed batch fails its requests, not the server
            log.exception("batch of %d failed", len(batch))
            for job in batch:
                job.done(exc)
            return
        prompt_tokens = sum(len(j.ids) for j in batch)
        generated = sum(len(r.gen_ids) for r in results)
        for key, value in (("batches", 1), ("forward_passes", passes), ("requests", len(batch)),
                           ("prompt_tokens", prompt_tokens), ("generated_tokens", generated)):
            self.stats[key] += value
        log.info(
            "batch size=%d prompt_tokens=%d padded=%d generated=%d passes=%d %.3fs",
            len(batch), prompt_tokens, len(batch) * max(len(j.ids) for j in batch), generated, passes,
            time.monotonic() - started,
        )
        for job, result in zip(batch, results):
            job.done(result)

    def _forward_batch(self, batch: list[Job]) -> tuple[list[Result], int]:
        torch = self.torch
        width = max(len(j.ids) for j in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, job in enumerate(batch):  # left padding: every row's next token comes from the last column
            input_ids[row, width - len(job.ids):] = torch.tensor(job.ids, dtype=torch.long)
            mask[row, width - len(job.ids):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        decoding = any(j.max_tokens > 1 for j in batch)

        hidden, cache = self._forward(input_ids, mask, positions, None, decoding)
        passes = 1
        results = [Result() for _ in batch]
        next_logits: list[torch.Tensor | None] = [None] * len(batch)
        for row, (job, result) in enumerate(zip(batch, results)):
            if job.score_prompt:
                logits = self._logits(hidden[row, width - len(job.ids):])
                self._score_prompt(job, result, logits)
                next_logits[row] = logits[-1]
        rest = [row for row, lg in enumerate(next_logits) if lg is None]
        if rest:
            for row, logits in zip(rest, self._logits(hidden[rest, -1])):
                next_logits[row] = logits
        self._advance(batch, results, torch.stack(next_logits))  # type: ignore[arg-type]

        while not all(r.finished for r in results):
            step = torch.tensor([[r.gen_ids[-1] if r.gen_ids else self.pad_id] for r in results], dtype=torch.long)
            mask = torch.cat([mask, torch.ones((len(batch), 1), dtype=torch.long)], dim=1)
            positions = positions[:, -1:] + 1
            hidden, cache = self._forward(step, mask, positions, cache, True)
            passes += 1
            self._advance(batch, results, self._logits(hidden[:, -1]))
        return results, passes

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any,
                 use_cache: bool) -> tuple[torch.Tensor, Any]:
        """Hidden states (logits when the model's head is not a plain projection) and the KV cache."""
        kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "use_cache": use_cache,
                  self._cache_arg: cache}
        if self._split:
            out = self._body(**kwargs)
            hidden = out.last_hidden_state
        else:
            out = self.model(**kwargs)
            hidden = out.logits
        return hidden, getattr(out, self._cache_arg, None) if use_cache else None

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits for hidden states of shape [..., hidden] (computed per row: full [B, L, vocab] logits
        of a long batch would take gigabytes)."""
        return (self._head(hidden) if self._split else hidden).float()

    def _split_matches_full(self) -> bool:
        """Whether head(body(x)) reproduces the model's own logits (false for heads with soft-capping or scaling)."""
        torch = self.torch
        ids = torch.tensor([[self.pad_id, 1, 2, 3]], dtype=torch.long) % self.model.config.vocab_size
        with torch.inference_mode():
            full = self.model(input_ids=ids).logits.float()
            split = self._head(self._body(input_ids=ids).last_hidden_state).float()
        same = bool(torch.allclose(full, split, atol=1e-5, rtol=0))
        if not same:
            log.warning("the model's head is not a plain projection: computing full logits per batch")
        return same

    def _score_prompt(self, job: Job, result: Result, logits: torch.Tensor) -> None:
        torch = self.torch
        logprobs = torch.log_softmax(logits[:-1], dim=-1)
        targets = torch.tensor(job.ids[1:], dtype=torch.long)
        chosen = logprobs.gather(1, targets[:, None])[:, 0].tolist()
        result.prompt_logprobs = [None, *chosen]
        result.prompt_top = [None]
        if job.top_logprobs is not None and len(job.ids) > 1:
            result.prompt_top += self._top(logprobs, job.top_logprobs, job.ids[1:])

    def _top(self, logprobs: torch.Tensor, k: int, chosen: Sequence[int]) -> list[dict[int, float]]:
        """For each row of [N, vocab] log-probs: its k most likely tokens, plus the token chosen there."""
        torch = self.torch
        if k:
            values, ids = logprobs.topk(k, dim=-1)
            tops = [dict(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
        else:
            tops = [{} for _ in chosen]
        chosen_lp = logprobs.gather(1, torch.tensor(chosen, dtype=torch.long)[:, None])[:, 0].tolist()
        for top, token, lp in zip(tops, chosen, chosen_lp):
            top.setdefault(token, lp)
        return tops

    def _advance(self, batch: list[Job], results: list[Result], logits: torch.Tensor) -> None:
        """Pick each unfinished row's next token from its logits [B, vocab] and decide whether it is done."""
        torch = self.torch
        logprobs = torch.log_softmax(logits, dim=-1)
        for row, (job, result) in enumerate(zip(batch, results)):
            if result.finished:
                continue
            if len(result.gen_ids) >= job.max_tokens:
                result.finished = True
                continue
            token = self._choose(job, logits[row], len(result.gen_ids))
            result.gen_ids.append(token)
            result.gen_logprobs.append(float(logprobs[row, token]))
            if job.top_logprobs is not None:
                result.gen_top += self._top(logprobs[row : row + 1], job.top_logprobs, [token])
            result.text = self.decode([t for t in result.gen_ids if t not in self.eos_ids])
            cut = min((i for i in (result.text.find(s) for s in job.stop if s) if i >= 0), default=-1)
            if cut >= 0:
                result.text = result.text[:cut]
                result.finish_reason, result.finished = "stop", True
            elif token in self.eos_ids:
                result.finish_reason, result.finished = "stop", True
            elif len(result.gen_ids) >= job.max_tokens:
                result.finish_reason, result.finished = "length", True

    def _choose(self, job: Job, logits: torch.Tensor, step: int) -> int:
        torch = self.torch
        if job.temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits / job.temperature, dim=-1)
        if job.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            keep = sorted_probs.cumsum(-1) - sorted_probs < job.top_p  # the smallest set reaching top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        generator = torch.Generator()
        generator.manual_seed(job.seed + step if job.seed is not None else int.from_bytes(os.urandom(6), "little"))
        return int(torch.multinomial(probs, 1, generator=generator))


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is not None:
            return frozenset([value] if isinstance(value, int) else value)
    return frozenset()


# --------------------------------------------------------------------------------------------------- requests


@dataclass
class Prompt:
    ids: list[int]
    text: str
    offsets: list[int]  # character offset of each token in `text`


def _int(body: dict[str, Any], key: str, default: int | None, low: int, high: int | None = None) -> int | None:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        limits = f"between {low} and {high}" if high is not None else f">= {low}"
        raise BadRequest(f"'{key}' must be an integer {limits}, got {value!r}")
    return value


def _float(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise BadRequest(f"'{key}' must be a number between {low} and {high}, got {value!r}")
    return float(value)


def tokenize_prompts(engine: Engine, prompt: Any) -> list[Prompt]:
    """`prompt` as OpenAI allows it: a string, a list of strings, a list of token ids, or a list of those."""
    if isinstance(prompt, str):
        items: list[Any] = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        items = [prompt]
    elif isinstance(prompt, list) and prompt:
        items = prompt
    else:
        raise BadRequest("'prompt' must be a string, a list of strings or a list of token ids")
    prompts = []
    for item in items:
        if isinstance(item, str):
            try:
                encoded = engine.tokenizer(item, return_offsets_mapping=True)
                offsets = [start for start, _ in encoded["offset_mapping"]]
            except NotImplementedError:  # a slow tokenizer: offsets from the decoded pieces
                encoded = engine.tokenizer(item)
                pieces = engine.token_strings(encoded["input_ids"])
                offsets = list(itertools.accumulate((len(p) for p in pieces[:-1]), initial=0))
            prompts.append(Prompt(list(encoded["input_ids"]), item, offsets))
        elif isinstance(item, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            vocab = len(engine.tokenizer)
            if any(not 0 <= t < vocab for t in item):
                raise BadRequest(f"'prompt' holds token ids outside the vocabulary (0..{vocab - 1})")
            pieces = engine.token_strings(item)
            offsets = list(itertools.accumulate((len(p) for p in pieces[:-1]), initial=0))
            prompts.append(Prompt(list(item), "".join(pieces), offsets))
        else:
            raise BadRequest("'prompt' must be a string, a list of strings or a list of token ids")
    for p in prompts:
        if not p.ids:
            raise BadRequest("'prompt' is empty: it must hold at least one token")
    return prompts


def parse_request(engine: Engine, body: Any) -> tuple[list[Prompt], dict[str, Any]]:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if body.get("stream"):
        raise BadRequest("'stream' is not supported by this server")
    if _int(body, "n", 1, 1) != 1 or _int(body, "best_of", 1, 1) != 1:
        raise BadRequest("only n=1 and best_of=1 are supported")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise BadRequest(f"'stop' must be a string or a list of strings, got {stop!r}")
    params = {
        "max_tokens": _int(body, "max_tokens", DEFAULT_MAX_TOKENS, 0),
        "echo": bool(body.get("echo", False)),
        "logprobs": _int(body, "logprobs", None, 0, MAX_TOP_LOGPROBS),
        "temperature": _float(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _float(body, "top_p", 1.0, 0.0, 1.0),
        "seed": _int(body, "seed", None, -(2**63), 2**63 - 1),
        "stop": tuple(stops),
    }
    if params["top_p"] == 0.0:  # an empty nucleus: NeMo's recipe sends it for greedy MMLU (as its server takes it)
        params["temperature"], params["top_p"] = 0.0, 1.0
    prompts = tokenize_prompts(engine, body.get("prompt"))
    limit = engine.context_length
    for p in prompts:
        if limit is not None and len(p.ids) > limit:
            raise BadRequest(
                f"the prompt is {len(p.ids)} tokens, longer than the model's context window of {limit} tokens "
                "(max_position_embeddings); prompts are never truncated: shorten the prompt"
            )
        if limit is not None and len(p.ids) + params["max_tokens"] > limit:
            raise BadRequest(
                f"the prompt is {len(p.ids)} tokens and {params['max_tokens']} more were requested (max_tokens), "
                f"beyond the model's context window of {limit} tokens (max_position_embeddings); "
                "prompts are never truncated: shorten the prompt or lower max_tokens"
            )
    return prompts, params


def choice(engine: Engine, index: int, prompt: Prompt, result: Result, params: dict[str, Any]) -> dict[str, Any]:
    echo = params["echo"]
    text = (prompt.text if echo else "") + result.text
    logprobs = None
    if params["logprobs"] is not None:
        ids: list[int] = []
        token_logprobs: list[float | None] = []
        top: list[dict[int, float] | None] = []
        offsets: list[int] = []
        if echo:
            ids += prompt.ids
            token_logprobs += result.prompt_logprobs
            top += result.prompt_top
            offsets += prompt.offsets
        base = len(prompt.text) if echo else 0
        ids += result.gen_ids
        token_logprobs += result.gen_logprobs
        top += result.gen_top
        offsets += [base + len(engine.decode(result.gen_ids[:i])) for i in range(len(result.gen_ids))]
        logprobs = {
            "tokens": engine.token_strings(ids),
            "token_logprobs": token_logprobs,
            "top_logprobs": [None if t is None else _named(engine, t) for t in top],
            "text_offset": offsets,
        }
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": result.finish_reason}


def _named(engine: Engine, top: dict[int, float]) -> dict[str, float]:
    named: dict[str, float] = {}
    for name, value in sorted(zip(engine.token_strings(list(top)), top.values()), key=lambda kv: -kv[1]):
        named.setdefault(name, value)
    return named


# --------------------------------------------------------------------------------------------------- the app


def build_app(engine: Engine, model_id: str) -> FastAPI:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI(title="nemotron-eval CPU server")
    created = int(time.time())

    def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}}, status)

    async def completions(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return error(400, "the request body is not valid JSON")
        try:
            prompts, params = parse_request(engine, body)
        except BadRequest as exc:
            return error(400, str(exc))
        loop = asyncio.get_running_loop()
        futures = []
        for p in prompts:
            future: asyncio.Future[Result] = loop.create_future()
            futures.append(future)
            engine.submit(Job(
                ids=p.ids, max_tokens=params["max_tokens"],
                score_prompt=params["echo"] and params["logprobs"] is not None,
                top_logprobs=params["logprobs"], temperature=params["temperature"], top_p=params["top_p"],
                seed=params["seed"], stop=params["stop"], done=_resolver(loop, future),
            ))
        try:
            results = await asyncio.gather(*futures)
        except Exception as exc:
            return error(500, f"the model failed on this request: {exc}", "server_error")
        prompt_tokens = sum(len(p.ids) for p in prompts)
        completion_tokens = sum(len(r.gen_ids) for r in results)
        return JSONResponse({
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model_id,
            "choices": [choice(engine, i, p, r, params) for i, (p, r) in enumerate(zip(prompts, results))],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{
            "id": model_id, "object": "model", "created": created, "owned_by": "nemotron-eval",
            "root": str(engine.checkpoint), "max_model_len": engine.context_length,
        }]})

    async def health(request: Request) -> JSONResponse:
        status = 200 if engine.alive else 503
        return JSONResponse({"status": "ok" if engine.alive else "model worker stopped", "model": model_id,
                             "dtype": engine.dtype, **engine.stats}, status)

    # Plain Starlette routes: the handlers read the request themselves (no FastAPI dependency injection).
    app.add_route("/v1/completions", completions, methods=["POST"])
    app.add_route("/v1/models", models, methods=["GET"])
    app.add_route("/health", health, methods=["GET"])
    app.add_route("/v1/health", health, methods=["GET"])
    return app


def _resolver(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Result]) -> Callable[[Any], None]:
    def settle(value: Any) -> None:
        if future.done():
            return
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)

    return lambda value: loop.call_soon_threadsafe(settle, value)


# --------------------------------------------------------------------------------------------------- start-up


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: a free one), or UserError naming the port when that fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT port is reusable, a listening one not
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = "is already in use" if exc.errno in (98, 48) else f"cannot be bound ({exc.strerror})"
        raise UserError(f"port {port} on {host} {reason}: pick another --port, or --port 0 for a free one") from None
    return sock


def endpoint_info(args: argparse.Namespace, port: int, model_id: str) -> dict[str, Any]:
    host = args.host if args.host not in ("0.0.0.0", "::", "") else socket.gethostname()
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    return {
        "url": url,
        "completions_url": f"{url}/v1/completions",
        "health_url": f"{url}/health",
        "port": port,
        "pid": os.getpid(),
        "model_id": model_id,
        "deployment_id": args.deployment_id or f"local-{uuid.uuid4().hex[:12]}",
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "dtype": args.dtype,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m nemotron_eval.deploy.server", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="Hugging Face checkpoint folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 (default): a free port")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="float32 (default) is exact")
    parser.add_argument("--served-model-name", help="model id clients use (default: the checkpoint folder's name)")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-batch-tokens", type=int, default=16384, help="padded tokens per forward pass")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long to wait for a batch to fill")
    parser.add_argument("--endpoint-file", type=Path, help="JSON written once the server is listening")
    parser.add_argument("--deployment-id")
    args = parser.parse_args(argv)
    if args.max_batch_size < 1 or args.max_batch_tokens < 1:
        parser.error("--max-batch-size and --max-batch-tokens must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        check_checkpoint(args.checkpoint)
        sock = bind(args.host, args.port)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    port = sock.getsockname()[1]
    model_id = args.served_model_name or Path(args.checkpoint).resolve().name
    started = time.monotonic()
    try:
        engine = Engine(args.checkpoint, dtype=args.dtype, max_batch_size=args.max_batch_size,
                        max_batch_tokens=args.max_batch_tokens, batch_wait_s=args.batch_wait_ms / 1000)
    except Exception as exc:
        log.debug("loading failed", exc_info=True)
        print(f"error: checkpoint {args.checkpoint} could not be loaded: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    log.info("loaded %s (%s, context %s) in %.1fs", args.checkpoint, args.dtype, engine.context_length,
             time.monotonic() - started)
    engine.start()

    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                info = endpoint_info(args, port, model_id)
                if args.endpoint_file:
                    write_json_atomic(args.endpoint_file, info)
                log.info("serving %s at %s", model_id, info["completions_url"])

    config = uvicorn.Config(build_app(engine, model_id), log_level="warning", access_log=False, lifespan="off")
    asyncio.run(Server(config).serve(sockets=[sock]))
    engine.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
