"""OpenAI's completion request and response: read the body within its bounds, check and tokenize a request's
prompts and parameters, and turn a prompt's result into an answer choice (text, token log-probs, offsets).

The bounds on what one request may hold (the stub deployment shares them): a body of at most
DEFAULT_MAX_REQUEST_MB MiB (the server's --max-request-mb; HTTP 413 beyond), JSON nested at most MAX_JSON_DEPTH
levels, at most MAX_PROMPTS prompts (HTTP 400 beyond). A request is tokenized and its answer built off the event
loop (app.py), so that its size delays nobody else's."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nemotron_eval.deploy.server.engine import Engine
    from nemotron_eval.deploy.server.jobs import Result

MAX_TOP_LOGPROBS = 20
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
# A 25-shot prompt is about 8 KB and a full 8,192-token context about 40 KB: 8 MiB holds a batch of 200 of those.
DEFAULT_MAX_REQUEST_MB = 8
MAX_JSON_DEPTH = 16  # a completion request needs 3 levels (body, a list of prompts, a prompt's token ids)
MAX_PROMPTS = 4096


class BadRequest(ValueError):
    """A request the server refuses with HTTP 400; the message says what is wrong."""


@dataclass
class Prompt:
    ids: list[int]
    text: str
    offsets: list[int]  # character offset of each token in `text`


def too_large(limit_bytes: int) -> str:
    """The message of HTTP 413."""
    return (f"the request body is larger than this server's limit of {limit_bytes} bytes ({limit_bytes / 2**20:g} "
            "MiB, --max-request-mb): send fewer or shorter prompts per request")


def parse_body(raw: bytes) -> Any:
    """The request body as JSON; BadRequest when it is not JSON or nests deeper than MAX_JSON_DEPTH levels."""
    deep = BadRequest(f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels (a completion request "
                      "needs 3)")
    try:
        body = json.loads(raw)
    except RecursionError:  # deeper than the interpreter's recursion limit
        raise deep from None
    except ValueError:  # not JSON, or not UTF-8
        raise BadRequest("the request body is not valid JSON") from None
    stack = [(body, 1)] if isinstance(body, (list, dict)) else []
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise deep
        children = value.values() if isinstance(value, dict) else value
        stack += [(c, depth + 1) for c in children if isinstance(c, (list, dict))]
    return body


def int_field(body: dict[str, Any], key: str, default: int | None, low: int, high: int | None = None) -> int | None:
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


def _is_ids(x: Any) -> bool:
    return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def prompt_items(prompt: Any) -> list[str | list[int]]:
    """`prompt` as OpenAI allows it (a string, a list of strings, a list of token ids, or a list of those) as a
    list of strings and token-id lists, at most MAX_PROMPTS; the server and the stub check what they can encode."""
    items: list[Any] = [prompt] if isinstance(prompt, str) or _is_ids(prompt) else prompt
    if not isinstance(items, list) or not items or not all(isinstance(i, str) or _is_ids(i) for i in items):
        raise BadRequest("'prompt' must be a string, a list of strings or a list of token ids")
    if len(items) > MAX_PROMPTS:
        raise BadRequest(f"'prompt' holds {len(items)} prompts; at most {MAX_PROMPTS} fit one request")
    return items


def tokenize_prompts(engine: Engine, prompt: Any) -> list[Prompt]:
    """`prompt_items`, the strings tokenized in one call (the tokenizer's threads, without the interpreter's lock)."""
    items = prompt_items(prompt)
    if any(i == "" for i in items):
        raise BadRequest("'prompt' is empty: it must hold at least one token")
    vocab = len(engine.tokenizer)
    if any(not 0 <= t < vocab for i in items if not isinstance(i, str) for t in i):
        raise BadRequest(f"'prompt' holds token ids outside the vocabulary (0..{vocab - 1})")
    texts = iter(_encode(engine, [i for i in items if isinstance(i, str)]))
    prompts = []
    for item in items:
        if isinstance(item, str):
            ids, offsets = next(texts)
            prompts.append(Prompt(ids, item, offsets))
        else:
            pieces = engine.token_strings(item)
            prompts.append(Prompt(list(item), "".join(pieces), _offsets(pieces)))
    for p in prompts:
        if not p.ids:
            raise BadRequest("'prompt' is empty: it must hold at least one token")
    return prompts


def _encode(engine: Engine, texts: list[str]) -> list[tuple[list[int], list[int]]]:
    """Token ids and each token's character offset, for each text."""
    if not texts:
        return []
    try:
        encoded = engine.tokenizer(texts, return_offsets_mapping=True)
        return [(list(ids), [start for start, _ in spans])
                for ids, spans in zip(encoded["input_ids"], encoded["offset_mapping"])]
    except NotImplementedError:  # a slow tokenizer: offsets from the decoded pieces
        return [(list(ids), _offsets(engine.token_strings(ids))) for ids in engine.tokenizer(texts)["input_ids"]]


def _offsets(pieces: list[str]) -> list[int]:
    return list(itertools.accumulate((len(p) for p in pieces[:-1]), initial=0))


def parse_request(engine: Engine, body: Any) -> tuple[list[Prompt], dict[str, Any]]:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if body.get("stream"):
        raise BadRequest("'stream' is not supported by this server")
    if int_field(body, "n", 1, 1) != 1 or int_field(body, "best_of", 1, 1) != 1:
        raise BadRequest("only n=1 and best_of=1 are supported")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise BadRequest(f"'stop' must be a string or a list of strings, got {stop!r}")
    params = {
        "max_tokens": int_field(body, "max_tokens", DEFAULT_MAX_TOKENS, 0),
        "echo": bool(body.get("echo", False)),
        "logprobs": int_field(body, "logprobs", None, 0, MAX_TOP_LOGPROBS),
        "temperature": _float(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _float(body, "top_p", 1.0, 0.0, 1.0),
        "seed": int_field(body, "seed", None, -(2**63), 2**63 - 1),
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
