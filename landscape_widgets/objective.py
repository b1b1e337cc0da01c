"""How one batch of data becomes a scalar loss: the three ways ``Landscape`` accepts.

- ``loss_fn(outputs, targets)`` with ``(inputs, targets)`` batches;
- the model's own output (``loss_fn=None``, the HuggingFace convention: ``out.loss``, ``out["loss"]`` or a scalar);
- ``batch_loss(model, batch)``, where ``model`` carries the point's weights (regularizers, several forwards).

Every evaluator, the Hessian products and the Dask workers compute a batch's loss through :class:`Objective`, so
the three ways are exact everywhere, not only in the per-point loop.

``metrics`` (accuracy and the like, which Li et al.'s reference code records beside the loss at every point) are
computed on the outputs of the same forward pass as the loss: :meth:`Objective.evaluate` gives the vector
``[loss, m_1, ..., m_M]`` of one batch, which every executor averages over batches with the same sample weights as
the loss.  Nothing differentiates them (the Hessian products use the loss alone).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch
from torch import nn
from torch.func import functional_call

from .data import index_batch, warn_user

MODES = ("loss_fn", "output", "batch_loss")
RESERVED_NAMES = ("loss", "alpha", "beta")  # the loss itself and the grid's axes (results, to_xarray)
MEAN_REDUCTIONS = ("mean", "batchmean")  # torch's reductions that are a mean over the batch's samples
MEAN_CHECK_SAMPLES = 32  # the batch-mean check: the first batch's first samples, whole and in two halves
# a sum over the batch is twice its halves' mean; a token mean over unequal lengths, a class-weighted mean or a
# regularizer added to each batch's loss stay well inside this
MEAN_CHECK_RTOL = 0.2


class LossReductionWarning(UserWarning):
    """The loss of a batch does not look like a mean over its samples (a sum, say), which the library assumes."""


def check_reduction(loss_fn) -> None:
    """A torch loss module that sums (or keeps per-sample losses) is an error: the library takes each batch's loss
    as the mean over its samples, and the full-data loss as the sample-weighted mean of the batch losses."""
    reduction = getattr(loss_fn, "reduction", None) if isinstance(loss_fn, nn.Module) else None
    if reduction in ("sum", "none"):
        name = type(loss_fn).__name__
        raise ValueError(
            f"loss_fn={name}(reduction={reduction!r}) {'sums' if reduction == 'sum' else 'keeps one loss per sample'}"
            f" over the batch, but the library takes each batch's loss as the mean over its samples (the loss over all "
            f"the data is the sample-weighted mean of the batch losses, so that unequal batches weigh right); pass "
            f"{name}(reduction='mean') (the default)")


def call_model(module, inputs):
    """``module(**inputs)`` for a dict, ``module(*inputs)`` for a tuple or list, else ``module(inputs)``."""
    if isinstance(inputs, Mapping):
        return module(**inputs)
    if isinstance(inputs, (list, tuple)):
        return module(*inputs)
    return module(inputs)


def call_args(inputs):
    """``call_model``'s conventions as ``(args, kwargs)``."""
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, (list, tuple)):
        return tuple(inputs), {}
    return (inputs,), {}


def check_loss(value, what="loss_fn") -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        if isinstance(value, (int, float)):
            return torch.tensor(float(value), dtype=torch.float64)
        raise TypeError(f"{what} must return a scalar tensor (the mean over the batch), got {type(value).__name__}")
    if value.numel() != 1:
        raise ValueError(f"{what} must return a scalar (the mean over the batch), got a tensor of shape "
                         f"{tuple(value.shape)}; reduce it, e.g. with reduction='mean'")
    return value.reshape(())


def check_metric(value, name, like) -> torch.Tensor:
    """A metric's value for one batch as a float64 scalar on ``like``'s device (NaN is a value like any other)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"metric {name!r} must return a scalar (the mean over the batch), got a tensor of shape "
                             f"{tuple(value.shape)}; reduce it, e.g. with .float().mean()")
        return value.reshape(()).double()
    if isinstance(value, numbers.Real):
        return torch.tensor(float(value), dtype=torch.float64, device=like.device)
    raise TypeError(f"metric {name!r} must return a scalar tensor or a number (the mean over the batch), got "
                    f"{type(value).__name__}")


def check_metrics(metrics, mode) -> dict:
    """``metrics`` as an ordered dict name -> callable, validated: None or a mapping of names (str, none of
    ``RESERVED_NAMES``) to callables; ``batch_loss`` has no outputs to give them."""
    if metrics is None:
        return {}
    signature = "fn(outputs, batch)" if mode == "output" else "fn(outputs, targets)"
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a dict name -> {signature} -> scalar (e.g. {{'accuracy': fn}}), got "
                        f"{type(metrics).__name__}")
    if metrics and mode == "batch_loss":
        raise ValueError("metrics= needs the model's outputs, which batch_loss(model, batch) keeps to itself; "
                         "compute the loss from the outputs instead: pass loss_fn(outputs, targets), or loss_fn=None "
                         "with a model (or a wrapper module around it) whose output carries the loss next to what the "
                         "metrics read (e.g. {'loss': ..., 'logits': ...}), so that each metric gets the outputs of "
                         "the loss's own forward pass")
    out = {}
    for name, fn in metrics.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"metric names must be non-empty strings, got {name!r}")
        if name in RESERVED_NAMES:
            raise ValueError(f"metric name {name!r} is taken ({', '.join(map(repr, RESERVED_NAMES))} name the loss "
                             "and the grid's axes); pass another name")
        if not callable(fn):
            raise TypeError(f"metric {name!r} must be callable as {signature} -> scalar, got {type(fn).__name__}")
        out[name] = fn
    return out


def output_loss(out) -> torch.Tensor:
    """The loss a model returns: ``out.loss``, ``out["loss"]``, or ``out`` itself when it is a scalar tensor."""
    loss = None
    if isinstance(out, torch.Tensor):
        if out.numel() == 1:
            loss = out
    elif isinstance(out, Mapping):
        loss = out.get("loss")
    else:
        loss = getattr(out, "loss", None)
    if loss is None:
        kind = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"loss_fn=None means the model's output carries the loss (out.loss, out['loss'] or a scalar), but it "
            f"returned {kind} without one. Either pass loss_fn(outputs, targets) with (inputs, targets) batches, "
            "or batch_loss(model, batch) -> scalar tensor; with HuggingFace models put the labels in the batch "
            "(e.g. {'input_ids': ..., 'labels': ...})")
    return check_loss(loss, "the model's loss output")


class _BoundLoss(nn.Module):
    """``batch_loss(model, batch)`` as a module whose only child is the model, so that ``functional_call`` (Hessian
    products, vmap) swaps the point's weights into the model that ``batch_loss`` sees."""

    def __init__(self, model, fn):
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, batch):
        return self.fn(self.model, batch)


class Objective:
    """The loss of one batch: ``objective(module, x, y)`` with ``(x, y)`` as :class:`~landscape_widgets.data.
    DataSource` yields them (``y`` is None unless ``mode == "loss_fn"``: the whole batch is ``x`` then).

    ``metrics``: name -> ``fn(outputs, targets)`` (with ``loss_fn``) or ``fn(outputs, batch)`` (the model's own
    loss), each a scalar: the mean over the batch, as the loss.  :meth:`evaluate` gives the loss and the metrics of
    one forward pass; ``width`` is their count, ``1 + len(metrics)``."""

    def __init__(self, loss_fn=None, batch_loss=None, metrics=None):
        if loss_fn is not None and batch_loss is not None:
            raise ValueError("pass either loss_fn(outputs, targets) or batch_loss(model, batch), not both: "
                             "batch_loss computes the whole loss itself")
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(outputs, targets), got {type(loss_fn).__name__}; "
                            "or pass loss_fn=None when the model's output carries the loss")
        if batch_loss is not None and not callable(batch_loss):
            raise TypeError(f"batch_loss must be callable as batch_loss(model, batch) -> scalar tensor, got "
                            f"{type(batch_loss).__name__}")
        if loss_fn is not None:
            check_reduction(loss_fn)
        self.loss_fn = loss_fn
        self.batch_loss = batch_loss
        self.mode = "loss_fn" if loss_fn is not None else "batch_loss" if batch_loss is not None else "output"
        self.metrics = check_metrics(metrics, self.mode)
        self.metric_names = tuple(self.metrics)
        self.width = 1 + len(self.metrics)

    @property
    def fn(self):
        """The user's callable (None for the model's own loss): what identifies the loss of a stored run."""
        return self.loss_fn if self.mode == "loss_fn" else self.batch_loss

    @property
    def splits(self) -> bool:
        """Whether a batch's loss is ``reduce(forward(module, x), y)`` (vmap can then fall back per point on the
        batched outputs); ``batch_loss`` is one indivisible call."""
        return self.mode != "batch_loss"

    def forward(self, module, x):
        if self.mode == "batch_loss":
            return self.batch_loss(module, x)
        return call_model(module, x)

    def reduce(self, out, y) -> torch.Tensor:
        if self.mode == "loss_fn":
            return check_loss(self.loss_fn(out, y))
        if self.mode == "output":
            return output_loss(out)
        return check_loss(out, "batch_loss")

    def __call__(self, module, x, y) -> torch.Tensor:
        return self.reduce(self.forward(module, x), y)

    def values(self, out, x, y) -> torch.Tensor:
        """The loss of the outputs ``out`` (a scalar, as :meth:`reduce`) without metrics; with them the float64
        vector ``[loss, m_1, ..., m_M]``, every metric on the same ``out``."""
        loss = self.reduce(out, y)
        if not self.metrics:
            return loss
        arg = y if self.mode == "loss_fn" else x
        return torch.stack([loss.double()] + [check_metric(fn(out, arg), name, loss)
                                              for name, fn in self.metrics.items()])

    def evaluate(self, module, x, y) -> torch.Tensor:
        """:meth:`values` of one forward pass of ``module`` on the batch."""
        return self.values(self.forward(module, x), x, y)

    def functional_forward(self, module, params: dict, x):
        """``forward`` with ``params`` (name -> tensor, the model's own names) in place of the module's tensors."""
        if self.mode == "batch_loss":
            return functional_call(_BoundLoss(module, self.batch_loss), {f"model.{n}": t for n, t in params.items()},
                                   (x,))
        args, kwargs = call_args(x)
        return functional_call(module, params, args, kwargs)

    def functional(self, module, params: dict, x, y) -> torch.Tensor:
        return self.reduce(self.functional_forward(module, params, x), y)

    @property
    def known_mean(self) -> bool:
        """Whether a batch's loss is a mean over its samples by construction: a torch loss module with a mean
        reduction, or the model's own loss (HuggingFace's convention); a plain callable is checked
        (:meth:`check_mean`)."""
        if self.mode == "output":
            return True
        return self.mode == "loss_fn" and isinstance(self.loss_fn, nn.Module) \
            and getattr(self.loss_fn, "reduction", None) in MEAN_REDUCTIONS

    def check_mean(self, module, x, y, n) -> None:
        """Warn (:class:`LossReductionWarning`) when the loss of the batch's first samples is not about the
        sample-weighted mean of its two halves' losses, as a sum over the batch would be (twice it).  Three forward
        passes of at most ``MEAN_CHECK_SAMPLES`` samples; a batch that cannot be cut by sample is not checked."""
        if self.known_mean or n is None or n < 2:
            return
        m = min(n, MEAN_CHECK_SAMPLES)
        h = m // 2
        parts = [torch.arange(0, m), torch.arange(0, h), torch.arange(h, m)]
        try:  # every tensor whose first dimension is the batch's is cut; a model or loss that takes only the whole
            # batch (or tensors of that size that are no samples) fails here and is not checked
            whole, a, b = (float(self(module, index_batch(x, i, n), None if y is None else index_batch(y, i, n)))
                           for i in parts)
        except Exception:  # noqa: BLE001
            return
        halves = (h * a + (m - h) * b) / m
        scale = max(abs(whole), abs(a), abs(b))
        if not all(math.isfinite(v) for v in (whole, halves)) or scale <= 1e-12 \
                or abs(whole - halves) <= MEAN_CHECK_RTOL * scale:
            return
        what = "loss_fn(outputs, targets)" if self.mode == "loss_fn" else "batch_loss(model, batch)"
        warn_user(f"{what} does not look like a mean over the batch's samples: on the first {m} samples of the first "
                  f"batch it gave {whole:.6g}, while the sample-weighted mean of its two halves' losses ({h} and "
                  f"{m - h} samples) is {halves:.6g}. The library assumes that each batch's loss is the mean over its "
                  "samples, and takes the loss over all the data as the sample-weighted mean of the batch losses; a "
                  "sum over the batch scales the landscape with the batch size and weighs unequal batches wrongly. "
                  "Return the mean over the batch (reduction='mean', .mean() rather than .sum()); a loss that couples "
                  "the samples of a batch on purpose (in-batch negatives) may ignore this warning",
                  LossReductionWarning)

    def describe(self) -> str:
        return {"loss_fn": "loss_fn(outputs, targets)", "output": "the model's output loss",
                "batch_loss": "batch_loss(model, batch)"}[self.mode]


def as_objective(obj) -> Objective:
    """An :class:`Objective`, or a plain ``loss_fn(outputs, targets)`` made into one."""
    return obj if isinstance(obj, Objective) else Objective(loss_fn=obj)


__all__ = ["MODES", "RESERVED_NAMES", "LossReductionWarning", "Objective", "as_objective", "call_args", "call_model",
           "check_loss", "check_metric", "check_metrics", "check_reduction", "output_loss"]
