"""Which executor and which layer rule evaluate a plan: the policy, in one place.

``evaluator``: ``"auto"`` (vmap-batched points on CUDA, where they were measured to pay; the per-point loop
elsewhere and whenever points need a per-point hook), ``"loop"``, ``"vmap"`` (the device's default rule) or
``"vmap:<rule>"`` with a rule of :mod:`~landscape_widgets.gpu`.  With ``"auto"`` on CUDA the vmap executor times
its measured rules against the loop on the first large tile and keeps the faster path.
"""
from __future__ import annotations

import torch

from .gpu import triton

RULES = ("vmap", "im2col", "affine", "triton")
# rules "auto" may choose on its own: those with a device measurement in benchmarks/RESULTS.md (vmap's own rule on
# the NVIDIA H200); the others run only when asked for by name
MEASURED_RULES = ("vmap",)
DEFAULT_RULES = {"cuda": "vmap"}  # rule=None by device type (vmap's own rule elsewhere)
EVALUATORS = ("auto", "loop", "vmap") + tuple(f"vmap:{r}" for r in RULES)


def check_evaluator(evaluator) -> str:
    if evaluator not in EVALUATORS:
        raise ValueError(f"evaluator={evaluator!r} is not known; pass one of {', '.join(map(repr, EVALUATORS))}")
    return evaluator


def resolve_evaluator(evaluator, device, *, buffers=None) -> str:
    """``"loop"`` or ``"vmap"``: the executor ``evaluator`` means on ``device``."""
    check_evaluator(evaluator)
    if evaluator == "auto":
        return "vmap" if torch.device(device).type == "cuda" and buffers != "recompute" else "loop"
    return "vmap" if evaluator.startswith("vmap") else "loop"


def requested_rule(evaluator):
    """The rule named by ``"vmap:<rule>"``, else None (the device's default, or "auto"'s choice)."""
    return evaluator.split(":", 1)[1] if evaluator.startswith("vmap:") else None


def default_rule(device) -> str:
    return DEFAULT_RULES.get(torch.device(device).type, "vmap")


def tuned_rules(module, device) -> list:
    """The rules "auto" times for ``module`` on ``device``: the measured ones that change something for this model
    (empty for a model without Linear or Conv2d layers)."""
    layers = [m for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    if not layers:
        return []
    has_conv = any(isinstance(m, torch.nn.Conv2d) for m in layers)
    cuda = torch.device(device).type == "cuda"
    applies = {"affine": True, "triton": has_conv and cuda and triton.available(device), "im2col": has_conv,
               "vmap": True}
    return [r for r in ("affine", "triton", "im2col", "vmap") if r in MEASURED_RULES and applies[r]]
