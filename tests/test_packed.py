"""deploy/server/packed.py: linear layers on oneDNN-packed weights give the plain product's results (to a few units
in the last place), and a row's result does not depend on how many rows it is computed with."""

from __future__ import annotations

import torch
from torch import nn

from nemotron_eval.deploy.server.packed import pack_linears


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 96, bias=False), nn.SiLU(), nn.Linear(96, 40), nn.Embedding(3, 4))


def test_packed_linears_equal_the_plain_product_and_rows_do_not_depend_on_the_batch() -> None:
    plain, packed = model(), model()
    assert pack_linears(packed) == 2
    x = torch.randn((2, 300, 64))
    with torch.inference_mode():
        want, got = plain[:3](x), packed[:3](x)
        assert torch.allclose(got, want, rtol=0, atol=1e-5 * float(want.abs().max()))
        for rows in (1, 5, 12, 300):  # the first row alone, in a few, in many
            assert torch.equal(packed[:3](x[0, :rows])[0], got[0, 0])


def test_a_model_without_linear_layers_stays_as_it_is() -> None:
    assert pack_linears(nn.Sequential(nn.Embedding(3, 4))) == 0
