"""Which pending prompts the model runs next: fair across clients, similar lengths together, nothing starves.

Why: several evaluation tasks share one deployment. A task that floods the server with long prompts (ARC's
25-shot contexts, ~1,600 tokens) must not make another task's short prompts (OpenBookQA, ~20 tokens) wait until it
is done: on a CPU a batch of long prompts takes tens of seconds.

Each client (a task name from the URL, "default" otherwise) has its own first-in-first-out queue. Every forward
pass starts from one *seed* prompt: the oldest prompt of the next client with work, in round-robin order after the
client served last. The batch is then filled from every client's queue with prompts of the same kind (scoring
only, or generating) and a similar number of tokens left to compute, closest first, within the batch's limits: at
most `max_batch_size` rows, `max_batch_tokens` padded tokens, and padding of at most half the real tokens (small
batches may pad up to 256 tokens: tiny products are slow anyway).

Nothing starves: a client's oldest prompt seeds a batch within one round of the clients, and every prompt becomes
its client's oldest. A prompt waits at most (prompts ahead of it in its own queue + 1) x (active clients) batches.
Aging by waiting time would undo this: under a flood the flooding client's prompts are always the oldest (they
came first), so they would seed every batch again.

The token limit also bounds how long a prompt that arrives while a batch runs waits for it: the engine's
default, 2,048, is about 6 s on 2 cores, and prompt throughput on a CPU is flat from about 800 tokens a pass
(bench/server_throughput.py --max-batch-tokens 2048,16384 shows both side by side). A client that sends one
request at a time has nothing queued between its requests, so a bigger limit "while others wait" would not help it.

Prompts that share a prefix not yet in the prefix cache (the choices of one multiple-choice item arriving
together) are not put in the same batch: the engine's `conflicts` callback says so, and the second prompt runs in
a later batch, reusing what the first computed.

Generating prompts leave the scheduler after their prompt's pass and decode in the engine, step by step alongside
every other generation (deploy/server/decoding.py); the engine says how many more rows it can decode
(`max_generating`), and generating prompts beyond that wait here while scoring prompts go on. A prompt whose client
went away (`cancelled`) is dropped (`drop_cancelled`).

Nothing here imports torch; the engine gives each prompt's cost (`Job.new_tokens`) before planning.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Protocol


class Schedulable(Protocol):
    client: str
    arrival: float  # time.monotonic() when it was submitted
    new_tokens: int  # tokens the model must run for it (after the prefix cache)
    cancelled: bool  # nobody waits for its answer any more

    @property
    def generating(self) -> bool: ...


class FairScheduler:
    """Per-client queues and the choice of the next batch (see the module docstring)."""

    def __init__(self, max_batch_size: int, max_batch_tokens: int) -> None:
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.queues: dict[str, deque[Schedulable]] = {}  # in the order clients first came: the round-robin order
        self._last: str | None = None  # the client whose prompt seeded the last batch

    def add(self, job: Schedulable) -> None:
        self.queues.setdefault(job.client, deque()).append(job)

    def __len__(self) -> int:
        return sum(len(q) for q in list(self.queues.values()))  # list(): read from other threads too

    def pending(self) -> Iterator[Schedulable]:
        for queue in self.queues.values():
            yield from queue

    def drop_cancelled(self) -> list[Schedulable]:
        """Take every cancelled prompt out of the queues; returns them."""
        dropped: list[Schedulable] = []
        for client, queue in self.queues.items():
            if any(j.cancelled for j in queue):
                dropped += [j for j in queue if j.cancelled]
                self.queues[client] = deque(j for j in queue if not j.cancelled)
        return dropped

    def next_batch(self, conflicts: Callable[[Schedulable, list[Schedulable]], bool] = lambda job, batch: False,
                   max_generating: int | None = None) -> list[Schedulable]:
        """Take the next batch out of the queues (empty when nothing can run). `conflicts(job, batch)`: the job
        must not join this batch (it shares an uncached prefix with a prompt already in it). `max_generating`:
        how many generating prompts may start now (None: no limit); the others wait, and a client with only
        those waiting is passed over."""
        def runnable(job: Schedulable) -> bool:
            return not job.generating or max_generating is None or max_generating > 0

        clients = list(self.queues)
        start = clients.index(self._last) + 1 if self._last in self.queues else 0
        seed = next((j for c in clients[start:] + clients[:start] for j in self.queues[c] if runnable(j)), None)
        if seed is None:
            return []
        self._last = seed.client
        size = self.max_batch_size if not seed.generating or max_generating is None else min(
            self.max_batch_size, max_generating)

        batch = [seed]
        width, real = seed.new_tokens, seed.new_tokens
        candidates = sorted(
            (j for j in self.pending() if j is not seed and j.generating == seed.generating),
            key=lambda j: (abs(j.new_tokens - seed.new_tokens), j.arrival),
        )
        for job in candidates:
            if len(batch) >= size:
                break
            wider = max(width, job.new_tokens)
            padded = wider * (len(batch) + 1)
            if padded > self.max_batch_tokens or padded - real - job.new_tokens > max((real + job.new_tokens) // 2, 256):
                continue
            if conflicts(job, batch):
                continue
            batch.append(job)
            width, real = wider, real + job.new_tokens
        for job in batch:
            self.queues[job.client].remove(job)
        return batch
