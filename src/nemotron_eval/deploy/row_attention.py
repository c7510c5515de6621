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
the queries of chunk c, zero-padded to a multiple of QUERY_PAD rows, attend in two calls of the fused kernel: to
the chunk's own CHUNK keys under the causal mask (those beyond the prompt's end are whatever follows in the
batch's tensor, or zeros: the mask hides them, and a hidden key adds exactly nothing), and to every key before
the chunk, which each of its queries sees whole (no mask); the two are merged by their log-sum-exps. A query at
position p is thus always computed with the same keys in the same blocks, whether the whole prompt is computed or
only its tail after a cached prefix, and whatever the prompt's length. Neither call reads a mask over the long
part nor computes the causal mask's empty half beyond one chunk: measured here on prompts of ~1,900 tokens, the
server without the prefix cache went from 250 to 286 tokens/s against one masked call over all keys per chunk.
The kernel is the one `scaled_dot_product_attention` runs on a CPU, called through its aten op for its
log-sum-exp (torch is pinned; `register` fails where the op is missing, and the engine then goes without the
row-exact attention). The query heads that share a key head
(grouped-query attention) go into one call as more query rows, padded to a multiple of QUERY_PAD together (a
2-token tail after a long cached prefix computes 32 query rows per key head, not 32 per query head: a short pass
after 1,900 cached tokens took 127-173 ms before, 93-112 ms with this), and each row's keys are a view of the batch's
tensor: no repeated keys, and only a chunk's own keys are copied, where they run past the tensor's end (zero-padded).

Rows of one pass whose tokens agree up to a chunk (the answer choices of one question, its few-shot context cached
or not) have the same keys there, bit for bit (the point of all of the above): their queries in that chunk attend
to the keys before it in one call, one row's keys standing for all (`RowLayout`). The kernel gives a query row the
same result at any offset that is a multiple of QUERY_PAD in a call of any such size, so this changes no bit; it
turns many small calls over a long shared prefix into one bigger one (four answer choices of 30 tokens after
1,800 cached ones: one pass 318 -> 276 ms, medians, the two versions run in turn, SmolLM2-135M fp32, 2-core
Xeon; the causal masks are made once per pass, not per layer).

Passes without a `RowLayout` (decoding steps) use transformers' SDPA attention with the usual padding mask.
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
    queries' own positions); its queries are rows 0..queries-1 of the pass. `tokens`: the row's token ids (at least
    its first `keys`), which say which rows share their keys before a chunk; None: the row shares with none."""

    key_start: int
    keys: int
    queries: int
    tokens: Sequence[int] | None = None


class Piece(NamedTuple):
    """The queries of one row in one chunk: positions start..start+n-1, rows at..at+n-1 of the pass."""

    row: int
    start: int
    n: int
    chunk: int  # the chunk's first position (a multiple of CHUNK)
    at: int


def padded_rows(group: int, n: int) -> int:
    """Query rows of one call for `n` queries of each of `group` query heads sharing a key head: padded together to
    a multiple of QUERY_PAD (a 2-token tail computes 32 rows, not 32 per query head)."""
    return -(-(group * n) // QUERY_PAD) * QUERY_PAD


class RowLayout:
    """A pass's attention calls, worked out once for all its layers: every row's queries cut into `Piece`s at the
    chunk boundaries, and the pieces grouped by the keys before their chunk (`groups`: pieces of rows whose tokens
    agree before the chunk, in row order; each group attends to those keys in one call)."""

    def __init__(self, spans: Sequence[RowSpan]) -> None:
        self.spans = list(spans)
        groups: dict[Any, list[Piece]] = {}
        for row, span in enumerate(self.spans):
            first = start = span.keys - span.queries  # the position of the row's first query
            while start < span.keys:
                chunk = start // CHUNK * CHUNK
                piece = Piece(row, start, min(chunk + CHUNK, span.keys) - start, chunk, start - first)
                shared = chunk > 0 and span.tokens is not None
                key = (chunk, tuple(span.tokens[:chunk])) if shared else (chunk, "row", row)  # type: ignore[index]
                groups.setdefault(key, []).append(piece)
                start += piece.n
        self.groups = list(groups.values())
        self._masks: dict[tuple[Piece, int, Any], Any] = {}

    def mask(self, piece: Piece, group: int, like: Any) -> Any:
        """The causal mask of `piece`'s queries (each of `group` query heads, padded to QUERY_PAD rows) over its
        chunk's CHUNK keys, [1, 1, rows, CHUNK] in `like`'s dtype: the same for every layer, made once."""
        import torch

        key = (piece, group, like.dtype)
        if key not in self._masks:
            rows = padded_rows(group, piece.n)
            position = (piece.start + torch.arange(piece.n)).repeat(group)
            position = torch.cat([position, position[-1:].expand(rows - group * piece.n)])  # padding rows: the last
            own = torch.arange(piece.chunk, piece.chunk + CHUNK)[None, :] <= position[:, None]
            self._masks[key] = like.new_zeros(own.shape).masked_fill_(~own, float("-inf"))[None, None]
        return self._masks[key]


def row_exact_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float,
                        dropout: float = 0.0, row_layout: RowLayout | None = None,
                        **kwargs: Any) -> tuple[Any, None]:
    """The attention interface of transformers: query [B, heads, N, D], key/value [B, kv_heads, K, D] ->
    ([B, N, heads, D], None)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    layout = row_layout
    if layout is None:  # a decoding step
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    batch, heads, rows, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu  # the fused kernel, with its log-sum-exp
    out = query.new_zeros((batch, rows, heads, dim))  # padding rows stay finite: later layers attend past them, masked
    for pieces in layout.groups:
        near = []
        for piece in pieces:
            # the query heads that share a key head become more rows of one attention call (no repeated keys)
            q = query.new_zeros((1, kv_heads, padded_rows(group, piece.n), dim))
            q[0, :, :group * piece.n] = query[piece.row, :, piece.at:piece.at + piece.n].unflatten(
                0, (kv_heads, group)).flatten(1, 2)
            begin = layout.spans[piece.row].key_start + piece.chunk
            near.append((q, *flash(q, _near(key[piece.row], begin), _near(value[piece.row], begin),
                                   attn_mask=layout.mask(piece, group, q), scale=scaling)[:2]))
        chunk = pieces[0].chunk
        if chunk:  # every key before the chunk, seen whole by each query: one call for the group, no mask
            leader = layout.spans[pieces[0].row]
            keys = key[pieces[0].row, None, :, leader.key_start:leader.key_start + chunk]
            values = value[pieces[0].row, None, :, leader.key_start:leader.key_start + chunk]
            qs = torch.cat([q for q, _, _ in near], dim=2) if len(near) > 1 else near[0][0]
            far, far_lse = flash(qs, keys, values, scale=scaling)[:2]
            merged, offset = [], 0
            for q, a, a_lse in near:
                n = q.shape[2]
                b, b_lse = far[:, :, offset:offset + n], far_lse[:, :, offset:offset + n]
                both = torch.logaddexp(a_lse, b_lse)
                merged.append((a * (a_lse - both).exp()[..., None] + b * (b_lse - both).exp()[..., None]).to(q.dtype))
                offset += n
        else:
            merged = [a for _, a, _ in near]
        for piece, attended in zip(pieces, merged):
            out[piece.row, piece.at:piece.at + piece.n] = attended[0, :, :group * piece.n].unflatten(1, (group, piece.n)).flatten(
                0, 1).transpose(0, 1)
    return out, None


def _near(states: Any, begin: int) -> Any:
    """A chunk's CHUNK keys (or values) of one row from column `begin` [1, kv_heads, CHUNK, D]: a view where the
    batch's tensor is wide enough, else a copy zero-padded beyond its end (the columns past the row's own keys are
    hidden by the mask; a hidden key must be finite to add exactly nothing)."""
    stop = begin + CHUNK
    if stop <= states.shape[1]:
        return states[None, :, begin:stop]
    own = states.new_zeros((1, states.shape[0], CHUNK, states.shape[2]))
    own[0, :, :states.shape[1] - begin] = states[:, begin:]
    return own


def register() -> str:
    """Make NAME known to transformers (attention and mask functions); returns NAME."""
    import torch
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu  # noqa: B018 (AttributeError where torch lacks it)
    AttentionInterface.register(NAME, row_exact_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
