"""2-D convolutions of many weight sets at once under ``torch.func.vmap``, without grouped convolutions.

vmap's rule for ``conv2d`` with a batched input *and* batched weights is a grouped convolution (one group per grid
point), which cuDNN runs slowly (the digits CNN was only 2.5x the per-point loop on an H200, benchmarks/RESULTS.md).
:func:`conv2d` is ``F.conv2d`` with its own vmap rule (``torch.autograd.Function.vmap``) for ``B`` points:

- weights batched, input not (a first layer): one plain convolution with the ``B * Cout`` filters stacked;
- both batched: im2col (a strided view of the padded input, one copy) and one ``bmm``
  ``[B, Cout, C*kh*kw] @ [B, C*kh*kw, N*H'*W']`` in the user's own float32 matmul precision
  (``torch.set_float32_matmul_precision("high")`` allows TF32 on CUDA; we never flip that process-wide flag
  ourselves: a worker thread must not change the precision of the user's concurrent matmuls);
- input batched, weights not: one plain convolution over the ``B * N`` images;
- anything else (groups, ``padding="same"``, non-float dtypes, unbatched 3-D images): vmap's own rule.

:func:`batched_convs` routes the ``nn.Conv2d`` layers of the evaluator's private copy through :func:`conv2d` while
a chunk of points runs.
"""
from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.utils import _pair


class BatchedConv2d(torch.autograd.Function):
    """``F.conv2d`` whose vmap rule batches points without grouped convolutions; forward only (the evaluator runs
    under ``torch.inference_mode``)."""

    @staticmethod
    def forward(x, w, b, stride, padding, dilation, groups):
        return F.conv2d(x, w, b, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass  # nothing to save: no backward

    @staticmethod
    def vmap(info, in_dims, x, w, b, stride, padding, dilation, groups):
        return _vmap_rule(info.batch_size, in_dims[:3], x, w, b, stride, padding, dilation, groups)


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    return BatchedConv2d.apply(x, w, b, stride, padding, dilation, groups)


def _plain_vmap(dims, x, w, b, stride, padding, dilation, groups):
    """vmap's own batching rule (grouped convolutions): the fallback for what the rule below does not handle."""
    fn = functools.partial(F.conv2d, stride=stride, padding=padding, dilation=dilation, groups=groups)
    return torch.vmap(fn, in_dims=dims)(x, w, b), 0


def _vmap_rule(batch, dims, x, w, b, stride, padding, dilation, groups):
    xd, wd, bd = dims
    if (groups != 1 or isinstance(padding, str) or not x.is_floating_point() or not w.is_floating_point()
            or x.dim() - (xd is not None) != 4 or w.dim() - (wd is not None) != 4):
        return _plain_vmap(dims, x, w, b, stride, padding, dilation, groups)
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    x = x if xd is None else x.movedim(xd, 0)
    w = w if wd is None else w.movedim(wd, 0)
    b = b if b is None or bd is None else b.movedim(bd, 0)
    cout = w.shape[-4]
    if wd is None:  # one weight set: a plain convolution of every point's images
        y = F.conv2d(x if xd is None else x.flatten(0, 1), w, b if bd is None else None, stride, padding, dilation)
        y = y if xd is None else y.unflatten(0, (batch, -1))
        return (y if bd is None else y + b[:, None, :, None, None]), 0
    if b is not None and bd is None:
        b = b.expand(batch, cout)
    if xd is None:  # the same images for all points: their filters stacked as output channels of one convolution
        y = F.conv2d(x, w.flatten(0, 1), None if b is None else b.flatten(), stride, padding, dilation)
        return y.unflatten(1, (batch, cout)), 1  # [N, B, Cout, H', W']: the point dim is 1, no copy
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    kh, kw = w.shape[-2:]
    n, c = x.shape[1:3]
    xp = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
    # im2col as views (windows of the dilated kernel's extent, every dh-th / dw-th element), copied once into the
    # bmm's layout: F.unfold's [B*N, C*kh*kw, H'*W'] would need a second copy (1.8x slower on a CPU)
    win = xp.unfold(3, dh * (kh - 1) + 1, sh).unfold(4, dw * (kw - 1) + 1, sw)[..., ::dh, ::dw]  # [B,N,C,H',W',kh,kw]
    ho, wo = win.shape[3:5]
    w2 = w.reshape(batch, cout, c * kh * kw)
    cols = win.permute(0, 2, 5, 6, 1, 3, 4).reshape(batch, c * kh * kw, n * ho * wo)  # the one copy
    y = torch.bmm(w2, cols) if b is None else torch.baddbmm(b.unsqueeze(-1), w2, cols)
    return y.view(batch, cout, n, ho, wo).transpose(1, 2), 0  # [B, N, Cout, H', W'] as a view


def _patched_forward(module, x, w, b):
    return conv2d(x, w, b, module.stride, module.padding, module.dilation, module.groups)


@contextlib.contextmanager
def batched_convs(module: nn.Module):
    """Route the plain ``nn.Conv2d`` layers of ``module`` (the evaluator's private copy, never the user's model)
    through :func:`conv2d`; the patched attributes are removed on exit, exceptions included.  Layers with another
    padding mode, or a subclass with its own ``_conv_forward``, keep theirs."""
    patched = []
    try:
        for m in module.modules():
            if (isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and "_conv_forward" not in vars(m)
                    and type(m)._conv_forward is nn.Conv2d._conv_forward):
                m._conv_forward = functools.partial(_patched_forward, m)
                patched.append(m)
        yield
    finally:
        for m in patched:
            del m._conv_forward
