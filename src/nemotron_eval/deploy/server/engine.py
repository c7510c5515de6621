"""The model on one worker thread: batches of prompts, each row from its own cached prefix; generating rows then
decode step by step between batches (deploy/server/decoding.py); the prefix cache is filled as prompts run; work
whose client went away is dropped. torch and transformers are imported when an `Engine` is made."""

from __future__ import annotations

import inspect
import logging
import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nemotron_eval.deploy.prefix_cache import PrefixCache, Scores
from nemotron_eval.deploy.row_attention import MIN_QUERY_ROWS, RowLayout, RowSpan
from nemotron_eval.deploy.scheduler import FairScheduler
from nemotron_eval.deploy.server import checks
from nemotron_eval.deploy.server.decoding import Decoding, Layers, advance, top, tops
from nemotron_eval.deploy.server.jobs import Cancelled, Job, Result
from nemotron_eval.deploy.server.packed import pack_linears
from nemotron_eval.deploy.server.prefilled import Workspace, lay_out_past, prefilled_cache
from nemotron_eval.deploy.stats import ServerStats

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__package__)

# 4 GiB holds about 91,000 tokens of SmolLM2-135M's fp32 KV states (46,080 bytes a token, measured at load; 182,000
# in bf16): more than the 68,000 distinct prefix tokens of the default five-task run, so nothing reusable is ever
# evicted there. Measured on bench/request_mix.py (2026-12-05): peak RSS 2.6 GB without the cache, 3.9 GB holding
# 0.77 GB of it and the passes' workspace (prefilled.py, at most 1 GiB); with a full cache and five harness processes (~0.7 GB each) the run stays near 10 GB of this 24 GB machine.
# Bigger models need more per token: set --prefix-cache-mb (0 turns the cache off).
DEFAULT_PREFIX_CACHE_MB = 4096
# A batch holds at most this many padded tokens (the first prompt of a batch always fits): about 6 s of compute on
# 2 cores, the longest a client's prompt waits for a batch that is not its own; prompt throughput is flat from
# about 800 tokens a pass (bench/server_throughput.py --max-batch-tokens 2048,16384).
DEFAULT_MAX_BATCH_TOKENS = 2048
MIN_SHARED_TOKENS = 32  # prompts sharing this many tokens not yet cached run one after the other, not together
# Rows per block of the output projection (Engine._logits, Engine._project). A plain product's rows depend on the
# row count, so its blocks are padded to HEAD_ROWS; oneDNN's packed one (packed.py, checked at load) needs no padding:
# 1 row 4.4 ms, 12 rows 4.9, 128 rows 35 (fp32, 2-core EPYC; padding cost the default run ~5 s of 191 s busy).
HEAD_ROWS = 128


class Engine:
    """Loads the model and runs batched forward passes on one worker thread.

    A batch's rows may each start from a different cached prefix. Row i reuses r_i cached tokens and computes
    n_i new ones: its cached states sit right-aligned in a past-KV tensor of width P (the longest reused prefix),
    its new tokens left-aligned in the input of width N (at least MIN_QUERY_ROWS), so that its tokens are one
    contiguous run of P + N key columns (`RowSpan`); the attention mask and explicit position ids (r_i onwards)
    say the same for attention implementations that read them. Rows that generate more tokens then join the
    `Decoding`, which appends one column per step for all of them (at most max_batch_size rows at a time: more
    generating prompts wait in the scheduler while scoring prompts go on).

    A batch that fails is run again one prompt at a time, and a decoding step one row at a time, so that a
    failure fails only the request it belongs to.
    """

    def __init__(
        self,
        checkpoint: Path,
        *,
        dtype: str = "float32",
        max_batch_size: int = 8,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        batch_wait_s: float = 0.005,
        prefix_cache_mb: int = DEFAULT_PREFIX_CACHE_MB,
        threads: int | None = None,
    ) -> None:
        started = time.monotonic()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.torch = torch
        # torch's threads: `threads`, else what the environment says (OMP_NUM_THREADS; a Snakemake job sets it to
        # the job's `threads`). Set again on the worker thread, which computes every batch.
        if threads is not None:
            torch.set_num_threads(threads)
        self.threads: int = torch.get_num_threads()
        self.checkpoint = checkpoint
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.batch_wait_s = batch_wait_s
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=getattr(torch, dtype)).eval()
        self.packed_linears = pack_linears(self.model)
        self.row_exact = checks.use_row_exact_attention(self)
        config = self.model.config
        self.context_length: int | None = getattr(config, "max_position_embeddings", None)
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        self.pad_id: int = next(
            i for i in (self.tokenizer.pad_token_id, *sorted(self.eos_ids), 0) if i is not None
        )
        self._body = self.model.get_decoder()
        self._head = self.model.get_output_embeddings()
        self._cache_arg = "cache" if "cache" in inspect.signature(self._body.forward).parameters else "past_key_values"
        self._split = checks.split_matches_full(self)
        self._pad_head = self._split and not checks.head_rows_independent(self, HEAD_ROWS)
        self.kv_bytes_per_token = checks.kv_bytes_per_token(self)
        self.scheduler = FairScheduler(max_batch_size, max_batch_tokens)
        self.decoding = Decoding(self._new_cache)
        self.cancelled_prompts = 0  # dropped because their client went away
        self.stats = ServerStats(model_load_s=0.0)  # replaced below: the self-check's batches do not count
        self.cache: PrefixCache | None = None
        self._workspace = Workspace()
        if prefix_cache_mb > 0:
            self.cache = PrefixCache(prefix_cache_mb * 2**20)
            if not checks.prefix_cache_works(self):
                self.cache = None
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="model-worker", daemon=True)
        self.stats = ServerStats(model_load_s=time.monotonic() - started)

    # -- public

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30) -> None:
        self._queue.put(None)
        self._thread.join(timeout=timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        return self.tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def snapshot(self) -> dict[str, Any]:
        """The statistics of `ServerStats`, with the prefix cache's state and the settings they depend on."""
        cache = self.cache.stats() if self.cache is not None else None
        return self.stats.snapshot(
            model=str(self.checkpoint), dtype=self.dtype, threads=self.threads, kv_bytes_per_token=self.kv_bytes_per_token,
            prefix_cache=cache, pending=len(self.scheduler) + self._queue.qsize() + len(self.decoding),
            decoding=len(self.decoding), cancelled_prompts=self.cancelled_prompts,
        )

    def run(self, jobs: Sequence[Job]) -> list[Result | BaseException]:
        """Run `jobs` on the calling thread as the worker would, while the worker is not running (tests,
        benchmarks, the self-check): each one's result, or the exception it failed with."""
        out: dict[int, Result | BaseException] = {}
        for job in jobs:
            job.done = lambda value, key=id(job): out.__setitem__(key, value)
            self.scheduler.add(job)
        with self.torch.inference_mode():
            while len(self.scheduler) or len(self.decoding):
                self._tick()
        return [out[id(j)] for j in jobs]

    # -- the worker thread

    def _work(self) -> None:
        self.torch.set_num_threads(self.threads)
        self.threads = self.torch.get_num_threads()  # the statistics say what the thread computing the batches has
        with self.torch.inference_mode():
            while self._gather():
                self._tick()
        for job in [*self.scheduler.pending(), *self.decoding.jobs]:
            job.done(RuntimeError("the server is stopping"))

    def _tick(self) -> None:
        """One round of the worker: drop the work nobody waits for, run one batch of prompts (when one can run),
        then one decoding step of every generating row. A prompt that arrives meanwhile waits for at most one
        batch and one step, however long the generations are."""
        self._drop_cancelled()
        if len(self.scheduler):
            self._plan()
            batch = self.scheduler.next_batch(self._conflicts, self.max_batch_size - len(self.decoding))
            if batch:
                self._prompt_pass(batch)
        if len(self.decoding):
            self._decode_step(self.decoding)

    def _drop_cancelled(self) -> None:
        dropped = self.scheduler.drop_cancelled()
        going_on = [row for row, job in enumerate(self.decoding.jobs) if not job.cancelled]
        dropped += [job for job in self.decoding.jobs if job.cancelled]
        self.decoding.keep(going_on)
        if dropped:
            self.cancelled_prompts += len(dropped)
            log.info("dropped %d prompts whose client went away", len(dropped))
        for job in dropped:
            job.done(Cancelled("the client went away"))

    def _gather(self) -> bool:
        """Move submitted jobs into the scheduler. With none pending, wait for one, then `batch_wait_s` for
        more. False once `stop` was called."""
        if len(self.scheduler) or len(self.decoding):
            deadline = 0.0
        else:
            first = self._queue.get()
            if first is None:
                return False
            self.scheduler.add(first)
            deadline = time.monotonic() + self.batch_wait_s
        while True:
            try:
                job = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                return True
            if job is None:
                return False
            self.scheduler.add(job)

    def _plan(self) -> None:
        """How much of each pending prompt the prefix cache holds (a scoring prompt needs the cached tokens'
        scores too). The last cached token of a scoring prompt is run again: the distribution after it, which
        scores the first new token, is not cached."""
        for job in self.scheduler.pending():
            job.reuse, job.match = 0, None
            if self.cache is None:
                continue
            match = self.cache.match(job.ids, job.top_logprobs if job.score_prompt else None)
            reuse = match.length - 1 if job.score_prompt else min(match.length, len(job.ids) - 1)
            if reuse > 0:
                job.reuse, job.match = reuse, match

    def _conflicts(self, job: Job, batch: Sequence[Job]) -> bool:
        """Whether `job` shares at least MIN_SHARED_TOKENS not yet cached tokens with a prompt of `batch`: it then
        waits for a later batch and reuses them."""
        if self.cache is None:
            return False
        for other in batch:
            t = max(job.reuse, other.reuse) + MIN_SHARED_TOKENS
            if (t <= min(len(job.ids), len(other.ids)) and job.ids[:t] == other.ids[:t]
                    and t * self.kv_bytes_per_token * 2 < self.cache.capacity_bytes):
                return True
        return False

    def _prompt_pass(self, batch: list[Job]) -> None:
        """One forward pass over the prompts of `batch`: the answers of those that are done, the others join the
        decoding. When the pass fails, each prompt runs again alone: only the one that fails alone fails."""
        started = time.monotonic()
        if self.cache is not None:
            for job in batch:
                if job.match is not None:
                    self.cache.touch(job.match)
        try:
            outcome: Any = self._forward_prompts(batch)
        except Exception as exc:
            outcome = exc
        if isinstance(outcome, Exception):
            if len(batch) == 1:
                log.error("a prompt of client %s failed", batch[0].client, exc_info=outcome)
                batch[0].done(outcome)
                return
            log.warning("a batch of %d failed (%s): running each prompt alone", len(batch), outcome)
            for job in batch:
                self._prompt_pass([job])
            return
        results, logits, layers, mask, padded = outcome
        failed = advance(batch, results, logits, self.decode, self.eos_ids)
        busy = time.monotonic() - started
        generated = sum(len(r.gen_ids) for r in results)
        self.stats.batch(busy_s=busy, passes=1, padded_tokens=padded, generated_tokens=generated,
                         jobs=[(j.client, len(j.ids), j.new_tokens) for j in batch])
        log.info(
            "batch size=%d clients=%s prompt_tokens=%d computed=%d padded=%d generated=%d %.3fs",
            len(batch), ",".join(sorted({j.client for j in batch})), sum(len(j.ids) for j in batch),
            sum(j.new_tokens for j in batch), padded, generated, busy,
        )
        going_on = self._settle(batch, results, failed)
        if going_on:
            self.decoding.add(batch, results, layers, mask, going_on)

    def _decode_step(self, decoding: Decoding) -> None:
        """One more token for every row of `decoding`; finished, failed and cancelled rows leave it. When the
        step fails, each row steps alone: only a row that fails alone fails."""
        started = time.monotonic()
        torch = self.torch
        jobs, results = decoding.jobs, decoding.results
        assert decoding.mask is not None
        step = torch.tensor([[r.gen_ids[-1]] for r in results], dtype=torch.long)
        positions = torch.tensor([[len(j.ids) + len(r.gen_ids) - 1] for j, r in zip(jobs, results)], dtype=torch.long)
        mask = torch.cat([decoding.mask, torch.ones((len(jobs), 1), dtype=torch.long)], dim=1)
        before = decoding.layers()
        try:
            hidden, cache = self._forward(step, mask, positions, decoding.cache, True)
            logits = self._logits(hidden[:, -1])
        except Exception as exc:
            decoding.restore(before)
            failure: Exception | None = exc
        else:
            failure = None
        if failure is not None:
            if len(decoding) == 1:
                log.error("a generation of client %s failed", jobs[0].client, exc_info=failure)
                jobs[0].done(failure)
                decoding.keep([])
                return
            log.warning("a decoding step of %d rows failed (%s): stepping each row alone", len(decoding), failure)
            parts = [decoding.take([row]) for row in range(len(decoding))]
            decoding.keep([])
            for part in parts:
                self._decode_step(part)
                decoding.absorb(part)
            return
        decoding.cache, decoding.mask = cache, mask
        failed = advance(jobs, results, logits, self.decode, self.eos_ids)
        self.stats.batch(busy_s=time.monotonic() - started, passes=1, padded_tokens=len(jobs),
                         generated_tokens=len(jobs) - len(failed), jobs=[(j.client, 0, 0) for j in jobs])
        decoding.keep(self._settle(jobs, results, failed))

    @staticmethod
    def _settle(jobs: Sequence[Job], results: Sequence[Result], failed: dict[int, Exception]) -> list[int]:
        """Answer the rows that finished or failed; the rows that go on."""
        going_on = []
        for row, (job, result) in enumerate(zip(jobs, results)):
            if row in failed:
                log.warning("a prompt of client %s failed: %s", job.client, failed[row])
                job.done(failed[row])
            elif result.finished:
                job.done(result)
            else:
                going_on.append(row)
        return going_on

    def _forward_prompts(self, batch: list[Job]) -> tuple[list[Result], torch.Tensor, Layers, torch.Tensor, int]:
        """The forward pass over a batch's prompts (see the class docstring for its layout): results with the
        prompts' scores, the logits after each prompt, the KV states and mask decoding goes on from, and the
        padded tokens computed."""
        torch = self.torch
        past_width = max(j.reuse for j in batch)
        width = max(max(j.new_tokens for j in batch), MIN_QUERY_ROWS)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), past_width + width), dtype=torch.long)
        positions = torch.zeros((len(batch), width), dtype=torch.long)
        spans = []
        for row, job in enumerate(batch):  # [padding, cached prefix | new tokens, padding]
            input_ids[row, :job.new_tokens] = torch.tensor(job.ids[job.reuse:], dtype=torch.long)
            mask[row, past_width - job.reuse:past_width + job.new_tokens] = 1
            positions[row] = torch.arange(job.reuse, job.reuse + width)
            spans.append(RowSpan(past_width - job.reuse, len(job.ids), job.new_tokens, job.ids))
        decoding = any(j.generating for j in batch)
        past = self._past(batch, past_width, width, decoding) if past_width else None

        hidden, kv = self._forward(input_ids, mask, positions, past, decoding or self.cache is not None, spans)
        results = [Result() for _ in batch]
        computed, next_logits = self._project(batch, hidden)
        for job, result, scores in zip(batch, results, computed):
            if scores is not None:
                self._fill_scores(job, result, scores)
        if self.cache is not None:
            for row, job in enumerate(batch):
                self._remember(job, row, kv, past_width, computed[row])
        layers = [(layer.keys, layer.values) for layer in kv.layers] if decoding else []
        return results, torch.stack(next_logits), layers, mask, len(batch) * width

    def _past(self, batch: list[Job], past_width: int, width: int, keep: bool) -> Any:
        """The cached prefixes of a batch's rows, right-aligned in the first `past_width` columns of a KV cache
        with room for `width` new ones (prefilled.py). `keep`: the states outlive the pass (decoding)."""
        assert self.cache is not None
        rows = [(job.reuse, self.cache.kv_parts(job.match, job.reuse) if job.match is not None else [])
                for job in batch]
        past = lay_out_past(self._workspace, rows, past_width, width, self.model.dtype, keep)
        return prefilled_cache(past, past_width, self.model.config)

    def _new_cache(self, layers: Layers) -> Any:
        """The model's KV cache holding per-layer keys and values."""
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=layers, config=self.model.config)

    def _remember(self, job: Job, row: int, kv: Any, first: int, scores: Scores | None) -> None:
        """Put a prompt's newly computed states (from column `first` of the batch's KV cache, row `row`) and
        scores into the prefix cache."""
        torch = self.torch
        assert self.cache is not None

        def states(a: int, b: int) -> torch.Tensor:
            lo, hi = first + a - job.reuse, first + b - job.reuse
            return torch.stack([torch.stack((layer.keys[row, :, lo:hi], layer.values[row, :, lo:hi]))
                                for layer in kv.layers])

        def scored(a: int, b: int) -> Scores:
            assert scores is not None
            parts = []
            if a == 0:  # position 0 has no score: a placeholder row
                k = scores.top_k
                parts.append(Scores(torch.full((1,), float("nan")), torch.zeros((1, k), dtype=torch.long),
                                    torch.full((1, k), float("nan")), k))
                a = 1
            if b > a:  # `scores` holds positions reuse+1..
                parts.append(scores.slice(a - job.reuse - 1, b - job.reuse - 1))
            return Scores.cat(parts).clone()

        self.cache.insert(job.ids, job.reuse, states, scored if scores is not None else None)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any,
                 use_cache: bool, spans: list[RowSpan] | None = None) -> tuple[torch.Tensor, Any]:
        """Hidden states (logits when the model's head is not a plain projection) and the KV cache. With `spans`
        (and the row-exact attention in place), each row attends to exactly its own keys."""
        kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "use_cache": use_cache,
                  self._cache_arg: cache}
        if spans is not None and self.row_exact:
            kwargs["row_layout"] = RowLayout(spans)  # the pass's attention calls, worked out once for every layer
        if self._split:
            out = self._body(**kwargs)
            hidden = out.last_hidden_state
        else:
            out = self.model(**kwargs)
            hidden = out.logits
        return hidden, getattr(out, self._cache_arg, None) if use_cache else None

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits for hidden states [n, hidden], HEAD_ROWS rows at a time (bounding memory). A plain product's
        row depends on the row count (by up to 3e-5 in a log-prob): unless the head was found free of that at load,
        the last block is zero-padded, so a position's logits are the same alone, in a batch or after a prefix."""
        if not self._split:
            return hidden.float()
        blocks = []
        for start in range(0, hidden.shape[0], HEAD_ROWS):
            block = hidden[start:start + HEAD_ROWS]
            rows = block.shape[0]
            if rows < HEAD_ROWS and self._pad_head:
                block = self.torch.cat([block, block.new_zeros((HEAD_ROWS - rows, block.shape[1]))])
            blocks.append(self._head(block)[:rows].float())
        return blocks[0] if len(blocks) == 1 else self.torch.cat(blocks)

    def _project(self, batch: list[Job], hidden: torch.Tensor) -> tuple[list[Scores | None], list[torch.Tensor]]:
        """The output projection over the rows of a pass that need one, packed into HEAD_ROWS blocks whatever prompt
        they belong to (a short suffix does not pay a block of its own): every new position of a scoring prompt
        (its log-probs and top entries, log-softmax over those rows only), the last position of the others. A block
        is gathered from `hidden` when it is projected (a model whose `hidden` are already logits is not copied
        whole). Returns per prompt its computed scores (positions reuse+1.., None when it scores nothing) and the
        logits after its last token."""
        torch = self.torch
        segments = []  # per prompt: its rows' first index in the packed order, how many, where they are in `hidden`
        start = 0
        for row, job in enumerate(batch):
            count = job.new_tokens if job.score_prompt else 1
            segments.append((start, count, row, job.new_tokens - count))
            start += count
        targets = [torch.tensor(job.ids[job.reuse + 1:] + [0], dtype=torch.long) if job.score_prompt else None
                   for job in batch]  # the last position's target is a placeholder, dropped below
        parts: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = [[] for _ in batch]
        next_logits: list[torch.Tensor | None] = [None] * len(batch)
        for block_start in range(0, start, HEAD_ROWS):
            block_end = min(block_start + HEAD_ROWS, start)
            spans = [(first, count, row, column, max(first, block_start), min(first + count, block_end))
                     for first, count, row, column in segments]
            spans = [span for span in spans if span[4] < span[5]]
            logits = self._logits(torch.cat([hidden[row, column + a - first:column + b - first]
                                             for first, _, row, column, a, b in spans]))
            for first, count, row, _, a, b in spans:
                own = logits[a - block_start:b - block_start]
                target = targets[row]
                if target is not None:
                    logprobs = torch.log_softmax(own, dim=-1)
                    values, ids = top(logprobs, batch[row].top_logprobs or 0)
                    parts[row].append((logprobs.gather(1, target[a - first:b - first, None])[:, 0], ids, values))
                if b == first + count:  # the prompt's last position: the next token's distribution
                    next_logits[row] = own[-1].clone()
        computed: list[Scores | None] = []
        for job, own_parts in zip(batch, parts):
            if not job.score_prompt:
                computed.append(None)
                continue
            chosen, ids, values = (torch.cat(column)[:-1] for column in zip(*own_parts))
            computed.append(Scores(chosen, ids, values, job.top_logprobs or 0))
        return computed, next_logits  # type: ignore[return-value]

    def _fill_scores(self, job: Job, result: Result, computed: Scores) -> None:
        """The prompt's log-probs in its result: the cached ones for positions 1..reuse, then `computed`."""
        scores = computed
        if job.reuse and self.cache is not None and job.match is not None:
            scores = Scores.cat([self.cache.scores(job.match, 1, job.reuse + 1, computed.top_k), computed])
        lps = scores.logprobs.tolist()
        result.prompt_logprobs = [None, *lps]
        result.prompt_top = [None]
        if job.top_logprobs is not None:
            result.prompt_top += tops(scores.top_ids.tolist(), scores.top_values.tolist(), job.ids[1:], lps)


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is not None:
            return frozenset([value] if isinstance(value, int) else value)
    return frozenset()
