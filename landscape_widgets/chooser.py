"""Which executor evaluates a plan: the policy, in one place.

``evaluator``: ``"auto"`` (vmap-batched points on CUDA, where they were measured to pay; the per-point loop
elsewhere and whenever points need a per-point hook), ``"loop"``, ``"vmap"`` (the device's default rule),
``"vmap:<rule>"`` with a rule of :mod:`~landscape_widgets.gpu`, or an :class:`~landscape_widgets.executor.Executor`
itself.  With ``"auto"`` on CUDA the vmap executor times its measured rules against the loop on the first large tile
and keeps the faster path.  ``client``: where the plan runs instead of this process: an executor that runs plans
elsewhere, or a ``dask.distributed.Client`` (:class:`~landscape_widgets.distributed.Workers`); the plan's own
``evaluator`` is then chosen there, on the workers' device.
"""
from __future__ import annotations

import torch

from .batched import VmapExecutor
from .distributed import Workers
from .executor import Executor
from .gpu import DEFAULT_RULES, MEASURED_RULES, RULES, default_rule, tuned_rules  # noqa: F401 -- the policy's facts
from .loop import LoopExecutor

EVALUATORS = ("auto", "loop", "vmap") + tuple(f"vmap:{r}" for r in RULES)


def check_evaluator(evaluator):
    """``evaluator`` when it is a name of :data:`EVALUATORS` or an :class:`~landscape_widgets.executor.Executor`."""
    if isinstance(evaluator, Executor):
        return evaluator
    if evaluator not in EVALUATORS:
        raise ValueError(f"evaluator={evaluator!r} is not known; pass one of {', '.join(map(repr, EVALUATORS))} "
                         "or an Executor")
    return evaluator


def requested_rule(evaluator):
    """The rule named by ``"vmap:<rule>"``, else None (the device's default, or "auto"'s choice)."""
    return evaluator.split(":", 1)[1] if evaluator.startswith("vmap:") else None


def choose(evaluator, device, *, buffers=None) -> Executor:
    """The executor ``evaluator`` means on ``device`` (``buffers="recompute"``: points need a per-point hook)."""
    check_evaluator(evaluator)
    if isinstance(evaluator, Executor):
        return evaluator
    if evaluator == "auto":
        if torch.device(device).type == "cuda" and buffers != "recompute":
            return VmapExecutor("auto", autotune=True)
        return LoopExecutor("loop")  # recorded as what ran: "auto" on a CPU is the loop
    if evaluator.startswith("vmap"):
        return VmapExecutor(evaluator, rule=requested_rule(evaluator))
    return LoopExecutor("loop")


def executor_for(plan, client=None) -> Executor:
    """The executor that runs ``plan``: its own (``plan.executor``) in this process, or ``client``'s."""
    if client is None:
        return plan.executor
    return client if isinstance(client, Executor) else Workers(client)
