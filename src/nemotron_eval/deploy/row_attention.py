"""Attention computed row by row on exactly each prompt's own keys: a prompt's log-probs do not depend on the batch.

Why: on a CPU, float32 results move by a few units in the last place with the shapes they are computed in. A
prompt's log-probs computed alone, left-padded in a batch, or after a prefix taken from the cache differ by up to
~3e-5 with transformers' usual SDPA call (its blocks fall differently on padded keys). The prefix cache promises
log-probs within 1e-5 of computing the whole prompt, so every computation of a token must be the same whatever
else is in the batch and whatever was cached. Measured here (oneDNN/MKL, torch 2.13 CPU):

* a matrix product's row does not depend on the number of rows M as long as M >= 12 (M = 1-3, 5-7, 9-11 take
  other kernels): the engine gives every forward pass at least MIN_QUERY_ROWS columns per row and computes the
  output projection in fixed blocks;
* PyTorch's fused CPU attention gives a query row the same result for any number of query rows that is a
  multiple of 32, but its blocks over the keys depend on how many keys it is given.

So each batch row attends to its own keys only (the cached prefix and the new tokens, which the engine lays out
contiguously: `RowSpan`), and its queries are cut into chunks at fixed absolute positions (multiples of CHUNK):
the queries of chunk c, zero-padded to a multiple of QUERY_PAD rows, attend to keys 0..(c+1)*CHUNK-1, zero-padded
beyond the prompt's end and masked causally. A query at position p is thus always computed with the same number of
keys and the same kind of block, whether the whole prompt is computed or only its tail after a cached prefix, and
whatever the prompt's length. The chunks also skip most of the causal mask's empty half (about 30% slower than a
plain causal call; a full explicit mask is 2x).

Passes without spans (decoding steps) use transformers' SDPA attention with the usual padding mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

NAME = "nemotron_row_exact"
MIN_QUERY_ROWS = 12
CHUNK = 256
QUERY_PAD = 32


class RowSpan(NamedTuple):
    """Where one batch row's tokens are: keys key_start..key_start+keys-1 (the last `queries` of them are the
    queries' own positions); its queries are rows 0..queries-1 of the pass."""

    key_start: int
    keys: int
    queries: int


def row_exact_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float,
                        dropout: float = 0.0, row_spans: Sequence[RowSpan] | None = None,
                        **kwargs: Any) -> tuple[Any, None]:
    """The attention interface of transformers: query [B, heads, N, D], key/value [B, kv_heads, K, D] ->
    ([B, N, heads, D], None)."""
    import torch
    from torch.nn.functional import scaled_dot_product_attention
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if row_spans is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    batch, heads, rows, dim = query.shape
    kv_heads = key.shape[1]
    out = query.new_zeros((batch, rows, heads, dim))
    for b, span in enumerate(row_spans):
        first = span.keys - span.queries  # the position of the row's first query
        padded = -(-span.keys // CHUNK) * CHUNK
        keys = key.new_zeros((kv_heads, padded, dim))
        values = value.new_zeros((kv_heads, padded, dim))
        keys[:, :span.keys] = key[b, :, span.key_start:span.key_start + span.keys]
        values[:, :span.keys] = value[b, :, span.key_start:span.key_start + span.keys]
        if heads != kv_heads:
            keys = keys.repeat_interleave(heads // kv_heads, dim=0)
            values = values.repeat_interleave(heads // kv_heads, dim=0)
        start = first
        while start < span.keys:
            end = (start // CHUNK + 1) * CHUNK
            n = min(end, span.keys) - start
            q = query.new_zeros((heads, -(-n // QUERY_PAD) * QUERY_PAD, dim))
            q[:, :n] = query[b, :, start - first:start - first + n]
            position = start + torch.arange(q.shape[1]).clamp(max=n - 1)  # padding rows: copies of the last
            mask = torch.arange(end)[None, :] <= position[:, None]
            attended = scaled_dot_product_attention(
                q[None], keys[None, :, :end].contiguous(), values[None, :, :end].contiguous(),
                attn_mask=mask[None, None], scale=scaling)
            out[b, start - first:start - first + n] = attended[0, :, :n].transpose(0, 1)
            start += n
    return out, None


def register() -> str:
    """Make NAME known to transformers (attention and mask functions); returns NAME."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, row_exact_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
