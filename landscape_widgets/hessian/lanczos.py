"""Extreme eigenpairs of the Hessian by implicitly restarted Lanczos (ARPACK via ``scipy.sparse.linalg.eigsh``).

Lanczos (Lanczos 1950; Lehoucq, Sorensen & Yang 1998, ARPACK users' guide ch. 4) converges to the ends of the
spectrum far faster than power iteration with deflation (PyHessian), whose rate is ``|lambda_2 / lambda_1|`` per
product and which finds the largest ``|lambda|``, not the algebraically largest.  The operator is applied in the
model's dtype; the Krylov basis lives in float64 on the numpy side.  The start vector comes from a private
``np.random.default_rng`` (ARPACK's own default start is not seedable), so results are reproducible.
"""
from __future__ import annotations

import numpy as np


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


def extreme_eigenpairs(op, k: int, which: str, *, rng, tol=1e-6, maxiter=None, ncv=None):
    """The ``k`` algebraically largest (``which="LA"``, descending) or smallest (``"SA"``, ascending) eigenpairs.

    Returns ``(values[k], vectors[P, k], info)``; ``info`` has the method, the number of products and whether
    ARPACK converged.  When ``k`` is close to ``P`` ARPACK cannot run (it needs ``k < P`` and room for the
    Krylov basis), so the dense Hessian is assembled from ``P`` products instead.
    """
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    if which not in ("LA", "SA"):
        raise ValueError(f"which={which!r}; pass 'LA' (largest) or 'SA' (smallest)")
    P = op.num_parameters
    start = op.hvps
    if k == 0:
        return np.zeros(0), np.zeros((P, 0)), {"method": "none", "hvps": 0, "converged": True}
    if k >= P - 1 or P <= 16:
        w, V = np.linalg.eigh(dense_hessian(op))
        sel = np.arange(P - 1, P - 1 - k, -1) if which == "LA" else np.arange(k)
        return w[sel], _fix_sign(V[:, sel]), {"method": "dense", "hvps": op.hvps - start, "converged": True}
    v0 = rng.standard_normal(P)
    converged = True
    try:
        w, V = eigsh(op.linear_operator(), k=k, which=which, v0=v0, tol=tol, maxiter=maxiter, ncv=ncv)
    except ArpackNoConvergence as exc:  # keep what converged rather than nothing; the meta says so
        converged = False
        w, V = exc.eigenvalues, exc.eigenvectors
        if len(w) == 0:
            raise RuntimeError(f"Lanczos found none of the {k} eigenvalues asked for within maxiter={maxiter}; "
                               "pass a larger maxiter or a looser tol") from exc
    order = np.argsort(-w) if which == "LA" else np.argsort(w)
    return w[order], _fix_sign(V[:, order]), {"method": "arpack", "hvps": op.hvps - start, "converged": converged,
                                              "tol": tol}
