"""What the server did, in total and per client: served at `GET /stats` and written to `--stats-file`.

Why: the evaluation's cost is the model's compute. These numbers say how much of what was asked the model really
ran (`computed_tokens` against `prompt_tokens`; the rest came from the prefix cache), how busy the model worker
was (`busy_s` against `wall_s`), and when each client (task) got its first and last answer.

Definitions (all times in seconds):
* `requests`: completion requests answered (HTTP 200); `prompts`: the prompts in them (a request may hold a list).
* `prompt_tokens`: prompt tokens as requested; `computed_tokens`: prompt tokens run through the model;
  `cache_hit_tokens`: prompt tokens whose states came from the prefix cache (the two add up to `prompt_tokens`).
  `padded_tokens`: what the forward passes really cost, padding included; `generated_tokens`: tokens generated.
* `busy_s`: time the model worker spent on batches. A client's `busy_s` is its share of each batch it was in,
  in proportion to the tokens computed for it.
* `wall_s`: since the model was loaded; `model_load_s`: how long loading took; `loads`: always 1 (the server
  loads its model once). `ready_s`: from loaded to ready (listening); `ready_at`: when it was ready (UTC, ISO
  8601), to place its figures on another clock. `first_answer_s` / `last_answer_s`: from the server being ready
  to a client's first / latest answer.
* `idle`: where the time between ready and now went while the model worker had no batch: `before_first_s`
  (ready to the first batch: the clients starting), `stretches` ([seconds after ready, length] of each later
  idle stretch of IDLE_LISTED_S or more: a client starting while no other had work), `short_s` (the shorter
  ones: requests' turnarounds) and `since_last_s` (since the last batch ended: at the end, the last client's
  end). `ready_s` + `busy_s` + these add up to `wall_s`.

The model worker and the HTTP handlers update these from different threads: one lock guards them.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from nemotron_eval.core.io import write_json_atomic

IDLE_LISTED_S = 1.0  # idle stretches at least this long are listed one by one (`idle.stretches`)


@dataclass
class ClientStats:
    requests: int = 0
    prompts: int = 0
    prompt_tokens: int = 0
    computed_tokens: int = 0
    cache_hit_tokens: int = 0
    first_answer_s: float | None = None
    last_answer_s: float | None = None
    busy_s: float = 0.0


class ServerStats:
    """Counters of one server process (see the module docstring)."""

    def __init__(self, model_load_s: float) -> None:
        self._lock = threading.Lock()
        self.loaded_at = time.monotonic()
        self.ready_at: float | None = None
        self.model_load_s = model_load_s
        self.totals = {"requests": 0, "prompts": 0, "prompt_tokens": 0, "computed_tokens": 0,
                       "cache_hit_tokens": 0, "padded_tokens": 0, "generated_tokens": 0, "batches": 0,
                       "forward_passes": 0}
        self.busy_s = 0.0
        self.clients: dict[str, ClientStats] = {}
        self.ready_unix: float | None = None
        self._last_end: float | None = None  # when the latest batch ended (monotonic)
        self.idle_before_first_s: float | None = None
        self.idle_stretches: list[tuple[float, float]] = []
        self.idle_short_s = 0.0

    def ready(self) -> None:
        """The server listens: answer times count from now."""
        with self._lock:
            if self.ready_at is None:
                self.ready_at, self.ready_unix = time.monotonic(), time.time()

    def batch(self, *, busy_s: float, passes: int, padded_tokens: int, generated_tokens: int,
              jobs: list[tuple[str, int, int]]) -> None:
        """One batch done: `jobs` holds (client, prompt tokens, computed tokens) for each of its prompts (a
        decoding step: 0, 0 for each row, whose busy time is then shared equally)."""
        weights = [c for _, _, c in jobs] if any(c for _, _, c in jobs) else [1] * len(jobs)
        computed_total = sum(weights) or 1
        now = time.monotonic()
        with self._lock:
            if self.ready_at is not None:  # nobody can ask before: nothing to account
                self._idle_until(now - busy_s)
                self._last_end = now if self._last_end is None else max(self._last_end, now)  # the stub's overlap
            self.busy_s += busy_s
            t = self.totals
            t["batches"] += 1
            t["forward_passes"] += passes
            t["padded_tokens"] += padded_tokens
            t["generated_tokens"] += generated_tokens
            for (client, prompt, computed), weight in zip(jobs, weights):
                c = self._client(client)
                c.prompt_tokens += prompt
                c.computed_tokens += computed
                c.cache_hit_tokens += prompt - computed
                c.busy_s += busy_s * weight / computed_total
                t["prompt_tokens"] += prompt
                t["computed_tokens"] += computed
                t["cache_hit_tokens"] += prompt - computed

    def _idle_until(self, start: float) -> None:
        """Account the idle time between the latest batch's end (or being ready) and a batch starting at `start`."""
        assert self.ready_at is not None
        if self._last_end is None:
            self.idle_before_first_s = max(start - self.ready_at, 0.0)
            return
        gap = start - self._last_end
        if gap >= IDLE_LISTED_S:
            self.idle_stretches.append((round(self._last_end - self.ready_at, 3), round(gap, 3)))
        elif gap > 0:
            self.idle_short_s += gap

    def answered(self, client: str, prompts: int) -> None:
        """A completion request was answered."""
        now = time.monotonic()
        with self._lock:
            c = self._client(client)
            since_ready = now - (self.ready_at if self.ready_at is not None else self.loaded_at)
            c.requests += 1
            c.prompts += prompts
            if c.first_answer_s is None:
                c.first_answer_s = round(since_ready, 3)
            c.last_answer_s = round(since_ready, 3)
            self.totals["requests"] += 1
            self.totals["prompts"] += prompts

    def snapshot(self, **extra: Any) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            clients = {name: {**asdict(c), "busy_s": round(c.busy_s, 3)} for name, c in sorted(self.clients.items())}
            waiting = now - self.ready_at if self.ready_at is not None else 0.0  # no batch yet: since ready
            first = self.idle_before_first_s if self.idle_before_first_s is not None else waiting
            return {
                **self.totals,
                "busy_s": round(self.busy_s, 3),
                "wall_s": round(now - self.loaded_at, 3),
                "model_load_s": round(self.model_load_s, 3),
                "ready_s": round(self.ready_at - self.loaded_at, 3) if self.ready_at is not None else None,
                "ready_at": (dt.datetime.fromtimestamp(self.ready_unix, dt.timezone.utc).isoformat(timespec="milliseconds")
                             if self.ready_unix is not None else None),
                "idle": {
                    "before_first_s": round(first, 3),
                    "stretches": [list(s) for s in self.idle_stretches],
                    "short_s": round(self.idle_short_s, 3),
                    "since_last_s": round(now - self._last_end, 3) if self._last_end is not None else 0.0,
                },
                "loads": 1,
                **extra,
                "clients": clients,
            }

    def _client(self, name: str) -> ClientStats:
        if name not in self.clients:
            self.clients[name] = ClientStats()
        return self.clients[name]


class StatsWriter:
    """Writes `snapshot()` to `path` atomically every `every_s` seconds (when it changed) and once more at `stop`."""

    def __init__(self, path: Path, snapshot: Callable[[], dict[str, Any]], every_s: float = 10.0) -> None:
        self.path, self.snapshot, self.every_s = Path(path), snapshot, every_s
        self._stop = threading.Event()
        self._last: dict[str, Any] | None = None
        self._thread = threading.Thread(target=self._loop, name="stats-writer", daemon=True)

    def start(self) -> None:
        self.write()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.write(force=True)

    def write(self, force: bool = False) -> None:
        data = self.snapshot()
        unchanged = self._last is not None and {**data, "wall_s": 0} == {**self._last, "wall_s": 0}
        if force or not unchanged:
            write_json_atomic(self.path, data)
            self._last = data

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.write()
