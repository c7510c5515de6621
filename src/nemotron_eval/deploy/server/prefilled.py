"""A KV cache allocated once for a whole prompt pass: the cached prefixes already in place, the new tokens' states
written after them, layer by layer.

Why: transformers' `DynamicCache` takes the past states as they are and concatenates each layer's new states to them,
copying the whole past once more per layer; a batch of eight prompts after ~1,900 cached tokens each copies about
0.7 GB that way (SmolLM2-135M, fp32), as much time as computing their new tokens. Here the engine lays the cached
prefixes into tensors wide enough for the new tokens too, and `update` writes into the free columns.

torch and transformers are imported when a cache is made (the engine is their only user).
"""

from __future__ import annotations

from typing import Any


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
