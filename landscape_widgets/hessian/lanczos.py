"""Extreme eigenpairs of the Hessian by Lanczos with full reorthogonalization, stopped as soon as the wanted Ritz
pairs have converged; implicitly restarted Lanczos (ARPACK via ``scipy.sparse.linalg.eigsh``) takes over when a
problem needs more steps than the basis may hold.

Lanczos (Lanczos 1950; Parlett 1998, *The Symmetric Eigenvalue Problem*, ch. 13) converges to the ends of the
spectrum far faster than power iteration with deflation (PyHessian), whose rate is ``|lambda_2 / lambda_1|`` per
product and which finds the largest ``|lambda|``, not the algebraically largest.  A Ritz pair ``(theta, y)`` of the
tridiagonal ``T_m = S diag(theta) S^T`` has residual ``||H y - theta y|| = beta_m |S[m-1, i]|`` (Parlett eq. 13.2.4),
and some eigenvalue of ``H`` lies within that residual of ``theta`` (Parlett Thm 4.5.1).  We test it after every
product with ARPACK's own criterion, ``residual <= tol * max(eps^(2/3), |theta|)`` (Lehoucq, Sorensen & Yang 1998,
``dsconv``), so we stop when ARPACK would -- but ARPACK only tests at the end of a full basis of ``ncv >= 2k + 1``
(20 by default) vectors, and on the digits models our test stops after 14 (benchmarks/RESULTS.md).

The operator is applied in the model's dtype and returns float32 or wider; the Krylov basis, the
reorthogonalization and the Ritz vectors are float64 on the operator's device and the tridiagonal float64 numpy,
whatever the model's dtype: a bfloat16 product is good to about 1 %, but a bfloat16 recurrence would lose the
basis's orthogonality within a few steps.  The start
vector comes from a private ``np.random.default_rng``, so results are reproducible.
"""
from __future__ import annotations

import numpy as np
import torch

MEMORY_BUDGET = 2 ** 30  # bytes of float64 Krylov basis; beyond it ARPACK's restarted, smaller basis takes over
# the basis may hold max(MIN_STEPS, 3 k) vectors (within MEMORY_BUDGET) before ARPACK takes over: lambda_min of the
# digits CNN needs 62 steps, and with 60 the ARPACK restart made it 81 products
MIN_STEPS = 200
BLOCK = 32               # the basis grows by doubling from this many vectors: most runs stop after 10-60
MAX_RESTARTS = 200       # ARPACK's maxiter when none is given (its own default, 10 P, means "never stop")
EPS23 = np.finfo(np.float64).eps ** (2 / 3)  # ARPACK's floor for |theta| in its relative test
DGKS = 0.717             # a reorthogonalization pass is repeated when it leaves less than this of ||w|| (ARPACK)


def invariant_threshold(op) -> float:
    """``beta / ||T||`` below which the Krylov space counts as exhausted (an invariant subspace).

    From the rounding of the recurrence, which runs in float64 on products summed in float32 or wider: at least
    ``100 eps`` of float32 (or of the model's dtype when wider; ``1e-10`` at least).  Never from a bfloat16 or
    float16 model's own ``eps``: ``100 eps`` of bfloat16 is 0.78, which took the second Lanczos step of every
    such model for an exhausted space and stopped with eigenvalues 30-90 % off.  Their products' noise (about
    ``eps ||H||``) keeps ``beta`` above float32's threshold, and Lanczos goes on as ARPACK would.
    """
    wide = torch.promote_types(op.dtype, torch.float32)
    return max(1e-10, 100 * torch.finfo(wide).eps)


def _fix_sign(vectors: np.ndarray) -> np.ndarray:
    """Eigenvectors are defined up to sign: make the entry of largest magnitude positive (deterministic output)."""
    idx = np.argmax(np.abs(vectors), axis=0)
    signs = np.sign(vectors[idx, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return vectors * signs


def dense_hessian(op) -> np.ndarray:
    """The whole Hessian from ``P`` products (columns of ``H I``), symmetrized; only for small models."""
    P = op.num_parameters
    H = op.matmat(np.eye(P))
    return 0.5 * (H + H.T)


def extreme_eigenpairs(op, k: int, which: str, *, rng, tol=1e-6, maxiter=None, ncv=None, min_steps=1, v0=None,
                       min_basis=MIN_STEPS, memory_budget=MEMORY_BUDGET, block=BLOCK):
    """The ``k`` algebraically largest (``which="LA"``, descending) or smallest (``"SA"``, ascending) eigenpairs,
    or with ``which="BE"`` and ``k=1`` both ends from one Krylov space: ``[lambda_min, lambda_max]``, ``lambda_max``
    to ``tol |lambda_max|`` and ``lambda_min`` to ``tol (lambda_max - lambda_min)`` (what a ratio of the two needs;
    about half the products of two solves).

    Returns ``(values[k], vectors[P, k], info)``; ``info`` has the method (``"lanczos"``, ``"arpack"`` when the
    basis ran out before convergence, or ``"dense"``), the number of products and whether it converged.  When
    ``k`` is close to ``P`` a Krylov method cannot run, so the dense Hessian is assembled from ``P`` products.
    When ARPACK too stops unconverged (``maxiter`` restarts, default ``MAX_RESTARTS``), the best ``k`` estimates
    are returned with ``converged=False``: never fewer values than asked for, and never an endless run.
    ``min_steps``: Lanczos does not stop before this many steps (ARPACK first tests after its ``ncv``-vector basis):
    with a loose ``tol`` a test after a few steps may accept a Ritz value that converged to an inner eigenvalue.
    ``v0`` (``[P]``): a warm start, e.g. the eigenvector of nearby weights.  The answer is held to the same
    convergence test as from a random start (only the number of products changes); 1 % of a random vector from
    ``rng`` is added so that the start never lies exactly in an invariant subspace that misses the wanted pair.
    ``min_basis``: the Lanczos basis may hold ``max(min_basis, 3 k)`` vectors before ARPACK takes over.
    ``memory_budget``: bytes of float64 basis at most (a larger basis is ARPACK's).
    ``block``: the basis grows by doubling from this many vectors.
    """
    if which not in ("LA", "SA", "BE"):
        raise ValueError(f"which={which!r}; pass 'LA' (largest), 'SA' (smallest) or 'BE' (both ends, k=1)")
    if which == "BE" and k != 1:
        raise ValueError(f"which='BE' gives one eigenpair at each end: pass k=1, got k={k}")
    P = op.num_parameters
    start = op.hvps
    if k == 0:
        return np.zeros(0), np.zeros((P, 0)), {"method": "none", "hvps": 0, "converged": True}
    if k >= P - 1 or P <= 16:
        w, V = np.linalg.eigh(dense_hessian(op))
        sel = np.arange(P - 1, P - 1 - k, -1) if which == "LA" else np.array([0, P - 1]) if which == "BE" \
            else np.arange(k)
        return w[sel], _fix_sign(V[:, sel]), {"method": "dense", "hvps": op.hvps - start, "converged": True}
    random = rng.standard_normal(P)
    if v0 is None:
        v0 = random
    else:
        v0 = np.asarray(v0, dtype=np.float64).reshape(-1)
        if v0.shape != (P,) or not np.isfinite(v0).all() or not np.any(v0):
            raise ValueError(f"v0 must be a finite, nonzero vector of the {P} parameters, got shape {v0.shape}")
        v0 = v0 / np.linalg.norm(v0) + 1e-2 * random / np.linalg.norm(random)
    tol_eff = tol if tol > 0 else np.finfo(np.float64).eps
    steps = min(P - 1, max(min_basis, 3 * k, ncv or 0), memory_budget // (8 * P))
    best = None
    if steps > k:
        w, V, converged = _lanczos(op, k, which, v0, tol_eff, steps, min(max(1, min_steps), steps), block)
        if converged:
            return w, _fix_sign(V), {"method": "lanczos", "hvps": op.hvps - start, "converged": True, "tol": tol}
        best = (w, V) if len(w) == (2 if which == "BE" else k) else None
        v0 = V.sum(axis=1)  # ARPACK restarts from the wanted Ritz vectors: the products so far are not lost
    maxiter = MAX_RESTARTS if maxiter is None else maxiter
    w, V, converged = _arpack(op, 2 if which == "BE" else k, which, v0, tol, maxiter, ncv)
    if len(w) < (2 if which == "BE" else k):  # ARPACK gave up with fewer converged pairs: the Lanczos estimates of all k are better than none
        if best is None:
            raise RuntimeError(f"Lanczos found {len(w)} of the {k} eigenvalues asked for within maxiter={maxiter}; "
                               "pass a larger maxiter or a looser tol")
        w, V = best
    return w, _fix_sign(V), {"method": "arpack", "hvps": op.hvps - start, "converged": converged, "tol": tol,
                             "maxiter": maxiter}


def lanczos_residual(w, Q, j, a, b_prev):
    """The next Lanczos residual from ``w = H q_j`` (a tensor the caller owns), in place; returns ``||w||``.

    The three-term recurrence ``w - a q_j - b_prev q_{j-1}`` leaves ``w`` orthogonal to the basis up to rounding,
    which grows as Ritz values converge and would bring them back as spurious copies.  One classical Gram-Schmidt
    pass against ``Q[:j + 1]`` removes it (full reorthogonalization); a second runs only when the first shrank
    ``w`` below ``DGKS`` of its norm, i.e. removed more than rounding ("twice is enough", Parlett 1998 §6.9; the
    test of Daniel, Gragg, Kaufman & Stewart 1976, as in ARPACK's ``dsaitr``).  A pass reads the float64 basis
    twice: at step 30 of a 1M-parameter model 20 ms, against 300-600 ms per product.
    """
    w.add_(Q[j], alpha=-a)
    if j:
        w.add_(Q[j - 1], alpha=-b_prev)
    basis = Q[:j + 1]
    before = float(torch.linalg.vector_norm(w))
    for _ in range(2):
        w.addmv_(basis.T, basis @ w, alpha=-1.0)
        after = float(torch.linalg.vector_norm(w))
        if after > DGKS * before:
            break
        before = after
    return after


def _lanczos(op, k, which, v0, tol, steps, min_steps=1, block=BLOCK):
    """At most ``steps`` Lanczos steps from ``v0``, at least ``min_steps`` unless the Krylov space is exhausted, in a
    basis grown from ``block`` vectors; ``(values, vectors, converged)`` of the wanted Ritz pairs."""
    P = op.num_parameters
    Q = torch.empty((min(steps + 1, block), P), dtype=torch.float64, device=op.device)
    q = torch.from_numpy(np.asarray(v0, dtype=np.float64)).to(op.device)
    Q[0] = q / torch.linalg.vector_norm(q)
    alpha, beta = [], []
    for j in range(steps):
        w = op.matvec_torch(Q[j]).double()
        alpha.append(float(Q[j] @ w))
        b = lanczos_residual(w, Q, j, alpha[-1], beta[-1] if beta else 0.0)
        T = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
        theta, S = np.linalg.eigh(T)
        if which == "BE":
            sel = np.array([0, j]) if j else np.array([], dtype=int)
            # lambda_max relative to itself, lambda_min relative to the spread (as on H - lambda_max I)
            bound = np.array([theta[-1] - theta[0], abs(theta[-1])])
        else:
            sel = np.arange(j, max(j - k, -1), -1) if which == "LA" else np.arange(min(k, j + 1))
            bound = np.abs(theta[sel])
        scale = max(np.abs(theta).max(), 1e-300)
        invariant = b <= invariant_threshold(op) * scale  # Krylov space exhausted: the Ritz values are exact
        residual = b * np.abs(S[-1, sel])
        done = len(sel) == (2 if which == "BE" else k) and (invariant or (j + 1 >= min_steps and bool(
            np.all(residual <= tol * np.maximum(EPS23, bound)))))
        if done or invariant or j == steps - 1:
            vectors = (Q[:j + 1].T @ torch.from_numpy(S[:, sel]).to(Q)).cpu().numpy()
            return theta[sel], vectors, done
        beta.append(b)
        if j + 1 == len(Q):  # full: double it (amortized O(P) per step), never beyond steps + 1 vectors
            grown = torch.empty((min(steps + 1, 2 * len(Q)), P), dtype=Q.dtype, device=Q.device)
            grown[:len(Q)] = Q
            Q = grown
        Q[j + 1] = w / b
    raise AssertionError("unreachable")


def _arpack(op, k, which, v0, tol, maxiter, ncv):
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    converged = True
    try:
        w, V = eigsh(op.linear_operator(), k=k, which=which, v0=v0, tol=tol, maxiter=maxiter, ncv=ncv)
    except ArpackNoConvergence as exc:  # keep what converged; the caller decides whether that is enough
        converged = False
        w, V = exc.eigenvalues, exc.eigenvectors
    order = np.argsort(-w) if which == "LA" else np.argsort(w)  # "BE": ascending, [lambda_min, lambda_max]
    return w[order], V[:, order], converged
