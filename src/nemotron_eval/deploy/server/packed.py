"""The model's linear layers on weights packed once for oneDNN, the CPU's fastest matrix product here.

Why: `torch.nn.functional.linear` repacks the weight for every call. Packed once at load, the same products run
much faster on a CPU: measured on a 2-core EPYC (fp32), the vocabulary projection of SmolLM2 (49152x576, 128 rows)
82 -> 38 ms, an MLP projection (1536x576, 1024 rows) 13.9 -> 9.2 ms, the down projection (576x1536) unchanged.
A row's result is also the same whatever the number of rows it is computed with (checked bit for bit from 1 to
1024 rows), which the row-exact design needs (row_attention.py). Results differ from the unpacked product by a
few units in the last place (1e-4 on outputs of magnitude ~25).

`pack_linears` swaps each `nn.Linear`'s forward; it checks once that the packed product matches the plain one and
leaves the model as it is where oneDNN is missing or disagrees. torch is imported by the function (the engine has
loaded it by then).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__package__)
TOLERANCE = 1e-3  # relative to the output's magnitude: a packing error would be far larger


def pack_linears(model: Any, rows_hint: int = 128) -> int:
    """Give every linear layer of `model` a weight packed for oneDNN (for products of about `rows_hint` rows; any
    number works). Returns how many were packed (0: none, the model unchanged)."""
    import torch
    from torch import nn

    ops = torch.ops.mkldnn
    if not torch.backends.mkldnn.is_available() or not hasattr(ops, "_linear_pointwise"):
        log.info("oneDNN is not available: linear layers stay unpacked")
        return 0
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    if not linears or any(m.weight.dtype not in (torch.float32, torch.bfloat16) for m in linears):
        return 0
    try:
        packed = [ops._reorder_linear_weight(m.weight.detach(), rows_hint) for m in linears]
        probe = linears[0]
        x = torch.randn((13, probe.in_features), generator=torch.Generator().manual_seed(0)).to(probe.weight.dtype)
        with torch.inference_mode():
            want = nn.functional.linear(x, probe.weight, probe.bias).float()
            got = ops._linear_pointwise(x, packed[0], probe.bias, "none", [], "").float()
        if not torch.allclose(got, want, rtol=0, atol=TOLERANCE * float(want.abs().max())):
            log.warning("oneDNN's packed product disagrees with the plain one: linear layers stay unpacked")
            return 0
    except Exception as exc:  # an op missing in this build, a weight layout it does not take
        log.warning("packing linear layers for oneDNN failed (%s): they stay unpacked", exc)
        return 0
    for module, weight in zip(linears, packed):
        module.forward = _packed_forward(ops, weight, module.bias)
    return len(linears)


def _packed_forward(ops: Any, weight: Any, bias: Any) -> Any:
    def forward(x: Any) -> Any:
        return ops._linear_pointwise(x, weight, bias, "none", [], "")

    return forward
