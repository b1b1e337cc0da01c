"""Layer rules for the vmap executor (:mod:`~landscape_widgets.batched`): how a layer whose weights move runs for a
chunk of points at once.

- ``"vmap"``: ``torch.func.vmap``'s own rule (grouped convolutions, batched GEMMs);
- ``"im2col"`` (:mod:`.im2col`): im2col and one batched GEMM for 2-D convolutions;
- ``"affine"`` (:mod:`.affine`): the plane's affine structure, a shared first layer once for all points and later
  convolutions as one ordinary convolution;
- ``"triton"`` (:mod:`.triton`): the affine rule with each point's 2-D convolution in one Triton kernel (CUDA).

Which rules the vmap executor times for ``evaluator="auto"`` is :func:`tuned_rules`: a rule without a device
measurement in ``benchmarks/RESULTS.md`` (not in ``MEASURED_RULES``) is never chosen on its own, only when asked for
(``evaluator="vmap:<rule>"``).
"""
from __future__ import annotations

import torch

from . import triton

RULES = ("vmap", "im2col", "affine", "triton")
# rules "auto" may choose on its own: those with a device measurement in benchmarks/RESULTS.md (vmap's own rule on
# the NVIDIA H200); the others run only when asked for by name
MEASURED_RULES = ("vmap",)
DEFAULT_RULES = {"cuda": "vmap"}  # rule=None by device type (vmap's own rule elsewhere)


def default_rule(device) -> str:
    return DEFAULT_RULES.get(torch.device(device).type, "vmap")


def tuned_rules(module, device, measured=MEASURED_RULES) -> list:
    """The rules "auto" times for ``module`` on ``device``: those of ``measured`` that change something for this
    model (empty for a model without Linear or Conv2d layers)."""
    layers = [m for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    if not layers:
        return []
    has_conv = any(isinstance(m, torch.nn.Conv2d) for m in layers)
    cuda = torch.device(device).type == "cuda"
    applies = {"affine": True, "triton": has_conv and cuda and triton.available(device), "im2col": has_conv,
               "vmap": True}
    return [r for r in ("affine", "triton", "im2col", "vmap") if r in measured and applies[r]]
