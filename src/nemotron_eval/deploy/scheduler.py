"""Which pending prompts the model runs next: fair across clients, similar lengths together, nothing starves.

Why: several evaluation tasks share one deployment. A task that floods the server with long prompts (ARC's
25-shot contexts, ~1,600 tokens) must not make another task's short prompts (OpenBookQA, ~20 tokens) wait until it
is done: on a CPU a batch of long prompts takes tens of seconds.

Each client (a task name from the URL, "default" otherwise) has its own first-in-first-out queue. Every forward
pass starts from one *seed* prompt, taken in turn from the clients that have work (round robin), or, when a prompt
has waited longer than `max_wait_s`, the oldest prompt of all (aging). The batch is then filled from every
client's queue with prompts of the same kind (scoring only, or generating) and a similar number of tokens left to
compute, closest first, within the batch's limits: at most `max_batch_size` rows, `max_batch_tokens` padded tokens,
and padding of at most half the real tokens (small batches may pad up to 256 tokens: tiny products are slow anyway).

While other clients wait, a batch is also held to `fair_batch_tokens` padded tokens, which bounds how long they
wait for it; a client alone on the server gets batches up to `max_batch_tokens`.

Prompts that share a prefix not yet in the prefix cache (the choices of one multiple-choice item arriving
together) are not put in the same batch: the engine's `conflicts` callback says so, and the second prompt runs in
a later batch, reusing what the first computed.

Nothing here imports torch; the engine gives each prompt's cost (`Job.new_tokens`) before planning.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Protocol


class Schedulable(Protocol):
    client: str
    arrival: float  # time.monotonic() when it was submitted
    new_tokens: int  # tokens the model must run for it (after the prefix cache)

    @property
    def generating(self) -> bool: ...


class FairScheduler:
    """Per-client queues and the choice of the next batch (see the module docstring)."""

    def __init__(self, max_batch_size: int, max_batch_tokens: int, fair_batch_tokens: int | None = None,
                 max_wait_s: float = 60.0) -> None:
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.fair_batch_tokens = min(fair_batch_tokens or max_batch_tokens, max_batch_tokens)
        self.max_wait_s = max_wait_s
        self.queues: dict[str, deque[Schedulable]] = {}
        self._turn: list[str] = []  # clients in round-robin order; the next seed comes from the first with work

    def add(self, job: Schedulable) -> None:
        if job.client not in self.queues:
            self.queues[job.client] = deque()
            self._turn.append(job.client)
        self.queues[job.client].append(job)

    def __len__(self) -> int:
        return sum(len(q) for q in list(self.queues.values()))  # list(): read from other threads too

    def pending(self) -> Iterator[Schedulable]:
        for queue in self.queues.values():
            yield from queue

    def next_batch(self, conflicts: Callable[[Schedulable, list[Schedulable]], bool] = lambda job, batch: False,
                   now: float | None = None) -> list[Schedulable]:
        """Take the next batch out of the queues (empty when nothing is pending)."""
        now = time.monotonic() if now is None else now
        active = [c for c in self._turn if self.queues[c]]
        if not active:
            return []
        oldest = min((q[0] for q in self.queues.values() if q), key=lambda j: j.arrival)
        seed = oldest if now - oldest.arrival > self.max_wait_s else self.queues[active[0]][0]
        # the seed's client goes to the back of the round-robin order
        self._turn.remove(seed.client)
        self._turn.append(seed.client)
        others_waiting = any(c != seed.client for c in active)
        budget = self.fair_batch_tokens if others_waiting else self.max_batch_tokens

        batch = [seed]
        width, real = seed.new_tokens, seed.new_tokens
        candidates = sorted(
            (j for j in self.pending() if j is not seed and j.generating == seed.generating),
            key=lambda j: (abs(j.new_tokens - seed.new_tokens), j.arrival),
        )
        for job in candidates:
            if len(batch) >= self.max_batch_size:
                break
            wider = max(width, job.new_tokens)
            padded = wider * (len(batch) + 1)
            if padded > budget or padded - real - job.new_tokens > max((real + job.new_tokens) // 2, 256):
                continue
            if conflicts(job, batch):
                continue
            batch.append(job)
            width, real = wider, real + job.new_tokens
        for job in batch:
            self.queues[job.client].remove(job)
        return batch
