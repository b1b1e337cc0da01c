"""Trace of the Hessian from Hessian-vector products, with a standard error.

- ``"hutchinson"``: ``tr(H) ~ mean_i v_i^T H v_i`` with Rademacher ``v_i`` (Hutchinson 1989; Avron & Toledo 2011);
  the standard error is the sample standard deviation over ``sqrt(m)``.
- ``"hutch++"`` (Meyer, Musco, Musco & Woodruff 2021, arXiv 2010.09649, Algorithm 1): ``s`` products sketch
  ``Q = orth(H S)``, ``s`` more give ``tr(Q^T H Q)`` exactly, the rest estimate the trace of the deflated remainder
  ``(I - QQ^T) H (I - QQ^T)`` by Hutchinson.  Its standard error is that of the Hutchinson part given ``Q``.

Memory: the sketch is the only block of vectors held whole; the products go in chunks.  ``s`` is a third of the
products (the paper's split) when ``s + 2`` vectors fit ``memory_budget`` (default
:func:`~.lanczos.default_memory_budget`), else as many as fit; the products a smaller sketch does not use go to the
Hutchinson part, so the count stays ``samples``.  What a smaller sketch loses is variance reduction: the remainder's
variance is ``2 ||H - H_s||_F^2`` less its diagonal part, ``H_s`` the part of ``H`` the sketch captures (Meyer et al.
Thm 1.1), so the standard error grows towards plain Hutchinson's as ``s`` shrinks -- and says so.  Vectors are in the
products' precision (:func:`~.lanczos.basis_dtype`).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .lanczos import DGKS, basis_dtype, default_memory_budget, inner64, norm64

METHODS = ("hutch++", "hutchinson")


def _rademacher(rng, m, op, dtype):
    """``m`` Rademacher rows, drawn one at a time (no ``[m, P]`` int64 block)."""
    out = torch.empty((m, op.num_parameters), dtype=dtype, device=op.device)
    for r in range(m):
        out[r] = torch.from_numpy(rng.integers(0, 2, size=op.num_parameters) * 2.0 - 1.0)
    return out


def _apply(op, V, dtype):
    # the products' precision on the operator's device: no numpy BLAS threads competing with torch's
    return op.matmat_torch(V).to(dtype)


def _mean_stderr(samples):
    samples = np.asarray(samples, dtype=np.float64)
    m = len(samples)
    stderr = float(np.std(samples, ddof=1) / math.sqrt(m)) if m > 1 else float("inf")
    return float(np.mean(samples)), stderr


def _quadratic_forms(op, rng, count, chunk, dtype, Q=None):
    """``v^T H v`` of ``count`` Rademacher ``v`` (projected off the rows of ``Q`` when given), ``chunk`` at a time."""
    quad = []
    for first in range(0, count, chunk):
        G = _rademacher(rng, min(chunk, count - first), op, dtype)
        if Q is not None:  # in place: only the deflated remainder is estimated
            for r in range(len(G)):
                G[r].addmv_(Q.T, inner64(Q, G[r]).to(dtype), alpha=-1.0)
        HG = _apply(op, G, dtype)
        quad += [float(inner64(G[r:r + 1], HG[r])[0]) for r in range(len(G))]
        del G, HG
    return quad


def _orthonormal_rows(Y):
    """The rows of ``Y`` made orthonormal in place (Gram-Schmidt, twice where a pass removed most of a row);
    rows dependent on earlier ones become zero.  Returns ``Y``."""
    for i in range(len(Y)):
        y = Y[i]
        norm0 = before = after = norm64(y)
        for _ in range(2):
            if i:
                y.addmv_(Y[:i].T, inner64(Y[:i], y).to(y.dtype), alpha=-1.0)
            after = norm64(y)
            if after > DGKS * before:
                break
            before = after
        if after <= 1e-6 * max(norm0, 1e-300):  # in the span of the earlier rows
            y.zero_()
        else:
            y /= after
    return Y


def sketch_size(op, samples, memory_budget=None):
    """Hutch++'s sketch size: ``samples // 3``, or as many as fit ``memory_budget`` with a chunk of two more."""
    vector = op.num_parameters * basis_dtype(op).itemsize
    budget = default_memory_budget(op) if memory_budget is None else int(memory_budget)
    return max(0, min(samples // 3, budget // vector - 2))


def hutchinson_trace(op, samples: int, *, rng, method="hutch++", memory_budget=None):
    """``(trace, stderr, info)`` from ``samples`` products; ``memory_budget``: bytes of vectors held at once (the
    module docstring says what a small one costs)."""
    if method not in METHODS:
        raise ValueError(f"trace_method={method!r} is not known; pass one of {', '.join(map(repr, METHODS))}")
    start = op.hvps
    dtype = basis_dtype(op)
    vector = op.num_parameters * dtype.itemsize
    budget = default_memory_budget(op) if memory_budget is None else int(memory_budget)
    s = sketch_size(op, samples, budget) if method == "hutch++" and samples >= 6 else 0
    if s == 0:
        chunk = max(1, min(samples, budget // (2 * vector)))  # a chunk of vectors and their products
        trace, stderr = _mean_stderr(_quadratic_forms(op, rng, samples, chunk, dtype))
        return trace, stderr, {"method": "hutchinson", "samples": samples, "hvps": op.hvps - start}
    chunk = max(1, min(s, (budget // vector - s) // 2))
    Y = torch.empty((s, op.num_parameters), dtype=dtype, device=op.device)
    for first in range(0, s, chunk):  # Y = H S, a chunk of S at a time
        S = _rademacher(rng, min(chunk, s - first), op, dtype)
        Y[first:first + len(S)] = _apply(op, S, dtype)
        del S
    Q = _orthonormal_rows(Y)  # rows spanning the range of H S
    low_rank = 0.0
    for first in range(0, s, chunk):  # tr(Q^T H Q)
        rows = Q[first:first + chunk]
        H_rows = _apply(op, rows, dtype)
        low_rank += sum(float(inner64(rows[r:r + 1], H_rows[r])[0]) for r in range(len(rows)))
        del H_rows
    quad = _quadratic_forms(op, rng, samples - 2 * s, chunk, dtype, Q)
    rest, stderr = _mean_stderr(quad)
    return low_rank + rest, stderr, {"method": "hutch++", "samples": samples, "sketch": s,
                                     "low_rank_trace": low_rank, "hvps": op.hvps - start}
