"""Convolutions and linear layers at many grid points at once, from the affine structure of a plane, under vmap.

Every point the evaluators visit is ``theta + sum_k c_k d_k`` (a plane, a line, an interpolation), and a layer is
linear in its weights, so for a layer with weights ``W`` and directions ``D_k``

    conv(x, W + sum_k c_k D_k) = conv(x, W) + sum_k c_k conv(x, D_k)                           (1)
                               = conv([x, c_1 x, ..., c_K x], [W, D_1, ..., D_K])              (2)

with the ``K + 1`` weight sets stacked over output channels in (1) and over input channels in (2).  For a chunk of
``B`` points:

- an input that every point shares (the first layer): (1) is one convolution of the ``N`` images for *all* points,
  ``K + 1`` times one point's work instead of ``B`` times, then one ``[B, K+1] @ [K+1, N*Cout*H'*W']`` GEMM;
- every point's own input: (2) is one ordinary convolution of ``B * N`` images with ``(K + 1) * C`` input channels,
  the kind of convolution cuDNN and oneDNN run fastest, where vmap's own rule is a grouped convolution (one group
  per point, 2.5x a per-point loop on an H200, benchmarks/RESULTS.md) and im2col copies ``kh * kw`` times the input.

``nn.Linear`` gets (1) for a shared input; a per-point input keeps vmap's own rule (a batched GEMM, already fast).
An eval-mode BatchNorm (moving or not) becomes one multiply-add per element,
``x * s + (beta - mean * s)`` with ``s = gamma / sqrt(var + eps)`` (ATen's own CPU inference formula), where vmap's
rule normalizes, copies, multiplies and adds in five passes over the activations.
The rule applies only where the layer's forward passes its own moving weight unchanged (not a weight-normalized or
otherwise transformed one) and the bias moves along no direction that the weight does not; everything else falls
back to vmap's own rule on the stacked weights, which are always passed along.  Equal to the stacked weights' result
up to float rounding (``tests/test_affine_layers.py``: 1e-5 relative in float32 against a loop of ``F.conv2d``).
"""
from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn
from torch.nn import functional as F


class AffinePoints:
    """The moving tensors of an evaluator as ``name -> (base, stacked directions, direction indices)``, and the
    coefficients of the current chunk's point (``coeffs``: set by the evaluator inside the vmapped function)."""

    def __init__(self, moving):
        self.parts = {}
        for name, base, dirs in moving:  # a tensor without directions is stacked all the same: its base, shared
            idx = tuple(k for k, d in enumerate(dirs) if d is not None)
            self.parts[name] = (base, torch.stack([dirs[k] for k in idx]) if idx else None, idx)
        self.coeffs = None

    @contextlib.contextmanager
    def at(self, coeffs):
        self.coeffs = coeffs
        try:
            yield
        finally:
            self.coeffs = None


def _components(points, wname, bname, b):
    """(W0, DW, iw, b0, DB, ib) for the layer, or None when the rule cannot use them."""
    if points.coeffs is None or wname not in points.parts:
        return None
    w0, dw, iw = points.parts[wname]
    b0, db, ib = (b, None, ()) if bname not in points.parts else points.parts[bname]
    if not set(ib) <= set(iw):
        return None  # the bias moves along a direction the weight does not: (1)/(2) would need a zero filter
    return w0, dw, iw, b0, db, ib


def _coefficients(c, iw, dtype):
    """[B, K+1]: 1 for the base, then the point's c_k of the weight's directions, in the weight's dtype (the loop
    rounds c_k to it too)."""
    ck = c[:, list(iw)].to(dtype)
    return torch.cat([torch.ones_like(ck[:, :1]), ck], 1)


def _bias_stack(b0, db, iw, ib, cout, like):
    """The bias of each weight set in (1), flat [(K+1)*Cout]: b0 for the base, db_k for direction k (zero where
    the bias does not move along it)."""
    if b0 is None:
        return None
    rows = [b0.reshape(cout)]
    for k in iw:
        rows.append(db[ib.index(k)] if k in ib else torch.zeros_like(rows[0]))
    return torch.stack(rows).to(like.dtype).flatten()


def _point_bias(c, b0, db, ib):
    """[B, Cout]: b0 + sum_k c_k db_k, or the shared bias [Cout] when it does not move."""
    if db is None:
        return b0
    return b0 + _coefficients(c, ib, b0.dtype)[:, 1:] @ db


def _combine(cc, y):
    """sum_k cc[:, k] y_k for y = [M, K+1, F] computed once: [B, M, F], one small-K GEMM (y is copied once, to
    [K+1, M*F])."""
    m, k1, f = y.shape
    return (cc.to(y.dtype) @ y.transpose(0, 1).reshape(k1, m * f)).view(len(cc), m, f)


class AffineConv2d(torch.autograd.Function):
    """``F.conv2d(x, w, b)`` whose vmap rule uses (1) and (2) with ``w = W0 + sum_k c_k DW_k``; forward only."""

    @staticmethod
    def forward(x, c, w, b, w0, dw, b0, db, iw, ib, stride, padding, dilation):
        return F.conv2d(x, w, b, stride, padding, dilation)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def vmap(info, in_dims, x, c, w, b, w0, dw, b0, db, iw, ib, stride, padding, dilation):
        xd, cd, wd, bd = in_dims[:4]
        if cd is None or any(d is not None for d in in_dims[4:8]) or x.dim() - (xd is not None) != 4:
            fn = functools.partial(F.conv2d, stride=stride, padding=padding, dilation=dilation)
            return torch.vmap(fn, in_dims=(xd, wd, bd))(x, w, b), 0
        c = c.movedim(cd, 0)
        batch, cout = c.shape[0], w0.shape[0]
        cc = _coefficients(c, iw, w0.dtype)
        stack = w0.unsqueeze(0) if dw is None else torch.cat([w0.unsqueeze(0), dw])  # [K+1, Cout, C, kh, kw]
        if xd is None:  # (1): the shared images once through all K+1 weight sets
            y = F.conv2d(x, stack.flatten(0, 1), _bias_stack(b0, db, iw, ib, cout, x), stride, padding, dilation)
            n, _kc, ho, wo = y.shape
            out = _combine(cc, y.reshape(n, cc.shape[1], cout * ho * wo))
            return out.view(batch, n, cout, ho, wo), 0
        # (2): every point's images scaled by its coefficients, stacked over channels, one ordinary convolution
        x = x.movedim(xd, 0)
        n = x.shape[1]
        xs = (x.unsqueeze(2) * cc.view(batch, 1, -1, 1, 1, 1).to(x.dtype)).flatten(2, 3).flatten(0, 1)
        wide = stack.transpose(0, 1).flatten(1, 2)  # [Cout, (K+1)*C, kh, kw], input channels ordered as xs's
        bias = _point_bias(c, b0, db, ib)
        shared = bias is None or bias.dim() == 1
        y = F.conv2d(xs, wide, bias if shared else None, stride, padding, dilation).unflatten(0, (batch, n))
        return (y if shared else y + bias[:, None, :, None, None].to(y.dtype)), 0


class AffineLinear(torch.autograd.Function):
    """``F.linear(x, w, b)`` whose vmap rule uses (1) for an input shared by all points; forward only."""

    @staticmethod
    def forward(x, c, w, b, w0, dw, b0, db, iw, ib):
        return F.linear(x, w, b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def vmap(info, in_dims, x, c, w, b, w0, dw, b0, db, iw, ib):
        xd, cd, wd, bd = in_dims[:4]
        if xd is not None or cd is None or any(d is not None for d in in_dims[4:8]) or x.dim() < 1:
            return torch.vmap(F.linear, in_dims=(xd, wd, bd))(x, w, b), 0
        c = c.movedim(cd, 0)
        cout = w0.shape[0]
        cc = _coefficients(c, iw, w0.dtype)
        lead = x.shape[:-1]
        stack = w0.unsqueeze(0) if dw is None else torch.cat([w0.unsqueeze(0), dw])
        y = F.linear(x.reshape(-1, x.shape[-1]), stack.flatten(0, 1),
                     _bias_stack(b0, db, iw, ib, cout, x))  # [M, (K+1)*Cout]
        out = _combine(cc, y.view(len(y), cc.shape[1], cout))  # [B, M, Cout]
        return out.view(len(c), *lead, cout), 0


def _conv_forward(module, points, wname, bname, x, w, b):
    parts = _components(points, wname, bname, b) if w is module.weight and b is module.bias else None
    if parts is None:
        return nn.Conv2d._conv_forward(module, x, w, b)
    w0, dw, iw, b0, db, ib = parts
    return AffineConv2d.apply(x, points.coeffs, w, b, w0, dw, b0, db, iw, ib, module.stride, module.padding,
                              module.dilation)


def _linear_forward(module, points, wname, bname, x):
    w, b = module.weight, module.bias
    parts = _components(points, wname, bname, b)
    if parts is None:
        return F.linear(x, w, b)
    w0, dw, iw, b0, db, ib = parts
    return AffineLinear.apply(x, points.coeffs, w, b, w0, dw, b0, db, iw, ib)


def _batchnorm_forward(module, x):
    """Eval-mode BatchNorm as one ``addcmul``: under vmap, one pass over the activations instead of five."""
    if module.training or module.running_mean is None or module.weight is None or x.dim() < 2:
        return type(module).forward(module, x)
    module._check_input_dim(x)
    s = module.weight / torch.sqrt(module.running_var + module.eps)
    shape = (-1,) + (1,) * (x.dim() - 2)
    return torch.addcmul((module.bias - module.running_mean * s).view(shape), x, s.view(shape))


@contextlib.contextmanager
def affine_layers(module: nn.Module, points: AffinePoints):
    """Route the plain ``nn.Conv2d`` (zero padding, one group), ``nn.Linear`` and BatchNorm layers of ``module``
    (the evaluator's private copy, never the user's model) whose weights move through the rules above while a chunk
    runs; the patched attributes are removed on exit, exceptions included."""
    patched = []
    try:
        for prefix, m in module.named_modules():
            wname, bname = f"{prefix}.weight" if prefix else "weight", f"{prefix}.bias" if prefix else "bias"
            if (isinstance(m, nn.modules.batchnorm._BatchNorm) and "forward" not in vars(m)
                    and type(m).forward is nn.modules.batchnorm._BatchNorm.forward):
                # moving or not: vmap's rule copies the activations around its normalization either way
                m.forward = functools.partial(_batchnorm_forward, m)
                patched.append((m, "forward"))
            if wname not in points.parts:
                continue
            # subclasses too: _conv_forward checks that it is handed the module's own weight and bias
            if (isinstance(m, nn.Conv2d) and type(m)._conv_forward is nn.Conv2d._conv_forward
                    and m.padding_mode == "zeros" and m.groups == 1 and "_conv_forward" not in vars(m)):
                m._conv_forward = functools.partial(_conv_forward, m, points, wname, bname)
                patched.append((m, "_conv_forward"))
            elif type(m) is nn.Linear and "forward" not in vars(m):
                m.forward = functools.partial(_linear_forward, m, points, wname, bname)
                patched.append((m, "forward"))
        yield
    finally:
        for m, attr in patched:
            delattr(m, attr)
