"""A KV cache allocated once for a whole prompt pass: the cached prefixes already in place, the new tokens' states
written after them, layer by layer.

Why: transformers' `DynamicCache` takes the past states as they are and concatenates each layer's new states to them,
copying the whole past once more per layer; a batch of eight prompts after ~1,900 cached tokens each copies about
0.7 GB that way (SmolLM2-135M, fp32), as much time as computing their new tokens. Here the engine lays the cached
prefixes into tensors wide enough for the new tokens too, and `update` writes into the free columns.

The tensor itself comes from a `Workspace` kept from one pass to the next: a fresh tensor of a few hundred MB is
mapped page by page by the kernel on its first touch, and zeroing it first (as `torch.zeros` did) cost most of a
short pass after a long cached prefix: three prompts of 1,900 cached + 2 new tokens took 373 ms, 131 of them in
`fill_` (profiled, SmolLM2-135M fp32, 2 cores). Only the columns nothing else writes are zeroed now: each row's
left padding (the mask hides it, but a hidden key must be finite to add exactly nothing).

torch and transformers are imported when a cache is made (the engine is their only user).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

# The largest workspace kept between passes; a pass that needs more gets memory of its own. 1 GiB holds eight rows
# of ~2,800 cached tokens of SmolLM2-135M in fp32 (46,080 bytes a token).
WORKSPACE_MAX_BYTES = 1 << 30


class Workspace:
    """The memory of the past states of prompt passes, reused while a pass's states are not kept beyond it."""

    def __init__(self, max_bytes: int = WORKSPACE_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buffer: Any = None

    def tensor(self, shape: Sequence[int], dtype: Any, keep: bool) -> Any:
        """An uninitialised contiguous tensor of `shape`. `keep`: the caller holds on to it after the pass (a
        generating batch decodes on from it): it gets memory of its own."""
        import torch

        numel = math.prod(shape)
        if keep or numel * dtype.itemsize > self.max_bytes:
            return torch.empty(tuple(shape), dtype=dtype)
        if self._buffer is None or self._buffer.dtype != dtype or self._buffer.numel() < numel:
            self._buffer = None  # the old one goes first: never both at once
            self._buffer = torch.empty(numel, dtype=dtype)
        return self._buffer[:numel].view(tuple(shape))


def lay_out_past(workspace: Workspace, rows: Sequence[tuple[int, Sequence[Any]]], past_width: int, width: int,
                 dtype: Any, keep: bool) -> Any:
    """The past-KV tensor [layers, 2, batch, kv_heads, past_width + width, head_dim] of a prompt pass: row i's
    `rows[i]` = (reused tokens r, the cached states' parts, each [layers, 2, kv_heads, n, head_dim], root side first)
    right-aligned in the first `past_width` columns after zeros, the last `width` columns left for the pass."""
    layers, _, heads, _, head_dim = next(parts[0].shape for _, parts in rows if parts)
    past = workspace.tensor((layers, 2, len(rows), heads, past_width + width, head_dim), dtype, keep)
    for row, (reuse, parts) in enumerate(rows):  # copied node by node, never joined first
        column = past_width - reuse
        past[:, :, row, :, :column].zero_()
        for part in parts:
            past[:, :, row, :, column:column + part.shape[3]] = part
            column += part.shape[3]
    return past


def prefilled_cache(past: Any, filled: int, config: Any) -> Any:
    """A `DynamicCache` over `past` ([layers, 2, batch, kv_heads, width, head_dim]) whose first `filled` columns hold
    the cached states; each layer's `update` writes the next columns. Only for models whose cache layers are all
    plain `DynamicLayer`s: for others `checks.prefix_cache_works` turns the prefix cache off, and nothing is cached."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class Prefilled(DynamicLayer):
        def __init__(self, keys: Any, values: Any) -> None:
            super().__init__()
            self.device = keys.device
            self.is_initialized = True
            self._keys, self._values, self._filled = keys, values, filled
            self.keys, self.values = keys[:, :, :filled], values[:, :, :filled]

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            stop = self._filled + key_states.shape[-2]
            assert stop <= self._keys.shape[-2], "one pass writes at most the width it was laid out for"
            self._keys[:, :, self._filled:stop] = key_states
            self._values[:, :, self._filled:stop] = value_states
            self._filled = stop
            self.keys, self.values = self._keys[:, :, :stop], self._values[:, :, :stop]
            return self.keys, self.values

    cache = DynamicCache(config=config)
    cache.layers = [Prefilled(past[i, 0], past[i, 1]) for i in range(past.shape[0])]
    return cache
