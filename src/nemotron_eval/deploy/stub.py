"""The `stub` deployment: an OpenAI-compatible completions server with deterministic answers and no model, for
tests and dry runs of the whole pipeline (the real harness, the real DAG) in seconds instead of minutes.

    python -m nemotron_eval.deploy.stub --checkpoint DIR [--host 127.0.0.1] [--port 0] [--served-model-name NAME]
        [--endpoint-file F] [--listening-file F] [--deployment-id ID] [--stats-file F] [--latency-ms MS]
    python -m nemotron_eval.deploy.stub --make-checkpoint DIR      # a stub "checkpoint": config + tokenizer only

How to use it: pick the config group option `deployment=stub` and a checkpoint whose tokenizer is the stub's
(`--make-checkpoint DIR`, or `write_checkpoint(DIR)`, then `nemotron artifacts add NAME DIR`), e.g.

    snakemake --profile profiles/local --config 'overrides=["deployment=stub","run.model=stub:latest"]'

tests/test_fast_dag.py does exactly that (the compile chain, staging, the deployment, the real NeMo Evaluator
harness on two tasks, results and the summary: about a minute on 2 cores, most of it the harness starting up).

What it answers (the same JSON as `deploy.server`; standard library only: it imports neither torch nor
transformers and listens in about a tenth of a second):
* Tokens are UTF-8 bytes: token id = byte value, 256 is `<|endoftext|>`. The stub checkpoint's tokenizer
  (a byte-level BPE without merges, `tokenizer.json`) tokenizes the same way, so lm-eval's context lengths line up
  with the log-probs the stub returns. With another checkpoint's tokenizer the answers stay deterministic but
  lm-eval slices them at the wrong places (scores are meaningless either way: nothing is learned here).
* A token's log-prob is a hash of the 16 tokens before it and itself: -0.01 for the position's "greedy" token
  (a hash of the context over a small alphabet of letters, digits and punctuation), else between -0.5 and -9.5.
  `echo` + `logprobs` scores the prompt (the first token has none); `top_logprobs` lists the greedy token and the
  next candidates, plus the token there when it is not among them (as `deploy.server` does).
* Generation appends greedy tokens, `max_tokens` of them or until a `stop` string (`finish_reason` says which).
  `temperature`, `top_p` and `seed` are accepted and ignored: the same prompt always gets the same answer.
* `--latency-ms MS` (`deployment.latency_ms`, default 0): each completion request takes at least MS milliseconds,
  each in its own thread (requests in flight wait together, not one after another), so that a test can hold a
  task mid-way, e.g. to kill it there, without racing an answer that comes at once.
* `POST /v1/completions` and `/c/<client>/v1/completions` (a client's own figures), `GET /health`, `/v1/health`,
  `/v1/models`, `/stats` (`deploy.stats`: requests and tokens per client; computed = prompt tokens).
* The CPU server's bounds on a request (`deploy.server.protocol`: body size, JSON depth, prompts per request) and
  its errors: OpenAI's JSON with the HTTP status, whatever went wrong (404, 405, 413, 500 included).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nemotron_eval.config.validators import integer
from nemotron_eval.deploy.local import Local
from nemotron_eval.deploy.server.protocol import (  # the CPU server's request checks and bounds (no torch)
    DEFAULT_MAX_REQUEST_MB, DEFAULT_MAX_TOKENS, MAX_TOP_LOGPROBS, BadRequest, int_field, parse_body, prompt_items,
    too_large,
)
from nemotron_eval.deploy.types import DeploymentPlan, Runtime
from nemotron_eval.deploy.stats import ServerStats, StatsWriter
from nemotron_eval.core.errors import UserError
from nemotron_eval.core.io import write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from nemotron_eval.data.tasks import Task

log = logging.getLogger("nemotron_eval.deploy.stub")

EOS_ID = 256
EOS = "<|endoftext|>"
WINDOW = 16  # tokens of context a log-prob depends on
ALPHABET = b" etaoinshrdlucmfwypvbgkqjxz0123456789.,\nABCDE"  # what the stub "prefers" and generates
CONTEXT_LENGTH = 1_000_000  # the stub checkpoint's max_position_embeddings: lm-eval never truncates
CLIENT = re.compile(r"/c/([A-Za-z0-9._-]{1,64})(/.*)")


# --------------------------------------------------------------------------------------------- the "model"


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte-to-character table (the ByteLevel pre-tokenizer's): every byte as one printable character."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = dict(zip(keep, map(chr, keep))), 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


BYTE_CHARS = _byte_chars()


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _context(ids: Sequence[int], i: int) -> bytes:
    return b"".join(t.to_bytes(2, "big") for t in ids[max(0, i - WINDOW):i])


def greedy(ids: Sequence[int], i: int) -> int:
    """The token the stub "prefers" at position i (after ids[:i])."""
    return ALPHABET[_hash(b"g" + _context(ids, i)) % len(ALPHABET)]


def logprob(ids: Sequence[int], i: int, token: int) -> float:
    """The log-prob of `token` at position i: -0.01 for the greedy one, else in [-9.5, -0.5)."""
    if token == greedy(ids, i):
        return -0.01
    return -0.5 - 9.0 * (_hash(b"t" + _context(ids, i) + token.to_bytes(2, "big")) % 10_000) / 10_000


def top(ids: Sequence[int], i: int, k: int, token: int) -> dict[int, float]:
    """The greedy token and the next k-1 candidates of position i, plus `token` when it is not among them."""
    g = greedy(ids, i)
    found = {g: logprob(ids, i, g)}
    step = 1
    while len(found) < k:
        candidate = (g + 37 * step) % 256
        found.setdefault(candidate, logprob(ids, i, candidate))
        step += 1
    found.setdefault(token, logprob(ids, i, token))
    return found


MAX_REQUEST_BYTES = DEFAULT_MAX_REQUEST_MB * 2**20  # the CPU server's default bound


def token_text(token: int) -> str:
    return EOS if token == EOS_ID else BYTE_CHARS[token]


def prompts_of(prompt: Any) -> list[list[int]]:
    """`prompt` (protocol.prompt_items) as the stub's token ids: a string's UTF-8 bytes, ids 0..256."""
    items = prompt_items(prompt)
    out = []
    for item in items:
        if isinstance(item, str) and item:
            out.append(list(item.encode()))
        elif isinstance(item, list) and all(0 <= t <= EOS_ID for t in item):
            out.append(list(item))
        else:
            raise BadRequest("'prompt' must hold non-empty strings or token ids between 0 and 256")
    return out


def complete(body: Any) -> list[dict[str, Any]]:
    """The `choices` of a completion request."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if body.get("stream"):
        raise BadRequest("'stream' is not supported by this server")
    max_tokens = int_field(body, "max_tokens", DEFAULT_MAX_TOKENS, 0)
    k = int_field(body, "logprobs", None, 0, MAX_TOP_LOGPROBS)
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise BadRequest(f"'stop' must be a string or a list of strings, got {stop!r}")
    echo = bool(body.get("echo", False))
    choices = []
    for index, ids in enumerate(prompts_of(body.get("prompt"))):
        n_prompt, seq = len(ids), list(ids)
        for _ in range(max_tokens or 0):
            seq.append(greedy(seq, len(seq)))
        generated = bytes(seq[n_prompt:]).decode("utf-8", errors="replace")
        cut = min((generated.find(s) for s in stops if s and s in generated), default=-1)
        reason = "length"
        if cut >= 0:
            generated, reason = generated[:cut], "stop"
            seq = seq[:n_prompt] + list(generated.encode())
        first = 0 if echo else n_prompt
        prompt_text = bytes(ids).decode("utf-8", errors="replace") if echo else ""
        logprobs = None
        if k is not None:
            positions = range(first, len(seq))
            logprobs = {
                "tokens": [token_text(seq[i]) for i in positions],
                "token_logprobs": [None if i == 0 else logprob(seq, i, seq[i]) for i in positions],
                "top_logprobs": [None if i == 0 else {token_text(t): v for t, v in sorted(
                    top(seq, i, max(k, 1), seq[i]).items(), key=lambda kv: -kv[1])} for i in positions],
                "text_offset": [i - first for i in positions],  # in bytes of the returned text
            }
        choices.append({"index": index, "text": prompt_text + generated, "logprobs": logprobs,
                        "finish_reason": reason, "_prompt_tokens": n_prompt, "_generated": len(seq) - n_prompt})
    return choices


# --------------------------------------------------------------------------------------------- the checkpoint


def write_checkpoint(folder: Path) -> Path:
    """A stub checkpoint in `folder`: config.json (its context length) and the byte-level tokenizer the stub's
    tokens follow (tokenizer.json, tokenizer_config.json). No weights: the stub needs none."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {BYTE_CHARS[b]: b for b in range(256)}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": EOS_ID, "content": EOS, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True}],
        "normalizer": None, "pre_tokenizer": byte_level, "post_processor": None, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }
    write_text_atomic(folder / "tokenizer.json", json.dumps(tokenizer, ensure_ascii=False) + "\n")
    write_json_atomic(folder / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "bos_token": EOS,
        "model_max_length": CONTEXT_LENGTH})
    write_json_atomic(folder / "config.json", {"architectures": ["NemotronEvalStub"], "vocab_size": EOS_ID + 1,
                                                "max_position_embeddings": CONTEXT_LENGTH})
    return folder


# --------------------------------------------------------------------------------------------- the server


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  # no access log
        pass

    def _send(self, status: int, data: Any) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self._send(status, {"error": {"message": message, "type": kind, "param": None, "code": status}})

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (a bad request line, an unsupported method) as JSON too."""
        self.close_connection = True
        request = " ".join(x for x in (self.command, getattr(self, "path", None)) if x)  # unset on a bad request line
        self._error(405 if code == 501 else code, f"{request or 'the request'}: {message or explain or code}")

    def _route(self) -> tuple[str, str]:
        path = self.path.split("?", 1)[0]
        found = CLIENT.fullmatch(path)
        return (found.group(1), found.group(2)) if found else ("default", path)

    def do_GET(self) -> None:  # noqa: N802
        client, path = self._route()
        s = self.server
        if path in ("/health", "/v1/health"):
            self._send(200, {"status": "ok", "model": s.model_id, "stub": True})
        elif path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": s.model_id, "object": "model", "created": s.created,
                                                         "owned_by": "nemotron-eval-stub", "max_model_len": CONTEXT_LENGTH}]})
        elif path == "/stats" and client == "default":
            self._send(200, s.stats.snapshot(stub=True))
        else:
            self._error(404, f"no GET {self.path} here: /health, /v1/models, /stats")

    def do_POST(self) -> None:  # noqa: N802
        client, path = self._route()
        declared = self.headers.get("Content-Length") or "0"
        if not declared.isdigit():
            self.close_connection = True
            self._error(400, f"Content-Length {declared!r} is not a number of bytes")
            return
        if int(declared) > MAX_REQUEST_BYTES:
            self.close_connection = True  # the body is not read
            self._error(413, too_large(MAX_REQUEST_BYTES))
            return
        raw = self.rfile.read(int(declared))
        if path != "/v1/completions":
            self._error(404, f"no POST {self.path} here: /v1/completions or /c/<client>/v1/completions")
            return
        if self.server.latency_s:
            time.sleep(self.server.latency_s)  # this request's thread only: the others go on
        started = time.monotonic()
        try:
            choices = complete(parse_body(raw or b"null"))
        except BadRequest as e:
            self._error(400, str(e))
            return
        except Exception as e:  # a bug: the client gets JSON, the log the traceback
            log.exception("completion request failed")
            self._error(500, f"internal server error: {type(e).__name__}", "server_error")
            return
        stats = self.server.stats
        prompt_tokens = sum(c.pop("_prompt_tokens") for c in choices)
        generated = sum(c.pop("_generated") for c in choices)
        stats.batch(busy_s=time.monotonic() - started, passes=1, padded_tokens=prompt_tokens, generated_tokens=generated,
                    jobs=[(client, prompt_tokens, prompt_tokens)])
        stats.answered(client, len(choices))
        self._send(200, {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                         "model": self.server.model_id, "choices": choices,
                         "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": generated,
                                   "total_tokens": prompt_tokens + generated}})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    model_id: str
    created: int
    stats: ServerStats
    latency_s: float = 0.0


def endpoint_info(host: str, port: int, model_id: str, deployment_id: str | None, checkpoint: Path) -> dict[str, Any]:
    url = f"http://{host}:{port}"
    return {
        "url": url, "completions_url": f"{url}/v1/completions",
        "client_completions_url": f"{url}/c/{{client}}/v1/completions", "stats_url": f"{url}/stats",
        "health_url": f"{url}/health", "port": port, "pid": os.getpid(), "model_id": model_id,
        "deployment_id": deployment_id or f"stub-{uuid.uuid4().hex[:12]}", "checkpoint": str(checkpoint.resolve()),
        "dtype": "stub", "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m nemotron_eval.deploy.stub", description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", type=Path, help="the checkpoint folder (recorded; its tokenizer is the harness's)")
    what.add_argument("--make-checkpoint", type=Path, metavar="DIR", help="write a stub checkpoint to DIR and exit")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 (default): a free port")
    parser.add_argument("--served-model-name", default="stub")
    parser.add_argument("--endpoint-file", type=Path, help="JSON written once the server is listening")
    parser.add_argument("--listening-file", type=Path,
                        help="JSON written (state: loading) once the port is bound (the local server's contract)")
    parser.add_argument("--deployment-id")
    parser.add_argument("--stats-file", type=Path, help="JSON statistics, written while serving and at shutdown")
    parser.add_argument("--latency-ms", type=int, default=0, metavar="MS",
                        help="each completion request takes at least MS milliseconds (default 0)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.make_checkpoint:
        print(write_checkpoint(args.make_checkpoint))
        return 0
    if args.latency_ms < 0:
        print(f"error: --latency-ms {args.latency_ms}: valid: a whole number of milliseconds >= 0", file=sys.stderr)
        return 2
    if not args.checkpoint.is_dir():
        print(f"error: --checkpoint {args.checkpoint}: not a folder", file=sys.stderr)
        return 2
    try:
        httpd = _Server((args.host, args.port), _Handler)
    except OSError as e:
        print(f"error: port {args.port} on {args.host} cannot be bound ({e.strerror}): pick another --port, or "
              "--port 0 for a free one", file=sys.stderr)
        return 2
    httpd.model_id, httpd.created, httpd.stats = args.served_model_name, int(time.time()), ServerStats(model_load_s=0.0)
    httpd.latency_s = args.latency_ms / 1000
    writer = StatsWriter(args.stats_file, lambda: httpd.stats.snapshot(stub=True)) if args.stats_file else None
    stopped: list[int] = []

    def stop(signum: int, _frame: Any) -> None:
        stopped.append(signum)
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    port = httpd.server_address[1]
    httpd.stats.ready()
    if writer is not None:
        writer.start()
    info = endpoint_info(args.host, port, args.served_model_name, args.deployment_id, args.checkpoint)
    if args.listening_file:
        write_json_atomic(args.listening_file, {**info, "state": "loading"})
    if args.endpoint_file:
        write_json_atomic(args.endpoint_file, info)
    log.info("stub serving %s at %s", args.served_model_name, info["completions_url"])
    httpd.serve_forever(poll_interval=0.2)
    httpd.server_close()
    if writer is not None:
        writer.stop()
    log.info("stopped%s", f" by signal {stopped[0]}" if stopped else "")
    return 0


# --------------------------------------------------------------------------------------------- the type


class Stub(Local):
    """The `stub` deployment type (`configs/deployment/stub.yaml`): a process on this host with the local
    server's command-line contract (`--endpoint-file`, `--listening-file`, `--deployment-id`, `--stats-file`, added
    by the serve step), so it plans, starts, waits and stops as `local` does. Its own: a short readiness timeout,
    every task's harness at once (the stub costs nothing), a checkpoint without weights (config and tokenizer are
    enough), and `deployment.latency_ms` (each request's time, passed as `--latency-ms`: how it is served, never a
    score)."""

    readiness_default_s = 30
    rules = (*Local.rules, ("deployment.latency_ms", integer(0)))
    keys = (*Local.keys, "latency_ms")
    not_scoring = (*Local.not_scoring, "latency_ms")

    def check_task(self, task: Task, checkpoint: Path | None) -> None:
        if task.endpoint_type != "completions":
            raise UserError(f"task {task.short!r} needs a {task.endpoint_type} endpoint; the stub deployment serves "
                            "/v1/completions only")

    def tasks_at_once(self, cores: int) -> int | None:
        return None

    def harnesses_starting_at_once(self, cores: int) -> int | None:
        return None

    def plan(self, eval_cfg: Mapping[str, Any], runtime: Runtime) -> DeploymentPlan:
        plan = super().plan(eval_cfg, runtime)
        latency = (eval_cfg.get("deployment") or {}).get("latency_ms") or 0
        return replace(plan, argv=[*plan.argv, "--latency-ms", str(latency)]) if latency else plan


if __name__ == "__main__":
    sys.exit(main())
