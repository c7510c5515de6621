"""A recorded evaluation request mix: load it, measure its shared-prefix floor, replay it against a server.

Why: the prefix cache and the fair scheduler are judged on what the harness really sends. The fixtures under
tests/fixtures/prompts (written by its extract.py from a real run) hold, per task, a few items with every request
of each item (all answer choices); `load_requests` turns them back into request bodies.

`trie_floor` is what an exact prefix cache must compute at least: the number of distinct token prefixes over all
prompts (the nodes of a token trie), tokenized as the server tokenizes them.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "prompts"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class MixRequest:
    """One request of the recorded mix, with the task and item it belongs to."""

    task: str
    doc_id: int
    choice: int
    body: dict[str, Any]  # the JSON body as the harness sends it, without "model"

    @property
    def prompt(self) -> str:
        return str(self.body["prompt"])

    @property
    def scoring(self) -> bool:
        """A log-likelihood request (echo + logprobs), not a generation."""
        return bool(self.body.get("echo"))


def load_requests(folder: Path = FIXTURES, tasks: Iterable[str] | None = None) -> list[MixRequest]:
    """Every request of the fixture files `<task>.jsonl` in `folder` (all tasks, or `tasks`), in file order."""
    wanted = set(tasks) if tasks is not None else None
    out = []
    for path in sorted(Path(folder).glob("*.jsonl")):
        if wanted is not None and path.stem not in wanted:
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            item = json.loads(line)
            for i, suffix in enumerate(item["suffixes"]):
                out.append(MixRequest(item["task"], int(item["doc_id"]), i,
                                   {**item["body"], "prompt": item["prefix"] + suffix}))
    return out


def trie_floor(token_lists: Iterable[Sequence[int]]) -> int:
    """Distinct token prefixes over all prompts: the tokens an exact prefix cache must compute at least."""
    root: dict[int, Any] = {}
    nodes = 0
    for ids in token_lists:
        node = root
        for token in ids:
            child = node.get(token)
            if child is None:
                child = node[token] = {}
                nodes += 1
            node = child
    return nodes


def post(url: str, body: dict[str, Any], timeout_s: float = 3600) -> dict[str, Any]:
    """POST a JSON body, return the JSON answer (never through a proxy)."""
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with _NO_PROXY.open(request, timeout=timeout_s) as response:
        return dict(json.load(response))


def get(url: str, timeout_s: float = 60) -> dict[str, Any]:
    with _NO_PROXY.open(url, timeout=timeout_s) as response:
        return dict(json.load(response))


def send(
    base_url: str, request: MixRequest, *, tagged: bool = True, model: str = "m"
) -> tuple[dict[str, Any], float]:
    """Send one request (to /c/<task>/v1/completions when `tagged`); the answer and when it came (monotonic)."""
    path = f"/c/{request.task}/v1/completions" if tagged else "/v1/completions"
    answer = post(base_url.rstrip("/") + path, {"model": model, **request.body})
    return answer, time.monotonic()
