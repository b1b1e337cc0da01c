"""Trace of the Hessian from Hessian-vector products, with a standard error.

- ``"hutchinson"``: ``tr(H) ~ mean_i v_i^T H v_i`` with Rademacher ``v_i`` (Hutchinson 1989; Avron & Toledo 2011);
  the standard error is the sample standard deviation over ``sqrt(m)``.
- ``"hutch++"`` (Meyer, Musco, Musco & Woodruff 2021, arXiv 2010.09649, Algorithm 1): a third of the products
  sketch ``Q = orth(H S)``, a third give ``tr(Q^T H Q)`` exactly, the last third estimate the trace of the deflated
  rest ``(I - QQ^T) H (I - QQ^T)`` by Hutchinson.  Its standard error is that of the Hutchinson part given ``Q``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

METHODS = ("hutch++", "hutchinson")


def _rademacher(rng, m, op):
    return torch.from_numpy(rng.integers(0, 2, size=(m, op.num_parameters)) * 2.0 - 1.0).to(op.device)


def _apply(op, V):
    # float64 torch on the operator's device: no numpy BLAS threads competing with torch's on a small machine
    return op.matmat_torch(V).double()


def _mean_stderr(samples):
    samples = samples.cpu().numpy()
    m = len(samples)
    stderr = float(np.std(samples, ddof=1) / math.sqrt(m)) if m > 1 else float("inf")
    return float(np.mean(samples)), stderr


def hutchinson_trace(op, samples: int, *, rng, method="hutch++"):
    """``(trace, stderr, info)`` from ``samples`` products (Hutch++ uses them in three equal parts)."""
    if method not in METHODS:
        raise ValueError(f"trace_method={method!r} is not known; pass one of {', '.join(map(repr, METHODS))}")
    start = op.hvps
    if method == "hutchinson" or samples < 6:
        G = _rademacher(rng, samples, op)
        quad = (G * _apply(op, G)).sum(1)
        trace, stderr = _mean_stderr(quad)
        return trace, stderr, {"method": "hutchinson", "samples": samples, "hvps": op.hvps - start}
    s = samples // 3
    S = _rademacher(rng, s, op)
    Q = torch.linalg.qr(_apply(op, S).T)[0]  # [P, s], orthonormal columns spanning H S
    low_rank = float((Q.T * _apply(op, Q.T)).sum())  # tr(Q^T H Q)
    G = _rademacher(rng, samples - 2 * s, op)
    G = G - (G @ Q) @ Q.T  # project out the sketched range: only the deflated remainder is estimated
    quad = (G * _apply(op, G)).sum(1)
    rest, stderr = _mean_stderr(quad)
    return low_rank + rest, stderr, {"method": "hutch++", "samples": samples, "sketch": s,
                                     "low_rank_trace": low_rank, "hvps": op.hvps - start}
