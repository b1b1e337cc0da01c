"""Every grid point's convolution with its own weights, as one Triton implicit-GEMM kernel (the ``"triton"`` rule).

The affine rule (:mod:`~landscape_widgets.gpu.affine`) computes a convolution whose input differs per point as
one cuDNN convolution over ``[x, c_1 x, ..., c_K x]`` (its form (2)): ``K + 1`` times the FLOPs and a ``K + 1``
times wider input written and read again.  Here each point's weights ``W_p = W0 + sum_k c_pk D_k`` (``[B,
Cout*C*kh*kw]``, float32 multiply-adds) go into one kernel launch for all ``B`` points: program ``(m, n, p)`` computes
a ``BLOCK_M x BLOCK_N`` tile of point ``p``'s output as ``sum_{kh, kw, c} x[p, pixel + tap, c] W_p[tap, c, :]``
(implicit GEMM: the im2col matrix is never written), so a point costs its own FLOPs and one read of its input.

Float32 only (TF32 inputs to the tensor cores where ``torch.backends.cudnn.allow_tf32`` lets cuDNN use them in
the per-point loop too, full float32 otherwise); anything else -- other dtypes, groups, string padding that is
not symmetric -- keeps the affine rule's cuDNN form.  Runs on CUDA devices; on a CPU only under Triton's own
interpreter (``TRITON_INTERPRET=1``), which is how the tests check it against ``F.conv2d``.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import sys
import warnings

import torch

from ..runtime import is_oom

BLOCK_M = 128  # output pixels per program: the M dim of the tensor-core tile (interpreter; autotuned on GPUs)


def available(device) -> bool:
    """Whether the kernel can run on ``device``: Triton installed, and a CUDA device or Triton's interpreter."""
    if importlib.util.find_spec("triton") is None:
        return False
    return torch.device(device).type == "cuda" or _interpreting()


def why_unavailable(device) -> str | None:
    """None when :func:`available`, else what to do instead (for the evaluator's error message)."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install triton, or pass rule='affine')"
    if torch.device(device).type != "cuda" and not _interpreting():
        return (f"the Triton kernel runs on CUDA devices, not {torch.device(device).type} (set TRITON_INTERPRET=1 "
                f"before importing triton to run it in Triton's interpreter for testing, or pass rule='affine')")
    return None


def _interpreting() -> bool:
    """TRITON_INTERPRET=1, set before Triton was imported (Triton builds its own library for the interpreter or for
    GPUs at import)."""
    if os.environ.get("TRITON_INTERPRET", "0").lower() not in ("1", "true", "on", "yes"):
        return False
    lang = sys.modules.get("triton.language")
    return lang is None or type(lang.zeros).__name__ == "InterpretedFunction"


# (BLOCK_M, num_warps, num_stages, FLAT) timed by triton.autotune on a GPU once per layer shape, whatever the chunk
# size (one point's N*H*W output pixels are thousands of tiles already, so the first chunk's choice holds; the first
# chunk is a warm-up in the evaluator's own timing); from torch inductor's convolution configs, with BLOCK_N, BLOCK_K
# fixed by the layer's channels.  FLAT: taps and channel blocks in one software-pipelined loop, with at most 4 warps
# (inductor's cap: triton#1254 miscompiles that loop with 8); else the taps unrolled.
CONFIGS = ((128, 4, 2, False), (256, 8, 2, False), (64, 4, 3, False), (128, 4, 3, True), (64, 4, 4, True),
           (256, 4, 3, True))


class KernelState:
    """What an evaluator learned about the kernel on its device: ``failures`` (kernel variant -> why it failed
    there; that variant then keeps cuDNN's form) and ``verified`` (variants whose output agreed with ``F.conv2d``
    at two points, see :func:`_verify`); ``interpreter_flat``: the loop form Triton's interpreter runs (FLAT of
    ``CONFIGS``; on GPUs the autotuner picks it)."""

    def __init__(self, interpreter_flat=False):
        self.failures = {}
        self.verified = set()
        self.interpreter_flat = interpreter_flat


@functools.lru_cache(maxsize=2)
def _kernel(interpret: bool):
    """The autotuned jitted kernel (CUDA) or Triton's interpreted one (CPU tensors, ``BLOCK_M`` passed); built on
    first use, so that importing the package never imports Triton."""
    import triton

    from ._triton_kernel import conv_kernel as fn
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction
        return InterpretedFunction(fn)
    configs = [triton.Config({"BLOCK_M": m, "FLAT": flat}, num_warps=w, num_stages=st) for m, w, st, flat in CONFIGS]
    key = ["C", "COUT", "HO", "WO", "KH", "KW", "STRIDE_H", "STRIDE_W", "DIL_H", "DIL_W", "HAS_BIAS"]
    return triton.autotune(configs, key=key)(triton.jit(fn))


def chosen_configs() -> dict:
    """What Triton's autotuner picked on this GPU so far, per key (C, COUT, HO, WO, KH, KW, strides, dilations,
    bias, dtypes): for benchmarks."""
    if not available("cuda"):
        return {}
    return {k: str(v) for k, v in getattr(_kernel(False), "cache", {}).items()}


def _pair(v, name):
    if isinstance(v, int):
        return v, v
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return tuple(v)
    raise TypeError(f"{name}={v!r}")


def _padding(padding, kernel, dilation):
    """(pad_h, pad_w), or None for a string padding that would pad one side more than the other."""
    if padding == "valid":
        return 0, 0
    if padding == "same":
        total = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return None if any(t % 2 for t in total) else (total[0] // 2, total[1] // 2)
    return _pair(padding, "padding")


def _pow2(n, lo, hi):
    return max(lo, min(hi, 1 << max(0, int(n) - 1).bit_length()))


def _cdiv(a, b):
    return (a + b - 1) // b


def conv2d_points(x, cc, stack, bias, stride, padding, dilation, *, state=None):
    """``F.conv2d(x[p], W_p, bias[p])`` for every point ``p``, with ``W_p = sum_j cc[p, j] stack[j]``; ``state``: the
    caller's :class:`KernelState` (a throwaway one if None).  The points of one call (at most the vmap executor's
    largest chunk) fit a CUDA grid's z axis.

    x: [B, N, C, H, W]; cc: [B, K+1] (1 for the base, then the point's coefficients); stack: [K+1, Cout, C, kh, kw];
    bias: None, shared [Cout] or per point [B, Cout].  Returns [B, N, Cout, Ho, Wo], or None where the kernel does
    not apply (the caller then keeps cuDNN)."""
    if x.dtype != torch.float32 or stack.dtype != torch.float32 or not available(x.device):
        return None
    state = KernelState() if state is None else state
    kernel = tuple(stack.shape[-2:])
    dil = _pair(dilation, "dilation")
    pad = _padding(padding, kernel, dil)
    if pad is None:
        return None
    st = _pair(stride, "stride")
    batch, n, c, h, w = x.shape
    k1, cout = stack.shape[:2]
    channels_last = x.stride(2) == 1 and c > 1
    # what selects a different compiled kernel (layout and bias change its specialization): failures and checks
    # are per variant
    shape = (c, cout, h, w, kernel, st, pad, dil, "nhwc" if channels_last else "nchw",
             "no bias" if bias is None else "bias" if bias.dim() == 1 else "bias per point")
    if shape in state.failures:
        return None
    ho = (h + 2 * pad[0] - dil[0] * (kernel[0] - 1) - 1) // st[0] + 1
    wo = (w + 2 * pad[1] - dil[1] * (kernel[1] - 1) - 1) // st[1] + 1
    # every point's weights, laid out [B, kh, kw, C, Cout] so a program's [BLOCK_K, BLOCK_N] slice is contiguous;
    # W0 + c_1 D_1 + ... in float32 multiply-adds, the loop's own order (a GEMM would follow the user's matmul
    # precision, TF32 under torch.set_float32_matmul_precision("high"))
    flat = stack.permute(0, 3, 4, 2, 1).reshape(k1, -1)
    cc = cc.to(stack.dtype)
    weights = flat[0] * cc[:, :1]
    for j in range(1, k1):
        weights.addcmul_(cc[:, j:j + 1], flat[j])
    y = torch.empty((batch * n, cout, ho, wo), dtype=x.dtype, device=x.device,
                    memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    y = y.view(batch, n, cout, ho, wo)
    if batch * n * ho * wo == 0 or cout == 0:
        return y.zero_()
    if bias is not None:
        bias = bias.to(x.dtype).contiguous()
    block_n, block_k = _pow2(cout, 16, 64), _pow2(c, 16, 32)
    m = n * ho * wo
    interpret = x.device.type != "cuda" or _interpreting()  # TRITON_INTERPRET=1: everything interpreted, as in Triton
    tf32 = torch.backends.cudnn.allow_tf32 and not interpret  # the precision of the loop's cuDNN convolutions
    meta = dict(KH=kernel[0], KW=kernel[1], STRIDE_H=st[0], STRIDE_W=st[1], PAD_H=pad[0], PAD_W=pad[1],
                DIL_H=dil[0], DIL_W=dil[1], HAS_BIAS=bias is not None, PRECISION="tf32" if tf32 else "ieee",
                BLOCK_N=block_n, BLOCK_K=block_k)
    if interpret:
        meta.update(BLOCK_M=BLOCK_M, FLAT=state.interpreter_flat)

    def grid(cfg):
        return _cdiv(m, cfg["BLOCK_M"]), _cdiv(cout, block_n), batch

    try:
        _kernel(interpret)[grid](
            x, weights, bias if bias is not None else weights, y, m, c, h, w, cout, ho, wo,
            *x.stride(), *y.stride(), cout if bias is not None and bias.dim() == 2 else 0, **meta)
        if shape not in state.verified and _verify(y, x, weights, bias, kernel, st, pad, dil, tf32):
            state.verified.add(shape)
    except Exception as exc:  # noqa: BLE001 -- a kernel that does not compile, launch or agree: cuDNN's form instead
        if is_oom(exc):  # the evaluator halves its chunk
            raise
        state.failures[shape] = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"the Triton convolution failed for a layer of shape {shape} and falls back to cuDNN: "
                      f"{state.failures[shape]}", RuntimeWarning, stacklevel=2)
        return None
    return y


class WrongResult(RuntimeError):
    """The kernel's output disagrees with cuDNN's on the same point."""


def _verify(y, x, weights, bias, kernel, stride, padding, dilation, tf32) -> bool:
    """The first and last points' outputs against ``F.conv2d`` at their weights, until a kernel variant has been
    checked at two points, the last one not the first (a compiler bug on some device and config -- Triton's #1254
    gave wrong convolutions with 8 warps -- must not become a wrong landscape).  Relative error in norm: TF32 rounds
    inputs to 10 bits (about 5e-4), a wrong kernel is O(1) off.  A point whose input or weights are not finite
    (NaN/inf losses are data) proves nothing either way.  True once two points were checked."""
    from torch.nn import functional as F

    batch, cout, c = len(y), y.shape[2], x.shape[2]
    checked = 0
    for p in sorted({0, batch - 1}):
        w = weights[p].view(*kernel, c, cout).permute(3, 2, 0, 1)
        b = None if bias is None else bias[p] if bias.dim() == 2 else bias
        if not (torch.isfinite(x[p]).all() and torch.isfinite(w).all() and (b is None or torch.isfinite(b).all())):
            continue
        ref = F.conv2d(x[p], w, b, stride, padding, dilation)
        if not torch.isfinite(ref).all():  # overflow in float32: as unprovable as a non-finite input
            continue
        err = float((y[p] - ref).norm() / ref.norm().clamp_min(1e-30))
        if not err <= (1e-2 if tf32 else 1e-5):  # NaN fails too
            raise WrongResult(f"point {p} of {batch} differs from F.conv2d by {err:.2e} (relative, in norm)")
        checked += 1
    return checked == 2
