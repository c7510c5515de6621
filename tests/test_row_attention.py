"""The row-exact attention (deploy/row_attention.py) on random tensors: it is causal attention (against a float64
reference), and a query's result does not depend on what else is computed with it: the same position gives the
same bits whether the whole prompt runs or only its tail after a cached prefix, at any offset in the batch's
key tensor and next to other rows. The real model's exactness through the engine is checked in test_server.py."""

from __future__ import annotations

import pytest
import torch

from nemotron_eval.deploy.row_attention import CHUNK, RowLayout, RowSpan, row_exact_attention

HEADS, KV_HEADS, DIM = 6, 2, 16  # grouped-query attention: 3 query heads per key head
SCALE = DIM ** -0.5


def prompt(length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries [HEADS, length, DIM] and keys/values [KV_HEADS, length, DIM] of one prompt."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn((HEADS, length, DIM), generator=g), torch.randn((KV_HEADS, length, DIM), generator=g),
            torch.randn((KV_HEADS, length, DIM), generator=g))


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention in float64, [length, HEADS, DIM]."""
    k, v = (t.double().repeat_interleave(HEADS // KV_HEADS, dim=0) for t in (k, v))
    scores = q.double() @ k.transpose(1, 2) * SCALE
    n = q.shape[1]
    scores.masked_fill_(torch.ones((n, n), dtype=torch.bool).triu(1), float("-inf"))
    return (scores.softmax(-1) @ v).transpose(0, 1)


def run(rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]], past_width: int,
        tokens: list[list[int]] | None = None) -> list[torch.Tensor]:
    """The engine's layout for a batch of rows (q, k, v, reuse): row i's first `reuse` keys right-aligned in the
    first `past_width` columns, its new keys after them, its queries left-aligned; each row's output. `tokens`: the
    rows' token ids (rows whose tokens agree before a chunk share its earlier keys' attention call)."""
    width = max(max(q.shape[1] - reuse for q, _, _, reuse in rows), 12)
    dtype = rows[0][0].dtype
    query = torch.zeros((len(rows), HEADS, width, DIM), dtype=dtype)
    key = torch.zeros((len(rows), KV_HEADS, past_width + width, DIM), dtype=dtype)
    value = torch.zeros_like(key)
    spans = []
    for i, (q, k, v, reuse) in enumerate(rows):
        n, start = q.shape[1], past_width - reuse
        query[i, :, :n - reuse] = q[:, reuse:]
        key[i, :, start:start + n], value[i, :, start:start + n] = k, v
        spans.append(RowSpan(start, n, n - reuse, tokens[i] if tokens else None))
    out, _ = row_exact_attention(None, query, key, value, None, SCALE, row_layout=RowLayout(spans))
    return [out[i, :q.shape[1] - reuse] for i, (q, _, _, reuse) in enumerate(rows)]


@pytest.mark.parametrize("length", [5, CHUNK, CHUNK + 1, 3 * CHUNK - 7])
def test_it_is_causal_attention(length: int) -> None:
    q, k, v = prompt(length, seed=length)
    (out,) = run([(q, k, v, 0)], past_width=0)
    assert torch.allclose(out.double(), reference(q, k, v), atol=1e-5, rtol=0)


def test_a_position_gives_the_same_bits_whatever_is_computed_with_it() -> None:
    q, k, v = prompt(2 * CHUNK + 40, seed=1)
    (whole,) = run([(q, k, v, 0)], past_width=0)
    other = prompt(CHUNK + 90, seed=2)
    # in a chunk, at its edge, in the last one, tails of 1-3 tokens (their query heads share one padded block)
    for reuse in (1, 37, CHUNK - 1, CHUNK, CHUNK + 5, 2 * CHUNK + 30, 2 * CHUNK + 37, 2 * CHUNK + 38, 2 * CHUNK + 39):
        for past_width in (reuse, reuse + 50):  # the row's cached keys at another offset of the batch's tensor
            tail, _ = run([(q, k, v, reuse), (*other, min(60, past_width))], past_width)
            assert torch.equal(tail, whole[reuse:]), (reuse, past_width)


def test_bfloat16_stays_close() -> None:
    q, k, v = prompt(CHUNK + 30, seed=3)
    (out,) = run([(q.bfloat16(), k.bfloat16(), v.bfloat16(), 0)], past_width=0)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.double(), reference(q, k, v), atol=0.05, rtol=0)


def shared_prefix(shared: int, lengths: list[int], seed: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Prompts whose first `shared` positions have the same keys and values (the same tokens), then their own."""
    base_q, base_k, base_v = prompt(shared, seed)
    out = []
    for i, length in enumerate(lengths):
        q, k, v = prompt(length - shared, seed + 1 + i)
        out.append((torch.cat([base_q, q], 1), torch.cat([base_k, k], 1), torch.cat([base_v, v], 1)))
    return out


@pytest.mark.parametrize("shared", [CHUNK - 3, CHUNK, 3 * CHUNK + 17])
def test_rows_sharing_a_prefix_share_its_attention_call_and_keep_their_bits(shared: int) -> None:
    """Answer choices after one context: their queries attend to the shared keys in one call per chunk, and each
    row's result is the same bits as when it runs alone, whole or as a tail after the cached context."""
    lengths = [shared + 30, shared + 2, shared + 301, shared + 30]
    prompts = shared_prefix(shared, lengths, seed=shared)
    tokens = [[7] * shared + [100 + i] * (length - shared) for i, length in enumerate(lengths)]
    prompts.append(prompt(shared + 30, seed=99))  # another context of the same length in the same pass: not shared
    tokens.append([8] * (shared + 30))
    alone = [run([(q, k, v, 0)], past_width=0)[0] for q, k, v in prompts]
    whole = run([(q, k, v, 0) for q, k, v in prompts], past_width=0, tokens=tokens)
    tails = run([(q, k, v, shared) for q, k, v in prompts], past_width=shared, tokens=tokens)
    for i in range(len(prompts)):
        assert torch.equal(whole[i], alone[i]), i
        assert torch.equal(tails[i], alone[i][shared:]), i
    spans = [RowSpan(0, n, n - shared, t) for n, t in zip(lengths + [shared + 30], tokens)]
    groups = RowLayout(spans).groups
    last = shared // CHUNK * CHUNK  # the chunk every row's first query falls in
    if last:
        assert [p.row for p in next(g for g in groups if g[0].chunk == last)] == [0, 1, 2, 3]
    unshared = [RowSpan(0, n, n - shared) for n in lengths + [shared + 30]]
    assert len(RowLayout(unshared).groups) > len(groups) or not last
