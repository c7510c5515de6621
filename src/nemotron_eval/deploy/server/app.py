"""The HTTP routes: completions (per client), models, health and statistics, on FastAPI; fastapi is imported by
`build_app`.

No client can stall another here: a completion request's body is read up to `max_request_bytes` (413 beyond),
parsed, checked and tokenized on a worker thread, and its answer built there too, so that the event loop is
always free to answer /health and other clients; a client that goes away before its answer has its prompts
dropped wherever they are (queued, or decoding). Every error is OpenAI's JSON: {"error": {"message", "type",
"param", "code"}} with the HTTP status as the code, 404, 405 and internal errors included."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nemotron_eval.deploy.server.jobs import DEFAULT_CLIENT, Job, Result
from nemotron_eval.deploy.server.protocol import (
    BadRequest, Prompt, choice, parse_body, parse_request, too_large,
)

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.requests import Request

    from nemotron_eval.deploy.server.engine import Engine

log = logging.getLogger(__package__)

CLIENT_TAG = re.compile(r"[A-Za-z0-9._-]{1,64}")


class TooLarge(Exception):
    """The body is longer than the limit."""


def error(status: int, message: str, kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> Any:
    """OpenAI's error response."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}}, status,
                        headers=headers)


def build_app(engine: Engine, model_id: str, max_request_bytes: int) -> FastAPI:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", kind, exc.headers)

    async def invalid(request: Request, exc: Exception) -> Response:
        return error(422, f"the request is not valid: {exc}")

    async def internal(request: Request, exc: Exception) -> Response:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return error(500, f"internal server error: {type(exc).__name__}", "server_error")

    app = FastAPI(title="nemotron-eval CPU server", docs_url=None, redoc_url=None, openapi_url=None,
                  exception_handlers={HTTPException: http_error, RequestValidationError: invalid, Exception: internal})
    created = int(time.time())

    async def completions(request: Request) -> Response:
        client = request.path_params.get("client", DEFAULT_CLIENT)
        if not CLIENT_TAG.fullmatch(client):
            return error(400, f"client tag {client!r} in the URL path /c/<client>/v1/completions must be 1 to 64 "
                              "characters of A-Z, a-z, 0-9, '.', '_' or '-' (e.g. a task name)")
        try:
            raw = await read_body(request, max_request_bytes)
            prompts, params = await asyncio.to_thread(lambda: parse_request(engine, parse_body(raw)))
        except TooLarge:
            return error(413, too_large(max_request_bytes))
        except ClientDisconnect:
            return error(499, "the client closed the connection while sending its request")
        except BadRequest as exc:
            return error(400, str(exc))
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Result]] = []
        jobs = []
        for p in prompts:
            futures.append(loop.create_future())
            jobs.append(Job(
                ids=p.ids, max_tokens=params["max_tokens"],
                score_prompt=params["echo"] and params["logprobs"] is not None,
                top_logprobs=params["logprobs"], temperature=params["temperature"], top_p=params["top_p"],
                seed=params["seed"], stop=params["stop"], done=_resolver(loop, futures[-1]), client=client,
            ))
        for job in jobs:
            engine.submit(job)
        answers = asyncio.ensure_future(asyncio.gather(*futures))
        gone = asyncio.ensure_future(disconnected(request))
        try:
            await asyncio.wait([answers, gone], return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        failure = answers.exception() if answers.done() else None
        if failure is not None or not answers.done():
            answers.cancel()  # cancelled, not failed: nothing left unretrieved
            for job, future in zip(jobs, futures):  # one prompt failed, or the client went away: drop the rest
                job.cancelled = True
                future.cancel()
            if failure is not None:
                return error(500, f"the model failed on this request: {failure}", "server_error")
            return error(499, "the client closed the connection before its answer")
        results = answers.result()
        engine.stats.answered(client, len(prompts))
        body = await asyncio.to_thread(render, engine, model_id, prompts, results, params)
        return Response(body, media_type="application/json")

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{
            "id": model_id, "object": "model", "created": created, "owned_by": "nemotron-eval",
            "root": str(engine.checkpoint), "max_model_len": engine.context_length,
        }]})

    async def health(request: Request) -> JSONResponse:
        status = 200 if engine.alive else 503
        totals = {k: v for k, v in engine.snapshot().items() if isinstance(v, (int, float))}
        return JSONResponse({"status": "ok" if engine.alive else "model worker stopped", "model": model_id,
                             "dtype": engine.dtype, **totals}, status)

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse(engine.snapshot())

    async def bad_client(request: Request) -> JSONResponse:
        return error(400, f"the URL path {request.url.path!r} has no valid client tag: use /c/<client>/v1/completions "
                          "with 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-' (e.g. a task name)")

    # Plain Starlette routes: the handlers read the request themselves (no FastAPI dependency injection).
    # A client (task) tags its requests through the path: /c/<client>/v1/... (plain /v1/...: "default").
    for prefix in ("", "/c/{client}"):
        app.add_route(f"{prefix}/v1/completions", completions, methods=["POST"])
        app.add_route(f"{prefix}/v1/models", models, methods=["GET"])
        app.add_route(f"{prefix}/health", health, methods=["GET"])
        app.add_route(f"{prefix}/v1/health", health, methods=["GET"])
    app.add_route("/c/{rest:path}", bad_client, methods=["GET", "POST"])
    app.add_route("/stats", stats, methods=["GET"])
    return app


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (TooLarge) as soon as it says or turns out to be longer than `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def disconnected(request: Request) -> None:
    """Returns when the client has gone away (its body has been read: what comes next is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def render(engine: Engine, model_id: str, prompts: list[Prompt], results: list[Result], params: dict[str, Any]
           ) -> bytes:
    """The JSON answer of a completion request."""
    prompt_tokens = sum(len(p.ids) for p in prompts)
    completion_tokens = sum(len(r.gen_ids) for r in results)
    return json.dumps({
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": [choice(engine, i, p, r, params) for i, (p, r) in enumerate(zip(prompts, results))],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }).encode()


def _resolver(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Result]) -> Callable[[Any], None]:
    def settle(value: Any) -> None:
        if future.done():
            return
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)

    def resolve(value: Any) -> None:
        try:
            loop.call_soon_threadsafe(settle, value)
        except RuntimeError:  # the event loop is closed: the server is stopping, nobody waits for this answer
            pass

    return resolve
