"""Spectral density of the Hessian by stochastic Lanczos quadrature (Ghorbani, Krishnan & Xiao 2019, arXiv
1901.10159, §2 and Algorithm 1; Golub & Meurant 2010 for Gauss quadrature).

For each run a Rademacher vector ``v`` (normalized) starts ``m`` Lanczos steps with full reorthogonalization;
the tridiagonal ``T_m = Y diag(theta) Y^T`` gives Gauss-quadrature nodes ``theta_k`` and weights
``w_k = Y[0, k]^2`` of the measure ``v^T delta(t - H) v`` (eq. 4-6).  The density is the average over runs of
``sum_k w_k N(t; theta_k, sigma^2)`` (eq. 7), with ``sigma^2 = 1e-5 max(1, lambda_hi - lambda_lo)`` by default as in
the authors' code (google/spectral-density, ``density.py``).  Runs go in lockstep so that a DataLoader is read
once per step for all runs (one block product); the Krylov basis is kept in float64.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import ndtr

from .lanczos import invariant_threshold, lanczos_residual

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz
MEMORY_BUDGET = 2 ** 30  # bytes of float64 Krylov basis held at once; more runs than fit go in several blocks


def lanczos_quadrature(op, steps: int, runs: int, *, rng, on_step=None):
    """Nodes and weights of ``runs`` Lanczos quadratures with ``steps`` steps each.

    Returns ``(nodes, weights)``: lists with one array per run (a run stops early, with fewer nodes, when its
    Krylov space is exhausted -- ``beta`` below :func:`~.lanczos.invariant_threshold` ``|T|``, which happens
    only when ``steps`` nears ``P``).  The Krylov basis is a float64 torch tensor on the operator's device: the reorthogonalization
    then shares torch's thread pool with the products instead of fighting it with numpy's BLAS threads (measured
    100x slower on a busy 2-core machine).
    """
    P = op.num_parameters
    steps = min(steps, P)  # a Krylov space of R^P has at most P dimensions
    breakdown = invariant_threshold(op)  # below this beta is rounding noise of the recurrence
    per_run = (steps + 1) * P * 8
    block = max(1, min(runs, MEMORY_BUDGET // max(per_run, 1)))
    nodes, weights = [], []
    for first in range(0, runs, block):
        b = min(block, runs - first)
        V = torch.from_numpy(rng.integers(0, 2, size=(b, P)) * 2.0 - 1.0).to(op.device)
        n, w = _lockstep(op, V / math.sqrt(P), steps, breakdown, on_step=on_step)
        nodes += n
        weights += w
    return nodes, weights


def _lockstep(op, v0, steps, breakdown, *, on_step=None):
    b, P = v0.shape
    Q = torch.zeros((b, steps + 1, P), dtype=torch.float64, device=v0.device)
    Q[:, 0] = v0
    alpha = np.zeros((b, steps))
    beta = np.zeros((b, steps))
    length = np.full(b, steps)
    active = np.ones(b, dtype=bool)
    for j in range(steps):
        idx = np.flatnonzero(active)
        if len(idx) == 0:
            break
        W = op.matmat_torch(Q[idx, j]).double()
        for r, i in enumerate(idx):
            w = W[r]
            alpha[i, j] = float(Q[i, j] @ w)
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
        if on_step is not None:
            on_step(j + 1, steps)
    nodes, weights = [], []
    for i in range(b):
        m = int(length[i])
        T = np.diag(alpha[i, :m]) + np.diag(beta[i, :m - 1], 1) + np.diag(beta[i, :m - 1], -1)
        theta, Y = np.linalg.eigh(T)
        nodes.append(theta)
        weights.append(Y[0] ** 2)
    return nodes, weights


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
