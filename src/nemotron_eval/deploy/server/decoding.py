"""Generation step by step: every generating prompt past its prompt's pass, whatever request it came from, is a row
of one `Decoding`, and the engine advances all of them by one token between batches of prompts.

Why: decoding a batch to its end before anything else runs let one client's long generation (max_tokens in the
thousands) hold every other client's request for minutes. Now a prompt that arrives waits for at most the batch
of prompts that is running and one decoding step; rows join the decoding as their prompt's pass ends and leave it
as soon as they finish, fail or their client goes away.

The rows' KV states sit in one cache, left-padded to a common width (the attention mask marks the real columns;
positions are explicit, so padding moves nothing). Also here: how a row's next token is picked from its logits
(greedy, or sampled with temperature, top-p and seed) and when it is done; a row whose pick fails fails alone.

torch is imported by the functions that need it (the engine has loaded it by then).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from nemotron_eval.deploy.server.jobs import Job, Result

if TYPE_CHECKING:
    import torch

Layers = list[tuple["torch.Tensor", "torch.Tensor"]]  # per layer: keys and values [rows, kv_heads, width, head_dim]


class Decoding:
    """The rows being decoded: their jobs and results, one KV cache for all of them, its attention mask [rows,
    width]. `new_cache(layers)` makes the model's cache object from per-layer keys and values."""

    def __init__(self, new_cache: Callable[[Layers], Any]) -> None:
        self.new_cache = new_cache
        self.jobs: list[Job] = []
        self.results: list[Result] = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.jobs)

    def layers(self) -> Layers:
        return [(layer.keys, layer.values) for layer in self.cache.layers] if self.cache is not None else []

    def restore(self, layers: Layers) -> None:
        """Put back the keys and values `layers()` gave (a forward pass that failed half-way appended to some)."""
        for layer, (keys, values) in zip(self.cache.layers, layers):
            layer.keys, layer.values = keys, values

    def add(self, jobs: Sequence[Job], results: Sequence[Result], layers: Layers, mask: torch.Tensor,
            rows: Sequence[int] | None = None) -> None:
        """Rows `rows` (default: all) of a pass's cache and mask join the decoding."""
        import torch

        if rows is not None:
            index = torch.tensor(list(rows), dtype=torch.long)
            layers = [(k.index_select(0, index), v.index_select(0, index)) for k, v in layers]
            mask = mask.index_select(0, index)
            jobs, results = [jobs[r] for r in rows], [results[r] for r in rows]
        if self.mask is not None:
            width = max(self.mask.shape[1], mask.shape[1])
            layers = [(torch.cat([_left_pad(a, width), _left_pad(k, width)]),
                       torch.cat([_left_pad(b, width), _left_pad(v, width)]))
                      for (a, b), (k, v) in zip(self.layers(), layers)]
            mask = torch.cat([_left_pad(self.mask, width, dim=1), _left_pad(mask, width, dim=1)])
        self.jobs, self.results = [*self.jobs, *jobs], [*self.results, *results]
        self.cache, self.mask = self.new_cache(layers), mask

    def keep(self, rows: Sequence[int]) -> None:
        """Only rows `rows` go on; key columns no remaining row attends to are cut off the left."""
        import torch

        if len(rows) == len(self.jobs):
            return
        jobs, results, layers, mask = self.jobs, self.results, self.layers(), self.mask
        self.jobs, self.results, self.cache, self.mask = [], [], None, None
        if rows:
            assert mask is not None
            index = torch.tensor(list(rows), dtype=torch.long)
            first = int(mask.index_select(0, index).any(dim=0).nonzero()[0])
            self.add(jobs, results, [(k[:, :, first:], v[:, :, first:]) for k, v in layers], mask[:, first:], rows)

    def take(self, rows: Sequence[int]) -> Decoding:
        """A new decoding of rows `rows` only (this one is left as it is)."""
        part = Decoding(self.new_cache)
        assert self.mask is not None
        part.add(self.jobs, self.results, self.layers(), self.mask, rows)
        return part

    def absorb(self, other: Decoding) -> None:
        """Every row of `other` joins this decoding."""
        if len(other):
            assert other.mask is not None
            self.add(other.jobs, other.results, other.layers(), other.mask)


def _left_pad(t: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    import torch

    return torch.cat([t.new_zeros(shape), t], dim=dim)


# ------------------------------------------------------------------------------------------------ picking tokens


def advance(jobs: Sequence[Job], results: Sequence[Result], logits: torch.Tensor, decode: Callable[[list[int]], str],
            eos_ids: frozenset[int]) -> dict[int, Exception]:
    """Pick each unfinished row's next token from its logits [rows, vocab] and decide whether it is done (`decode`:
    token ids to text, for stop strings; `eos_ids`: the tokens that end a generation). Returns the rows whose pick
    failed (they fail alone; the others go on)."""
    import torch

    logprobs = torch.log_softmax(logits, dim=-1)
    failed: dict[int, Exception] = {}
    for row, (job, result) in enumerate(zip(jobs, results)):
        if result.finished:
            continue
        if len(result.gen_ids) >= job.max_tokens:
            result.finished = True
            continue
        try:
            _advance_row(job, result, logits[row], logprobs[row], decode, eos_ids)
        except Exception as exc:  # this request's own failure: its batch neighbours go on
            failed[row] = exc
    return failed


def _advance_row(job: Job, result: Result, logits: torch.Tensor, logprobs: torch.Tensor,
                 decode: Callable[[list[int]], str], eos_ids: frozenset[int]) -> None:
    token = choose(job, logits, len(result.gen_ids))
    result.gen_ids.append(token)
    result.gen_logprobs.append(float(logprobs[token]))
    if job.top_logprobs is not None:
        values, ids = top(logprobs[None], job.top_logprobs)
        result.gen_top += tops(ids.tolist(), values.tolist(), [token], [float(logprobs[token])])
    result.text = decode([t for t in result.gen_ids if t not in eos_ids])
    cut = min((i for i in (result.text.find(s) for s in job.stop if s) if i >= 0), default=-1)
    if cut >= 0:
        result.text = result.text[:cut]
        result.finish_reason, result.finished = "stop", True
    elif token in eos_ids:
        result.finish_reason, result.finished = "stop", True
    elif len(result.gen_ids) >= job.max_tokens:
        result.finish_reason, result.finished = "length", True


def choose(job: Job, logits: torch.Tensor, step: int) -> int:
    """The next token: greedy at temperature 0, else sampled from softmax(logits / temperature), cut to the top-p
    nucleus. The logits are shifted so that their largest is 0, then divided in float64: any temperature in
    (0, 2] gives finite probabilities (dividing raw float32 logits by 1e-40 gave inf, then NaN: HTTP 500)."""
    import torch

    if job.temperature <= 0:
        return int(logits.argmax())
    shifted = (logits - logits.max()).double()  # float64: a temperature of 1e-300 is not 0 there
    probs = torch.softmax(shifted / job.temperature, dim=-1)
    if job.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < job.top_p  # the smallest set reaching top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    generator = torch.Generator()
    seed = job.seed + step if job.seed is not None else int.from_bytes(os.urandom(6), "little")
    generator.manual_seed(seed % 2**64)  # what torch takes; the same stream as before for every valid seed
    return int(torch.multinomial(probs, 1, generator=generator))


def top(logprobs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k highest log-probs of each row of `logprobs` and their token ids. k = 1 (what lm-eval asks for when it
    scores) is a max: half the time of topk over a 49,152-token vocabulary (128 rows: 3.1 against 6.4 ms), the same
    value (of equal ones, the first id)."""
    if k == 1:
        return logprobs.max(dim=-1, keepdim=True)
    return logprobs.topk(k, dim=-1)


def tops(top_ids: list[list[int]], top_values: list[list[float]], chosen: Sequence[int],
         chosen_lp: Sequence[float]) -> list[dict[int, float]]:
    """Per position: its top-k tokens and their log-probs, plus the token chosen there (when not among them)."""
    out = []
    for ids, values, token, lp in zip(top_ids, top_values, chosen, chosen_lp):
        top = dict(zip(ids, values))
        top.setdefault(token, lp)
        out.append(top)
    return out
