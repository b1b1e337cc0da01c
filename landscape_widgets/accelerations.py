"""The per-point loop's exact accelerations: each gives bitwise (or, for micro-batches, rounding-level) the values of
the plain loop, and each is used only where it pays.

- *flat writes* (:class:`FlatWrites`): a point's moving tensors are views of one flat buffer per dtype and device,
  so a point costs ``K + 1`` kernels however many tensors move;
- *input-affine layers* (:func:`affine_shortcuts`): a Linear/Conv layer that receives the data itself is affine in
  its weights, so ``f(x; W0 + sum_k c_k D_k) = f(x; W0) + sum_k c_k f(x; D_k)`` is precomputed once per batch and
  each point costs an axpy instead of a GEMM (the first layer of an MLP is a third of its FLOPs);
- *micro-batches* (:func:`plan_micro_batches`): when one batch's activations outgrow the CPU's caches (the digits
  CNN: 15 MB), it is evaluated in chunks of a few MiB of activations and the chunk losses are averaged with their
  sample weights -- the library's own definition of the loss over batches.  Used only when that equals the
  full-batch loss at the model's weights (a model or loss that couples the samples of a batch keeps the full batch).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .data import batch_tensors
from .objective import as_objective, call_model

_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
SHORTCUT_MIN_FAN_IN = 6  # per coordinate: measured on the digits MLP (64 inputs, a gain) and CNN (9, a loss)
MICRO_MIN_BYTES = 8 * 2 ** 20   # micro-batch only when the batch's largest activation is bigger than this ...
MICRO_BYTES = 4 * 2 ** 20       # ... into chunks whose largest activation is about this (caches: 2 MiB L2 per core)
MICRO_MIN_SAMPLES = 64          # and never into chunks smaller than this (per-call overheads)
MICRO_RTOL = 1e-5               # the chunked loss must equal the full-batch loss to float32 rounding


@dataclass(frozen=True)
class Tuning:
    """Where the accelerations start to pay (None: this module's measured constants): micro-batch a batch whose
    largest activation exceeds ``micro_min_bytes``, into chunks of about ``micro_bytes`` and at least
    ``micro_min_samples`` samples; the input-affine shortcut from ``shortcut_min_fan_in`` inputs per coordinate."""
    micro_min_bytes: int = None
    micro_bytes: int = None
    micro_min_samples: int = None
    shortcut_min_fan_in: int = None

    def get(self, name):
        value = getattr(self, name)
        return globals()[name.upper()] if value is None else value


DEFAULT_TUNING = Tuning()


@contextlib.contextmanager
def affine_shortcuts(evaluator, layers, moving, tuning=DEFAULT_TUNING):
    """Replace the forward of the input-affine ``layers`` (``[(layer, batch tensor)]``, :func:`input_layers`) whose
    weights move by precomputed responses; ``evaluator.coords`` is the point being evaluated.  Restored on exit."""
    min_fan_in = tuning.get("shortcut_min_fan_in")
    by_tensor = {id(m.target): m for m in moving}
    patched = []
    try:
        for module, inp in layers:
            mw = by_tensor.get(id(module.weight))
            mb = by_tensor.get(id(module.bias)) if module.bias is not None else None
            if mw is None and mb is None:
                continue
            # per output element the layer costs 2 * fan_in flops, the shortcut K + 2 passes over memory:
            # it only pays for wide inputs (an MLP's first layer, fan_in 64), not for a 1x3x3 conv
            fan_in = module.weight[0].numel()
            if fan_in < min_fan_in * (len((mw or mb).dirs) + 1):
                continue
            module.forward = _AffineShortcut(evaluator, module, inp, mw, mb)
            patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward


def plan_micro_batches(module, objective, x, y, n, *, min_samples=None, with_metrics=False, tuning=DEFAULT_TUNING):
    """``[(x_i, y_i, n_i)]``: the one in-memory batch cut into chunks whose largest activation is about
    ``MICRO_BYTES`` (or ``tuning``'s), or None where that does not pay (small activations) or is not exact.  Exact
    means: at the module's current weights the sample-weighted mean of the chunk losses equals the full-batch loss (a
    model or loss that couples the samples of a batch, or takes only the whole batch, keeps it); ``with_metrics``: the
    objective's metrics too (a metric that is no mean over samples keeps the batch whole).  Runs forward passes only;
    the caller's grad mode applies."""
    objective = as_objective(objective)
    if objective.mode != "loss_fn" or not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)
                                           and len(x) == len(y) == n):
        return None  # only (inputs, targets) tensors can be cut by sample; a batch_loss may couple its parts
    largest = _largest_output_bytes(module, x)
    if largest <= tuning.get("micro_min_bytes"):
        return None
    size = max(tuning.get("micro_min_samples") if min_samples is None else min_samples,
               int(tuning.get("micro_bytes") * n // largest))
    if 2 * size > n:
        return None
    chunks = [(x[i:i + size], y[i:i + size], len(y[i:i + size])) for i in range(0, n, size)]

    def loss(a, b):
        return float(objective(module, a, b))

    def values(a, b):
        return objective.evaluate(module, a, b).double().reshape(-1).cpu().numpy()

    if with_metrics and objective.metrics:
        full = values(x, y)
        try:
            parts = sum(values(a, b) * m for a, b, m in chunks) / n
        except Exception:  # noqa: BLE001 -- a model, loss or metric that only takes the whole batch keeps it
            return None
        # the loss as below; a metric that is NaN on the whole batch and in the mean of the chunks is the same NaN
        if not math.isclose(full[0], parts[0], rel_tol=MICRO_RTOL, abs_tol=MICRO_RTOL * 1e-3) or not np.allclose(
                parts[1:], full[1:], rtol=MICRO_RTOL, atol=MICRO_RTOL * 1e-3, equal_nan=True):
            return None
        return chunks
    full = loss(x, y)
    try:
        parts = sum(loss(a, b) * m for a, b, m in chunks) / n
    except Exception:  # noqa: BLE001 -- a model or loss that only takes the whole batch keeps it
        return None
    if not math.isclose(full, parts, rel_tol=MICRO_RTOL, abs_tol=MICRO_RTOL * 1e-3):
        return None
    return chunks


def write_tensor(m, c):
    """``m.target = m.base + sum_k c_k m.dirs[k]``, in place (the order of operations the flat writes keep)."""
    m.target.copy_(m.base)
    for ck, dk in zip(c, m.dirs):
        if dk is not None and ck != 0.0:
            m.target.add_(dk, alpha=float(ck))


class FlatWrites:
    """Moving tensors re-pointed (``.data``) at views of one flat buffer per (dtype, device), with their base and
    directions flattened in the same memory order: a point is ``flat = base + c_0 d_0`` then ``flat += c_k d_k``,
    the same arithmetic, in the same order, as writing each tensor (bitwise the same values).  Tensors whose layout
    is not dense (no flat view can stand in for them) are written one by one.  ``release`` gives every tensor its
    own storage back (the values are the caller's to restore)."""

    def __init__(self, moving):
        self.groups, self.single, self.swapped = [], [], []
        by_key = {}
        for m in moving:
            t = m.target
            dense = t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))
            (by_key.setdefault((t.dtype, t.device), []) if dense else self.single).append(m)
        for (dtype, device), ms in by_key.items():
            # every view starts 64-byte aligned, like a tensor of its own: kernels (oneDNN, MKL) pick their code
            # path, and with it the rounding, by alignment too
            align = max(1, 64 // torch.empty((), dtype=dtype).element_size())
            starts, n = [], 0
            for m in ms:
                starts.append(n)
                n += -(-m.target.numel() // align) * align
            k = max(len(m.dirs) for m in ms)
            flat = torch.zeros(n, dtype=dtype, device=device)
            base = torch.zeros(n, dtype=dtype, device=device)
            dirs = [None] * k
            for m, offset in zip(ms, starts):
                t = m.target
                view = flat.as_strided(t.size(), t.stride(), offset)
                seg = slice(offset, offset + t.numel())
                view.copy_(m.base)  # lay the values out in t's own memory order, then read them back flat
                base[seg] = flat[seg]
                for j, d in enumerate(m.dirs):
                    if d is None:
                        continue
                    if dirs[j] is None:
                        dirs[j] = torch.zeros(n, dtype=dtype, device=device)
                    view.copy_(d)
                    dirs[j][seg] = flat[seg]
                self.swapped.append((t, t.data))
                t.data = view
            self.groups.append((flat, base, dirs))

    def write(self, c):
        for flat, base, dirs in self.groups:
            first = True
            for ck, dk in zip(c, dirs):
                if dk is None or ck == 0.0:
                    continue
                if first:
                    torch.add(base, dk, alpha=float(ck), out=flat)
                    first = False
                else:
                    flat.add_(dk, alpha=float(ck))
            if first:
                flat.copy_(base)
        for m in self.single:
            write_tensor(m, c)

    def release(self):
        for t, own in self.swapped:
            t.data = own
        self.swapped = []


class _AffineShortcut:
    """Forward of a Linear/Conv layer fed the batch ``x`` itself: its output is affine in (weight, bias), so
    ``y(c) = y0 + sum_k c_k y_k`` with ``y0 = f(x; W0, b0)`` and ``y_k = f(x; D_k, e_k)`` computed once."""

    def __init__(self, evaluator, module, x, mw, mb):  # x: the batch tensor the layer takes
        self.ev = evaluator
        self.module = module
        self.x = x
        self.moving = [m for m in (mw, mb) if m is not None]
        fn = module._conv_forward if isinstance(module, nn.modules.conv._ConvNd) else \
            (lambda inp, w, b: nn.functional.linear(inp, w, b))
        self.fn = fn
        k = len((mw or mb).dirs)
        base_w = mw.base if mw is not None else module.weight
        base_b = (mb.base if mb is not None else module.bias) if module.bias is not None else None
        self.y0 = fn(x, base_w, base_b)
        self.ys = []
        for j in range(k):
            dw = mw.dirs[j] if mw is not None else None
            db = mb.dirs[j] if mb is not None else None
            if dw is None and db is None:
                self.ys.append(None)
                continue
            w = dw if dw is not None else torch.zeros_like(base_w)
            self.ys.append(fn(x, w, db))
        self.out = torch.empty_like(self.y0)

    def __call__(self, inp, *args, **kwargs):
        if inp is not self.x or args or kwargs:  # another input: the layer's own forward on its written weights
            return type(self.module).forward(self.module, inp, *args, **kwargs)
        out = self.out
        first = True
        for ck, yk in zip(self.ev.coords, self.ys):
            if yk is None:
                continue
            if first:
                torch.add(self.y0, yk, alpha=float(ck), out=out)
                first = False
            elif ck != 0.0:
                out.add_(yk, alpha=float(ck))
        if first:
            out.copy_(self.y0)
        return out


def input_layers(module, objective, x):
    """``[(layer, tensor)]``: Linear/Conv layers called with a tensor of the batch ``x`` itself (found by one traced
    forward of the objective, so that a ``batch_loss``'s own calls count too)."""
    ids = {id(t): t for t in batch_tensors(x)}
    found = {}

    def pre_hook(mod, args):
        if args and id(args[0]) in ids and mod not in found:
            found[mod] = ids[id(args[0])]

    layers = [m for m in module.modules() if type(m) in _AFFINE]
    if not layers or not ids:
        return []
    handles = [m.register_forward_pre_hook(pre_hook) for m in layers]
    try:
        objective.forward(module, x)
    finally:
        for h in handles:
            h.remove()
    return [(m, t) for m, t in found.items() if m.weight is not None]


def _largest_output_bytes(module, x) -> int:
    """Bytes of the largest tensor any submodule returns for the batch ``x`` (one traced forward)."""
    largest = [0]

    def hook(_mod, _args, out):
        if isinstance(out, torch.Tensor):
            largest[0] = max(largest[0], out.numel() * out.element_size())

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    try:
        call_model(module, x)
    finally:
        for h in handles:
            h.remove()
    return largest[0]
