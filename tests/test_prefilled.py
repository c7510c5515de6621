"""The past-KV layout of a prompt pass (deploy/server/prefilled.py): the reused workspace never shows a pass what an
earlier pass left in it, and states a caller keeps are never in the workspace. Real torch tensors, no model."""

from __future__ import annotations

import torch

from nemotron_eval.deploy.server.prefilled import Workspace, lay_out_past

LAYERS, HEADS, DIM = 2, 3, 4


def parts(lengths: list[int], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn((LAYERS, 2, HEADS, n, DIM), generator=g) for n in lengths]


def expected(rows: list[tuple[int, list[torch.Tensor]]], past_width: int) -> torch.Tensor:
    """The first `past_width` columns as torch.zeros and a copy would make them."""
    past = torch.zeros((LAYERS, 2, len(rows), HEADS, past_width, DIM))
    for row, (reuse, ps) in enumerate(rows):
        if ps:
            past[:, :, row, :, past_width - reuse:] = torch.cat(ps, dim=3)
    return past


def test_left_padding_is_zero_even_where_an_earlier_pass_wrote() -> None:
    workspace = Workspace()
    dirty = workspace.tensor((LAYERS, 2, 3, HEADS, 40, DIM), torch.float32, keep=False)
    dirty.fill_(float("nan"))  # an earlier, bigger pass: everything it wrote is garbage now
    rows = [(10, parts([6, 4], seed=1)), (0, []), (25, parts([25], seed=2))]
    past = lay_out_past(workspace, rows, past_width=25, width=12, dtype=torch.float32, keep=False)
    assert past.shape == (LAYERS, 2, 3, HEADS, 37, DIM) and past.is_contiguous()
    assert torch.equal(past[..., :25, :], expected(rows, 25))  # the row without a cached prefix is all zeros
    assert past.data_ptr() == dirty.data_ptr()  # the same memory, reused


def test_kept_states_get_memory_of_their_own() -> None:
    workspace = Workspace()
    rows = [(5, parts([5], seed=3))]
    shared = lay_out_past(workspace, rows, past_width=5, width=12, dtype=torch.float32, keep=False)
    kept = lay_out_past(workspace, rows, past_width=5, width=12, dtype=torch.float32, keep=True)
    again = lay_out_past(workspace, [(5, parts([5], seed=4))], past_width=5, width=12, dtype=torch.float32,
                         keep=False)
    assert kept.data_ptr() != shared.data_ptr() == again.data_ptr()
    assert torch.equal(kept[..., :5, :], expected(rows, 5))  # the later pass did not overwrite it


def test_a_pass_beyond_the_limit_does_not_grow_the_workspace() -> None:
    workspace = Workspace(max_bytes=LAYERS * 2 * HEADS * 20 * DIM * 4)
    small = lay_out_past(workspace, [(4, parts([4], seed=5))], past_width=4, width=12, dtype=torch.float32,
                         keep=False)
    big = lay_out_past(workspace, [(30, parts([30], seed=6))], past_width=30, width=12, dtype=torch.float32,
                       keep=False)
    assert torch.equal(big[..., :30, :], expected([(30, parts([30], seed=6))], 30))
    assert workspace.tensor(small.shape, torch.float32, keep=False).data_ptr() == small.data_ptr()
