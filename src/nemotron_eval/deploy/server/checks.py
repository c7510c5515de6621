"""What the engine checks about a model once, at load: whether its output head is a plain projection and whether
a row's logits depend on how many rows are projected together, whether it takes the row-exact attention, the
bytes of KV cache a token takes, and whether prompts scored from a cached prefix equal prompts scored from
scratch (else the prefix cache stays off)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from nemotron_eval.deploy import row_attention
from nemotron_eval.deploy.prefix_cache import PrefixCache
from nemotron_eval.deploy.server.jobs import Job, Result

log = logging.getLogger(__package__)


class Engine(Protocol):
    """The engine being loaded, as the checks use it (deploy/server/engine.py)."""

    torch: Any
    model: Any
    dtype: str
    pad_id: int
    cache: PrefixCache | None
    _body: Any
    _head: Any

    def _forward(self, ids: Any, mask: Any, positions: Any, cache: Any, use_cache: bool) -> tuple[Any, Any]: ...

    def run(self, jobs: Sequence[Job]) -> list[Result | BaseException]: ...


def split_matches_full(engine: Engine) -> bool:
    """Whether head(body(x)) reproduces the model's own logits (false for heads with soft-capping or scaling)."""
    torch = engine.torch
    ids = torch.tensor([[engine.pad_id, 1, 2, 3]], dtype=torch.long) % engine.model.config.vocab_size
    with torch.inference_mode():
        full = engine.model(input_ids=ids).logits.float()
        split = engine._head(engine._body(input_ids=ids).last_hidden_state).float()
    same = bool(torch.allclose(full, split, atol=1e-5, rtol=0))
    if not same:
        log.warning("the model's head is not a plain projection: computing full logits per batch")
    return same


def head_rows_independent(engine: Engine, rows: int) -> bool:
    """Whether the output head gives a row the same logits, bit for bit, whatever number of rows it is computed
    with (oneDNN's packed product does, packed.py; a plain matrix product may not): `rows` probe states projected
    together against slices of them projected alone, of other lengths and offsets. Only then may a pass project
    just the rows it needs (Engine._logits)."""
    torch = engine.torch
    width = getattr(engine._head, "in_features", None) or engine.model.config.hidden_size
    probe = torch.randn((rows, width), generator=torch.Generator().manual_seed(0)).to(engine.model.dtype)
    slices = [(0, 1), (3, 2), (5, 3), (1, 13), (7, max(rows - 9, 1))]
    with torch.inference_mode():
        whole = engine._head(probe)
        same = all(torch.equal(engine._head(probe[a:a + n]), whole[a:a + n]) for a, n in slices if a + n <= rows)
    if not same:
        log.info("the output head's rows depend on the block's size: each block is padded to %d rows", rows)
    return same


def use_row_exact_attention(engine: Engine) -> bool:
    """Switch the model to the row-exact attention (see row_attention.py); false when it cannot take it."""
    try:
        name = row_attention.register()
        engine.model.set_attn_implementation(name)
    except Exception as exc:  # a model without transformers' attention interface
        log.warning("row-exact attention unavailable (%s): log-probs may vary by ~1e-5 with batching", exc)
        return False
    if engine.model.config._attn_implementation != name:
        log.warning("row-exact attention unavailable: log-probs may vary by ~1e-5 with batching")
        return False
    return True


def kv_bytes_per_token(engine: Engine) -> int:
    """Bytes of KV cache one token takes in this model (measured on a one-token pass)."""
    torch = engine.torch
    ids = torch.tensor([[engine.pad_id]], dtype=torch.long)
    with torch.inference_mode():
        _, kv = engine._forward(ids, torch.ones_like(ids), torch.zeros_like(ids), None, True)
    return sum(t.nbytes for layer in kv.layers for t in (layer.keys, layer.values))


def prefix_cache_works(engine: Engine) -> bool:
    """Whether prompts scored from a cached prefix match scoring them from scratch (a model whose cache is not
    plain per-token keys and values, e.g. sliding windows or recurrent state, would not): checked once on a
    short prompt through the worker's own code path. The cache starts empty again."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    assert engine.cache is not None
    if not all(type(layer) is DynamicLayer for layer in DynamicCache(config=engine.model.config).layers):
        log.warning("the model's KV cache is not plain per-layer keys and values: prefix cache off")
        return False
    vocab = engine.model.config.vocab_size
    base = [(7 * i + 11) % vocab for i in range(24)]
    prompts = [base, base[:16] + [(13 * i + 5) % vocab for i in range(8)]]
    cached = engine.run([Job(ids=p, max_tokens=1, score_prompt=True, top_logprobs=1) for p in prompts])
    saved, engine.cache = engine.cache, None
    fresh = engine.run([Job(ids=p, max_tokens=1, score_prompt=True, top_logprobs=1) for p in prompts])
    engine.cache = saved
    engine.cache.clear()
    engine.cache.evicted_tokens = 0
    failed = next((r for r in (*cached, *fresh) if not isinstance(r, Result)), None)
    if failed is not None:
        log.warning("scoring a prompt failed in the prefix cache's self-check (%s): prefix cache off", failed)
        return False
    tolerance = 1e-5 if engine.dtype == "float32" else 0.25  # what the cache promises; bf16 is never exact
    worst = max(abs(a - b) for c, f in zip(cached, fresh)  # type: ignore[union-attr]
                for a, b in zip(c.prompt_logprobs[1:], f.prompt_logprobs[1:]))
    if worst > tolerance:
        log.warning("prompt log-probs from cached prefixes differ by %.3g from fresh ones: prefix cache off", worst)
        return False
    return True
