"""A prompt's work as the model worker sees it (`Job`), and what comes back (`Result`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nemotron_eval.deploy.prefix_cache import Match

DEFAULT_CLIENT = "default"


@dataclass(eq=False)
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
    client: str = DEFAULT_CLIENT
    arrival: float = field(default_factory=time.monotonic)
    # set by the event loop when the request's client went away: the worker drops the job wherever it is
    cancelled: bool = False
    # set before each planning round: the prompt's first `reuse` tokens come from the prefix cache (`match`)
    reuse: int = 0
    match: Match | None = None

    @property
    def new_tokens(self) -> int:
        """Tokens the model must run for this prompt."""
        return len(self.ids) - self.reuse

    @property
    def generating(self) -> bool:
        """Whether it needs decode steps after the prompt's pass (the first new token comes from that pass)."""
        return self.max_tokens > 1


class Cancelled(Exception):
    """What a dropped job's `done` gets: its client went away before the answer."""


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
