"""The HTTP routes: completions (per client), models, health and statistics, on FastAPI; fastapi is imported by
`build_app`."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nemotron_eval.deploy.server.jobs import DEFAULT_CLIENT, Job, Result
from nemotron_eval.deploy.server.protocol import BadRequest, choice, parse_request

if TYPE_CHECKING:
    from fastapi import FastAPI

    from nemotron_eval.deploy.server.engine import Engine

CLIENT_TAG = re.compile(r"[A-Za-z0-9._-]{1,64}")


def build_app(engine: Engine, model_id: str) -> FastAPI:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI(title="nemotron-eval CPU server")
    created = int(time.time())

    def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}}, status)

    async def completions(request: Request) -> JSONResponse:
        client = request.path_params.get("client", DEFAULT_CLIENT)
        if not CLIENT_TAG.fullmatch(client):
            return error(400, f"client tag {client!r} in the URL path /c/<client>/v1/completions must be 1 to 64 "
                              "characters of A-Z, a-z, 0-9, '.', '_' or '-' (e.g. a task name)")
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
                seed=params["seed"], stop=params["stop"], done=_resolver(loop, future), client=client,
            ))
        try:
            results = await asyncio.gather(*futures)
        except Exception as exc:
            return error(500, f"the model failed on this request: {exc}", "server_error")
        prompt_tokens = sum(len(p.ids) for p in prompts)
        completion_tokens = sum(len(r.gen_ids) for r in results)
        engine.stats.answered(client, len(prompts))
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
