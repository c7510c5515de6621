"""The server's start-up: arguments, the user's mistakes caught before torch loads, the listening socket, the
endpoint file once it serves, the statistics file, and an orderly stop on SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nemotron_eval.deploy.server as package
from nemotron_eval.deploy.server.app import build_app
from nemotron_eval.deploy.server.engine import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_PREFIX_CACHE_MB, Engine
from nemotron_eval.deploy.server.protocol import DEFAULT_MAX_REQUEST_MB
from nemotron_eval.deploy.stats import StatsWriter
from nemotron_eval.core.errors import UserError
from nemotron_eval.core.io import write_json_atomic
from nemotron_eval.core.machine import available_cores
from nemotron_eval.artifacts.model import DTYPES, check_checkpoint

log = logging.getLogger(__package__)
BACKLOG = 2048  # uvicorn's own


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
        "client_completions_url": f"{url}/c/{{client}}/v1/completions",  # {client}: the caller's tag, e.g. a task
        "stats_url": f"{url}/stats",
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
    parser = argparse.ArgumentParser(prog="python -m nemotron_eval.deploy.server",
                                     description=package.__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="Hugging Face checkpoint folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 (default): a free port")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="float32 (default) is exact")
    parser.add_argument("--served-model-name", help="model id clients use (default: the checkpoint folder's name)")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-batch-tokens", type=int, default=DEFAULT_MAX_BATCH_TOKENS,
                        help=f"padded tokens per forward pass (default {DEFAULT_MAX_BATCH_TOKENS})")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long to wait for a batch to fill")
    parser.add_argument("--endpoint-file", type=Path, help="JSON written once the server answers")
    parser.add_argument("--listening-file", type=Path,
                        help="JSON written (state: loading) once the port listens, before the model loads: a "
                             "request sent from then on is answered once it has loaded")
    parser.add_argument("--deployment-id")
    parser.add_argument("--prefix-cache-mb", type=int, default=DEFAULT_PREFIX_CACHE_MB,
                        help=f"memory for the exact prefix cache, MiB (default {DEFAULT_PREFIX_CACHE_MB}; 0: off)")
    parser.add_argument("--max-request-mb", type=float, default=DEFAULT_MAX_REQUEST_MB,
                        help=f"the largest request body, MiB (default {DEFAULT_MAX_REQUEST_MB}; larger: HTTP 413)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch's compute threads (default 0: every core this process may run on, whatever "
                             "OMP_NUM_THREADS says, yours too: a Snakemake job sets it to the job's `threads`, 1 for "
                             "a service)")
    parser.add_argument("--stats-file", type=Path,
                        help="JSON statistics, written atomically every ~10 s while serving and at shutdown")
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error(f"--threads must be 0 (every core this process may run on) or a positive number, got {args.threads}")
    if args.max_batch_size < 1 or args.max_batch_tokens < 1:
        parser.error("--max-batch-size and --max-batch-tokens must be at least 1")
    if not args.max_request_mb > 0:
        parser.error(f"--max-request-mb must be a positive number of MiB, got {args.max_request_mb}")
    if args.prefix_cache_mb < 0:
        parser.error(f"--prefix-cache-mb must be 0 (off) or a positive number of MiB, got {args.prefix_cache_mb}")
    return args


def check_stats_file(path: Path) -> None:
    """UserError unless `path` can be written: its folder exists and is writable, and it is not a folder."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserError(f"--stats-file {path} is a folder: give a file path")
    if not folder.is_dir():
        raise UserError(f"--stats-file {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"--stats-file {path}: the folder {folder} is not writable")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        check_checkpoint(args.checkpoint)
        if args.stats_file:
            check_stats_file(args.stats_file)
        sock = bind(args.host, args.port)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    port = sock.getsockname()[1]
    model_id = args.served_model_name or Path(args.checkpoint).resolve().name
    if args.listening_file:
        # connections wait in the kernel's queue until the event loop accepts them, once the model is loaded
        sock.listen(BACKLOG)
        write_json_atomic(args.listening_file, {**endpoint_info(args, port, model_id), "state": "loading"})
    started = time.monotonic()
    try:
        engine = Engine(args.checkpoint, dtype=args.dtype, max_batch_size=args.max_batch_size,
                        max_batch_tokens=args.max_batch_tokens, batch_wait_s=args.batch_wait_ms / 1000,
                        prefix_cache_mb=args.prefix_cache_mb, threads=args.threads or available_cores())
    except Exception as exc:
        log.debug("loading failed", exc_info=True)
        print(f"error: checkpoint {args.checkpoint} could not be loaded: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    log.info("loaded %s (%s, context %s, %d threads) in %.1fs; prefix cache %s (%d bytes of KV a token)",
             args.checkpoint, args.dtype, engine.context_length, engine.threads, time.monotonic() - started,
             f"{args.prefix_cache_mb} MiB" if engine.cache is not None else "off", engine.kv_bytes_per_token)
    engine.start()
    writer = StatsWriter(args.stats_file, engine.snapshot) if args.stats_file else None

    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                engine.stats.ready()
                if writer is not None:
                    writer.start()
                info = endpoint_info(args, port, model_id)
                if args.endpoint_file:
                    write_json_atomic(args.endpoint_file, info)
                log.info("serving %s at %s", model_id, info["completions_url"])

    # uvicorn takes SIGTERM/SIGINT while serving and, once shut down, raises the signal again with the handler
    # that was installed before it: this one, so that the statistics are written and the worker stopped first.
    stopped_by: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopped_by.append(signum))
    app = build_app(engine, model_id, max_request_bytes=int(args.max_request_mb * 2**20))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=2)
    asyncio.run(Server(config).serve(sockets=[sock]))
    if writer is not None:
        writer.stop()
    engine.stop(timeout_s=5)
    log.info("stopped%s", f" by signal {stopped_by[0]}" if stopped_by else "")
    return 0
