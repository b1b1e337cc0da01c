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

``linear`` gets (1) for a shared input; a per-point input keeps vmap's own rule (a batched GEMM, already fast).
An eval-mode ``batch_norm`` (moving or not) becomes one multiply-add per element,
``x * s + (beta - mean * s)`` with ``s = gamma / sqrt(var + eps)`` (ATen's own CPU inference formula), where vmap's
rule normalizes, copies, multiplies and adds in five passes over the activations.

:class:`AffineMode` (a ``TorchFunctionMode``, active while vmap traces a chunk's forward) routes the calls: a
``conv2d`` or ``linear`` whose weight *is* one of the point's moving tensors, from a module or from the model's own
functional code, and whose bias moves along no direction that the weight does not.  Everything else, a weight the
model transforms first included, keeps vmap's own rule on the stacked weights, which are always passed along.
Equal to the stacked weights' result up to float rounding (tested to 1e-5 relative in float32 against a loop of
``F.conv2d``).
"""
from __future__ import annotations

import functools

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode


# the functions the mode routes, as torch defines them (F.conv2d is torch.conv2d, F.linear torch._C._nn.linear)
_CONV1D, _CONV2D, _CONV3D = torch.conv1d, torch.conv2d, torch.conv3d
_LINEAR, _BATCH_NORM = torch._C._nn.linear, F.batch_norm


class AffinePoints:
    """The moving tensors of an evaluator as ``name -> (base, stacked directions, direction indices)``."""

    def __init__(self, moving):
        self.parts = {}
        for name, base, dirs in moving:  # a tensor without directions is stacked all the same: its base, shared
            idx = tuple(k for k, d in enumerate(dirs) if d is not None)
            self.parts[name] = (base, torch.stack([dirs[k] for k in idx]) if idx else None, idx)

    def mode(self, moving: dict, coeffs, per_point_conv=None) -> "AffineMode":
        """``per_point_conv``: what computes (2) instead of cuDNN, e.g. :func:`.triton.conv2d_points` (it
        returns None where it does not apply)."""
        return AffineMode(self, moving, coeffs, per_point_conv)


def _vmaps_own_rule(fn, in_dims, *args):
    """What a rule falls back to: vmap's own batching of ``fn`` on the stacked weights."""
    return torch.vmap(fn, in_dims=in_dims)(*args), 0


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


def _conv_fn(nd):
    return (F.conv1d, F.conv2d, F.conv3d)[nd - 1]


class AffineConv(torch.autograd.Function):
    """``F.conv{nd}d(x, w, b)`` whose vmap rule uses (1) and (2) with ``w = W0 + sum_k c_k DW_k``; forward only."""

    @staticmethod
    def forward(x, c, w, b, w0, dw, b0, db, iw, ib, stride, padding, dilation, nd, per_point):
        return _conv_fn(nd)(x, w, b, stride, padding, dilation)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def vmap(info, in_dims, x, c, w, b, w0, dw, b0, db, iw, ib, stride, padding, dilation, nd, per_point):
        xd, cd, wd, bd = in_dims[:4]
        conv = _conv_fn(nd)
        if cd is None or any(d is not None for d in in_dims[4:8]) or x.dim() - (xd is not None) != nd + 2:
            fn = functools.partial(conv, stride=stride, padding=padding, dilation=dilation)
            return _vmaps_own_rule(fn, (xd, wd, bd), x, w, b)
        c = c.movedim(cd, 0)
        batch, cout, k1 = c.shape[0], w0.shape[0], 1 + len(iw)
        cc = _coefficients(c, iw, w0.dtype)
        stack = w0.unsqueeze(0) if dw is None else torch.cat([w0.unsqueeze(0), dw])  # [K+1, Cout, C, *kernel]
        ones = (1,) * nd
        if xd is None:  # (1): the shared images once through all K+1 weight sets
            y = conv(x, stack.flatten(0, 1), _bias_stack(b0, db, iw, ib, cout, x), stride, padding, dilation)
            n, spatial = y.shape[0], y.shape[2:]
            out = _combine(cc, y.reshape(n, k1, cout * spatial.numel()))
            return out.view(batch, n, cout, *spatial), 0
        # (2): every point's images scaled by its coefficients, stacked over channels, one ordinary convolution
        x = x.movedim(xd, 0)
        n = x.shape[1]
        bias = _point_bias(c, b0, db, ib)
        if per_point is not None and nd == 2:  # each point's own weights in one kernel, where it applies
            y = per_point(x, cc, stack, bias, stride, padding, dilation)
            if y is not None:
                return y, 0
        wide = stack.transpose(0, 1).flatten(1, 2)  # [Cout, (K+1)*C, *kernel], input channels ordered as xs's
        scale = cc.view(batch, 1, k1, 1, *ones).to(x.dtype)
        if nd == 2:  # channels-last: oneDNN and cuDNN's tensor-core kernels work in NHWC
            xs = torch.empty((batch * n, wide.shape[1], *x.shape[-2:]), dtype=x.dtype, device=x.device,
                             memory_format=torch.channels_last)
            torch.mul(x.unsqueeze(2), scale, out=xs.unflatten(0, (batch, n)).unflatten(2, (k1, -1)))
            wide = wide.contiguous(memory_format=torch.channels_last)
        else:
            xs = (x.unsqueeze(2) * scale).flatten(2, 3).flatten(0, 1)
        shared = bias is None or bias.dim() == 1
        y = conv(xs, wide, bias if shared else None, stride, padding, dilation).unflatten(0, (batch, n))
        return (y if shared else y + bias.view(batch, 1, cout, *ones).to(y.dtype)), 0


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
            return _vmaps_own_rule(F.linear, (xd, wd, bd), x, w, b)
        c = c.movedim(cd, 0)
        cout = w0.shape[0]
        cc = _coefficients(c, iw, w0.dtype)
        lead = x.shape[:-1]
        stack = w0.unsqueeze(0) if dw is None else torch.cat([w0.unsqueeze(0), dw])
        y = F.linear(x.reshape(-1, x.shape[-1]), stack.flatten(0, 1),
                     _bias_stack(b0, db, iw, ib, cout, x))  # [M, (K+1)*Cout]
        out = _combine(cc, y.view(len(y), cc.shape[1], cout))  # [B, M, Cout]
        return out.view(len(c), *lead, cout), 0


def _batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Eval-mode ``F.batch_norm`` as one ``addcmul``: under vmap, one pass over the activations instead of five;
    None where it does not apply (training, batch statistics, no affine parameters)."""
    if training or running_mean is None or running_var is None or weight is None or bias is None or input.dim() < 2:
        return None
    s = weight / torch.sqrt(running_var + eps)
    shape = (-1,) + (1,) * (input.dim() - 2)
    return torch.addcmul((bias - running_mean * s).view(shape), input, s.view(shape))


class AffineMode(TorchFunctionMode):
    """Active while one chunk's forward is traced by vmap (``moving``: the point's tensors as ``functional_call``
    installs them, ``coeffs``: the point's coefficients).  ``conv1d/2d/3d`` and ``linear`` calls whose weight *is*
    one of the moving tensors go through the rules above, from ``nn.Conv*d``/``nn.Linear`` (any padding mode: a
    padded input arrives with padding 0) or from a model's own ``F.conv2d(x, self.weight)`` alike; a weight the model
    transforms first (weight normalization, a mask) is another tensor and keeps vmap's own rule.  Eval-mode
    ``batch_norm`` becomes one ``addcmul``.  No module of the model is touched."""

    def __init__(self, points, moving, coeffs, per_point_conv=None):
        super().__init__()
        self.points, self.coeffs, self.per_point_conv = points, coeffs, per_point_conv
        self.names = {id(t): n for n, t in moving.items()}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = None
        nd = 2 if func is _CONV2D else 1 if func is _CONV1D else 3 if func is _CONV3D else 0
        if nd:
            out = self._conv(nd, *args, **kwargs)
        elif func is _LINEAR:
            out = self._linear(*args, **kwargs)
        elif func is _BATCH_NORM:
            out = _batch_norm(*args, **kwargs)
        return func(*args, **kwargs) if out is None else out

    def _parts(self, weight, bias):
        """(W0, DW, b0, DB, iw, ib) of a moving weight (the rules' argument order), or None when they cannot use
        them."""
        wname = self.names.get(id(weight))
        if wname is None or wname not in self.points.parts:
            return None
        w0, dw, iw = self.points.parts[wname]
        bname = None if bias is None else self.names.get(id(bias))
        b0, db, ib = (bias, None, ()) if bname is None else self.points.parts[bname]
        if not set(ib) <= set(iw):
            return None  # the bias moves along a direction the weight does not: (1)/(2) would need a zero filter
        return w0, dw, b0, db, iw, ib

    def _conv(self, nd, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        parts = self._parts(weight, bias) if groups == 1 else None
        return None if parts is None else AffineConv.apply(input, self.coeffs, weight, bias, *parts, stride,
                                                           padding, dilation, nd, self.per_point_conv)

    def _linear(self, input, weight, bias=None):
        parts = self._parts(weight, bias)
        return None if parts is None else AffineLinear.apply(input, self.coeffs, weight, bias, *parts)
