"""Attention computed row by row on exactly each prompt's own keys: a prompt's log-probs do not depend on the batch.

Why: on a CPU, float32 results move by a few units in the last place with the shapes they are computed in. A
prompt's log-probs computed alone, left-padded in a batch, or after a prefix taken from the cache differ by up to
~3e-5 with PyTorch's fused attention (its blocks fall differently on padded keys, and it reduces over the padding).
The prefix cache promises log-probs within 1e-5 of computing the whole prompt, so every computation of a token
must be the same whatever else is in the batch. Measured here (oneDNN/MKL sgemm, torch 2.13 CPU):

* a matrix product's row does not depend on the number of rows M as long as M >= 12 (M = 1-3, 5-7, 9-11 take
  other kernels): the engine gives every forward pass at least MIN_QUERY_ROWS columns per row and computes the
  output projection in fixed blocks;
* `softmax` of a row is the same with or without masked (-inf) entries at its end, and a batched product's row
  is the same for any number of query rows >= 4.

So each batch row attends with its queries (at least MIN_QUERY_ROWS of them, extra ones discarded) to exactly
its own keys: the cached prefix and the new tokens, which the engine lays out contiguously (`RowSpan`), under a
causal mask. The reductions then see the same numbers in the same order as for the whole prompt alone.

Passes without spans (decoding steps) use transformers' SDPA attention with the usual padding mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

NAME = "nemotron_row_exact"
MIN_QUERY_ROWS = 12


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
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if row_spans is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    batch, heads, rows, dim = query.shape
    groups = heads // key.shape[1]
    out = query.new_zeros((batch, rows, heads, dim))
    for b, span in enumerate(row_spans):
        n = min(max(span.queries, MIN_QUERY_ROWS), rows)
        q = query[b, :, :n]
        k = key[b, :, span.key_start:span.key_start + span.keys]
        v = value[b, :, span.key_start:span.key_start + span.keys]
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=0), v.repeat_interleave(groups, dim=0)
        scores = torch.matmul(q, k.transpose(1, 2)) * scaling
        # query i sits at key position keys - queries + i; the extra query rows see every key
        last = span.keys - span.queries + torch.arange(n).clamp(max=span.queries - 1)
        hidden = torch.arange(span.keys)[None, :] > last[:, None]
        scores = scores.masked_fill(hidden, float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out[b, : span.queries] = torch.matmul(probs, v)[:, : span.queries].transpose(0, 1)
    return out, None


def register() -> str:
    """Make NAME known to transformers (attention and mask functions); returns NAME."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, row_exact_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
