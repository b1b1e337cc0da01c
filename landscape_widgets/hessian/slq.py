"""Spectral density of the Hessian by stochastic Lanczos quadrature (Ghorbani, Krishnan & Xiao 2019, arXiv
1901.10159, §2 and Algorithm 1; Golub & Meurant 2010 for Gauss quadrature).

For each run a Rademacher vector ``v`` (normalized) starts ``m`` Lanczos steps;
the tridiagonal ``T_m = Y diag(theta) Y^T`` gives Gauss-quadrature nodes ``theta_k`` and weights
``w_k = Y[0, k]^2`` of the measure ``v^T delta(t - H) v`` (eq. 4-6).  The density is the average over runs of
``sum_k w_k N(t; theta_k, sigma^2)`` (eq. 7), with ``sigma^2 = 1e-5 max(1, lambda_hi - lambda_lo)`` by default as in
the authors' code (google/spectral-density, ``density.py``).  Runs go in lockstep, as many at a time as the memory
budget holds, so that a DataLoader is read once per step for all of them (one block product).

Memory: a run with full reorthogonalization keeps its ``m + 1`` Lanczos vectors; when that does not fit
``memory_budget`` (default :func:`~.lanczos.default_memory_budget`, the extreme eigenpairs' budget), the run keeps
three (the plain three-term recurrence).  Without reorthogonalization converged Ritz values come back as spurious
copies, but the quadrature stays accurate: finite-precision Lanczos is exact Gauss quadrature for a distribution
whose points cluster within rounding of the eigenvalues (Greenbaum 1989; Meurant & Strakos 2006, Acta Numerica
15, §4-5), and a copy splits its weight with the original.  The vectors are in the products' precision
(:func:`~.lanczos.basis_dtype`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import ndtr

from .lanczos import basis_dtype, default_memory_budget, inner64, invariant_threshold, lanczos_residual, norm64

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz


def plan(op, steps, runs, memory_budget=None):
    """``(reorthogonalize, runs per block)`` for ``runs`` quadratures of ``steps`` steps within the budget:
    full reorthogonalization when one run's ``steps + 1`` vectors and its product fit, else the three-term
    recurrence (three vectors per run)."""
    vector = op.num_parameters * basis_dtype(op).itemsize
    budget = default_memory_budget(op) if memory_budget is None else int(memory_budget)
    full = (min(steps, op.num_parameters) + 2) * vector
    reorthogonalize = full <= budget
    per_run = full if reorthogonalize else 3 * vector
    return reorthogonalize, max(1, min(runs, budget // per_run))


def lanczos_quadrature(op, steps: int, runs: int, *, rng, on_step=None, memory_budget=None):
    """Nodes and weights of ``runs`` Lanczos quadratures with ``steps`` steps each.

    Returns ``(nodes, weights)``: lists with one array per run (a run stops early, with fewer nodes, when its
    Krylov space is exhausted -- ``beta`` below :func:`~.lanczos.invariant_threshold` ``|T|``, which happens
    only when ``steps`` nears ``P``).  ``memory_budget``: bytes of Lanczos vectors held at once (see the module
    docstring); it chooses between full reorthogonalization and none, and how many runs share a block product.
    The vectors are torch tensors on the operator's device: the reorthogonalization then shares torch's thread
    pool with the products instead of fighting it with numpy's BLAS threads (measured 100x slower on a busy
    2-core machine).  The start vectors are drawn one run at a time, so the blocks do not change them.
    """
    P = op.num_parameters
    steps = min(steps, P)  # a Krylov space of R^P has at most P dimensions
    breakdown = invariant_threshold(op)  # below this beta is rounding noise of the recurrence
    reorthogonalize, block = plan(op, steps, runs, memory_budget)
    dtype = basis_dtype(op)
    nodes, weights = [], []
    run = _lockstep if reorthogonalize else _three_term

    def fill(out):  # normalized Rademacher start vectors, drawn one run at a time
        for r in range(out.shape[0]):
            out[r] = torch.from_numpy(rng.integers(0, 2, size=P) * (2.0 / math.sqrt(P)) - 1.0 / math.sqrt(P))

    for first in range(0, runs, block):
        n, w = run(op, fill, min(block, runs - first), steps, breakdown, dtype, on_step=on_step)
        nodes += n
        weights += w
    return nodes, weights


def _gauss(alpha, beta, length):
    nodes, weights = [], []
    for i in range(len(length)):
        m = int(length[i])
        T = np.diag(alpha[i, :m]) + np.diag(beta[i, :m - 1], 1) + np.diag(beta[i, :m - 1], -1)
        theta, Y = np.linalg.eigh(T)
        nodes.append(theta)
        weights.append(Y[0] ** 2)
    return nodes, weights


def _lockstep(op, fill, b, steps, breakdown, dtype, *, on_step=None):
    """Full reorthogonalization: every run keeps its ``steps + 1`` vectors."""
    Q = torch.empty((b, steps + 1, op.num_parameters), dtype=dtype, device=op.device)  # row j + 1 written at step j
    fill(Q[:, 0])
    alpha = np.zeros((b, steps))
    beta = np.zeros((b, steps))
    length = np.full(b, steps)
    active = np.ones(b, dtype=bool)
    for j in range(steps):
        idx = np.flatnonzero(active)
        if len(idx) == 0:
            break
        W = op.matmat_torch(Q[:, j] if len(idx) == b else Q[idx, j]).to(Q.dtype)
        for r, i in enumerate(idx):
            w = W[r]
            alpha[i, j] = float(inner64(Q[i, j:j + 1], w)[0])
            if j == steps - 1:  # the last step needs only alpha
                active[i] = False
                continue
            # full reorthogonalization: Lanczos vectors lose orthogonality as Ritz values converge and would
            # produce spurious copies of the extreme eigenvalues
            nb = lanczos_residual(w, Q[i], j, alpha[i, j], beta[i, j - 1] if j else 0.0)
            scale = max(np.abs(alpha[i, :j + 1]).max(), beta[i, :j].max() if j else 0.0, 1e-300)
            if nb <= breakdown * scale:  # invariant subspace found: the quadrature is exact with j + 1 nodes
                length[i] = j + 1
                active[i] = False
                continue
            beta[i, j] = nb
            Q[i, j + 1] = w / nb
        del W, w  # the next product's output must not meet this one's
        if on_step is not None:
            on_step(j + 1, steps)
    return _gauss(alpha, beta, length)


def _three_term(op, fill, b, steps, breakdown, dtype, *, on_step=None):
    """No reorthogonalization: each run keeps its last two Lanczos vectors and the product (module docstring)."""
    cur = torch.empty((b, op.num_parameters), dtype=dtype, device=op.device)
    fill(cur)
    prev = torch.zeros_like(cur)
    alpha = np.zeros((b, steps))
    beta = np.zeros((b, steps))
    length = np.full(b, steps)
    active = np.ones(b, dtype=bool)
    for j in range(steps):
        idx = np.flatnonzero(active)
        if len(idx) == 0:
            break
        W = op.matmat_torch(cur if len(idx) == b else cur[idx]).to(cur.dtype)
        for r, i in enumerate(idx):
            w = W[r]
            alpha[i, j] = float(inner64(cur[i:i + 1], w)[0])
            if j == steps - 1:
                active[i] = False
                continue
            w.add_(cur[i], alpha=-alpha[i, j])
            if j:
                w.add_(prev[i], alpha=-beta[i, j - 1])
            nb = norm64(w)
            scale = max(np.abs(alpha[i, :j + 1]).max(), beta[i, :j].max() if j else 0.0, 1e-300)
            if nb <= breakdown * scale:
                length[i] = j + 1
                active[i] = False
                continue
            beta[i, j] = nb
            prev[i] = cur[i]
            cur[i] = w.div_(nb)
        del W, w  # the next product's output must not meet this one's
        if on_step is not None:
            on_step(j + 1, steps)
    return _gauss(alpha, beta, length)


def smoothed_density(nodes, weights, *, grid_points=2000, sigma=None):
    """Average over runs of ``sum_k w_k N(t; theta_k, sigma^2)`` on a uniform grid, integrating to 1 (trapezoid).

    Each grid value is the Gaussian mass of its cell divided by the cell width, so a ``sigma`` below the grid
    spacing still conserves the mass instead of missing narrow peaks.  Returns ``(grid, density, sigma)``.
    """
    all_nodes = np.concatenate(nodes)
    lo, hi = float(all_nodes.min()), float(all_nodes.max())
    if sigma is None:
        sigma = math.sqrt(1e-5 * max(1.0, hi - lo))
    pad = max(1e-2, 5.0 * sigma)
    grid = np.linspace(lo - pad, hi + pad, grid_points)
    h = grid[1] - grid[0]
    dens = np.zeros(grid_points)
    for theta, w in zip(nodes, weights):
        upper = ndtr((grid[:, None] + h / 2 - theta[None, :]) / sigma)
        lower = ndtr((grid[:, None] - h / 2 - theta[None, :]) / sigma)
        dens += ((upper - lower) / h) @ w
    dens /= len(nodes)
    dens /= _trapezoid(dens, grid)
    return grid, dens, float(sigma)
