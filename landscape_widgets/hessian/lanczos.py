"""Extreme eigenpairs of the Hessian by Lanczos with full reorthogonalization in a basis of bounded size, restarted
thick (Wu & Simon 2000, SIAM J. Matrix Anal. Appl. 22(2), 602-616) when the basis is full, and stopped as soon as
the wanted Ritz pairs and a guard beyond them have converged.

Lanczos (Lanczos 1950; Parlett 1998, *The Symmetric Eigenvalue Problem*, ch. 13) converges to the ends of the
spectrum far faster than power iteration with deflation (PyHessian), whose rate is ``|lambda_2 / lambda_1|`` per
product and which finds the largest ``|lambda|``, not the algebraically largest.  A Ritz pair ``(theta, y)`` of the
projected matrix ``T = S diag(theta) S^T`` has residual ``||H y - theta y|| = beta |S[-1, i]|`` (Parlett eq. 13.2.4;
after a thick restart too, Wu & Simon eq. 2.5), and some eigenvalue of ``H`` lies within that residual of ``theta``
(Parlett Thm 4.5.1).

Which eigenvalue, the residual does not say.  The ``i``-th Ritz value approaches the ``i``-th eigenvalue from inside
(Cauchy interlacing, Parlett §10.1), and an eigenvalue whose eigenvector has a small component in the Krylov space
is found late: until then the ``k``-th Ritz value converges to the ``(k+1)``-th eigenvalue, with a small residual
(a GPT-2 of 136k parameters at ``tol=1e-2``: the 5th Ritz value 2.2438 passed ARPACK's test after 35 products, the
5th eigenvalue is 2.2953, found after 46).  The guard, after every product:

- the ``k`` wanted Ritz values pass ``residual <= (tol / TIGHTEN) max(eps^(2/3), |theta|)``, ARPACK's test
  (Lehoucq, Sorensen & Yang 1998, ``dsconv``) ``TIGHTEN`` times tighter, but never tighter than ``TIGHT_FLOOR``;
- the next ``GUARD`` (2) Ritz values beyond the ``k``-th, towards the inside, pass it at ``max(tol, GUARD_TOL)``
  (``GUARD_TOL = 1e-4``: the spectrum resolved there, without all of ``tol``'s digits, so that a warm start keeps
  its saving at tight ``tol``; ``WARM_GUARD_TOL = 1e-2`` from a warm start ``v0``, which carries which
  eigenvector is wanted, and whose saving a guard at 1e-4 took: 57 products warm and cold on the trust-panel test).

Both only ask for more steps.  A tighter residual stops a Ritz value that sits between two eigenvalues from
passing (its residual is at least its distance to the nearer one, Parlett Thm 4.5.1); the guard asks that the
spectrum be resolved beyond the ``k``-th value, so that a missing eigenvalue would have to stay hidden behind
``k + GUARD`` converged ones, while the Chebyshev amplification of Lanczos is the larger the more exterior an
eigenvalue (Kaniel-Paige-Saad, Parlett Thm 12.4.1): a missed ``lambda_k`` is the next to converge.  On spectra with
clusters and near-multiplicities (tol 3e-2, 1e-2 and 1e-3, k = 1 and 5, both ends, 384 runs), the test after every
product without the guard reported a wrong eigenvalue in 44 runs, with one guard value in 2 (a pair 0.2 % apart at
tol 1e-3), with two in none, for 1.5x the products (tests/test_lanczos_tol.py); on the digits models it costs a
few products at the top (benchmarks/RESULTS.md).  No test on a Krylov space can see an eigenvalue whose
eigenvector is orthogonal to it (an exact multiplicity is seen once, as by ARPACK).

Memory.  The basis holds ``m`` vectors of the products' precision (:func:`basis_dtype`: float32 for float32,
bfloat16 and float16 models, whose products are float32 anyway; float64 for float64 models), ``m`` from
``memory_budget`` (bytes of basis and returned eigenvectors; default :func:`default_memory_budget`).  When it is
full, the Ritz vectors nearest the wanted end are kept, transformed in place, and Lanczos goes on from the residual
(thick restart: no product is repeated, the kept vectors carry what the basis had found).  With a basis of 200
vectors or more, most runs never restart and do what unrestarted Lanczos did.  The start vector comes from a
private ``np.random.default_rng``, so results are reproducible.
"""
from __future__ import annotations

import math

import numpy as np
import torch

# default basis budget: BUDGET_VECTORS vectors of the model's size, at least BUDGET_FLOOR bytes (small models keep
# the unrestarted basis they converge in: 160 float32 vectors of the digits MLP, 200 of the digits CNN), see
# default_memory_budget
BUDGET_VECTORS = 6
BUDGET_FLOOR = 16 * 2 ** 20
MEMORY_BUDGET = None   # extreme_eigenpairs' default: default_memory_budget(op)
MIN_STEPS = 200        # the basis holds at most max(MIN_STEPS, 3 k) vectors (fewer when the budget says so)
MAX_RESTARTS = 200     # thick restarts at most when maxiter is not given: never an endless run
GUARD = 2              # Ritz values beyond the k-th that must pass the test at max(tol, GUARD_TOL)
GUARD_TOL = 1e-4       # the guard only has to show the spectrum resolved beyond the k-th value, not all its digits
WARM_GUARD_TOL = 1e-2  # from a warm start (v0): the start carries which eigenvector is wanted
TIGHTEN = 10           # the wanted Ritz values pass the test at tol / TIGHTEN ...
TIGHT_FLOOR = 1e-6     # ... but not below this (where tol is looser than it)
EPS23 = np.finfo(np.float64).eps ** (2 / 3)  # ARPACK's floor for |theta| in its relative test
DGKS = 0.717           # a reorthogonalization pass is repeated when it leaves less than this of ||w|| (ARPACK)
CHUNK = 1 << 16        # columns of the basis transformed at a time in place (a restart, the Ritz vectors)


def invariant_threshold(op) -> float:
    """``beta / ||T||`` below which the Krylov space counts as exhausted (an invariant subspace).

    From the rounding of the recurrence, which runs on products summed in float32 or wider: at least ``100 eps``
    of float32 (or of the model's dtype when wider; ``1e-10`` at least).  Never from a bfloat16 or float16 model's
    own ``eps``: ``100 eps`` of bfloat16 is 0.78, which took the second Lanczos step of every such model for an
    exhausted space and stopped with eigenvalues 30-90 % off.  Their products' noise (about ``eps ||H||``) keeps
    ``beta`` above float32's threshold, and Lanczos goes on as ARPACK would.
    """
    wide = torch.promote_types(getattr(op, "dtype", torch.float64), torch.float32)
    return max(1e-10, 100 * torch.finfo(wide).eps)


def basis_dtype(op) -> torch.dtype:
    """The Krylov basis's dtype: the products' (float32 for float32, bfloat16 and float16 models, float64 for
    float64 models).  A float32 basis stays orthogonal to about ``1e-7``, the relative accuracy of a float32
    product, so a float64 one would not make the eigenvalues more accurate; it would double the memory."""
    return torch.promote_types(getattr(op, "dtype", torch.float64), torch.float32)


def default_memory_budget(op) -> int:
    """Bytes of Krylov basis (with the returned eigenvectors) a computation may hold by default:
    ``BUDGET_VECTORS`` vectors of :func:`basis_dtype` (6x the parameter bytes of a float32 model), at least
    ``BUDGET_FLOOR`` (16 MiB).  Six vectors leave room, within 10x the parameter bytes, for the product's output
    and a few temporaries (benchmarks/hessian_memory.py); the floor, which decides below ~700k float32
    parameters, keeps small models in the unrestarted basis they converge in (``lambda_min`` of the digits MLP
    needs 88 vectors: with 40 a restarted run took 256 products) -- there a product's own graph holds far more
    than 16 MiB (270x the parameter bytes of a 136k-parameter GPT-2 on 16 x 64 tokens)."""
    vector = op.num_parameters * basis_dtype(op).itemsize
    return max(BUDGET_FLOOR, BUDGET_VECTORS * vector)


def wanted_tolerance(tol: float) -> float:
    """The tolerance the ``k`` wanted Ritz values are held to: ``tol / TIGHTEN``, not below ``TIGHT_FLOOR``
    (``tol`` itself where that is tighter)."""
    return min(tol, max(tol / TIGHTEN, TIGHT_FLOOR))


def _fix_sign(vectors: np.ndarray) -> np.ndarray:
    """Eigenvectors are defined up to sign: make the entry of largest magnitude positive (deterministic output),
    in place."""
    idx = np.argmax(np.abs(vectors), axis=0)
    signs = np.sign(vectors[idx, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    vectors *= signs.astype(vectors.dtype)
    return vectors


def dense_hessian(op) -> np.ndarray:
    """The whole Hessian from ``P`` products (columns of ``H I``), symmetrized; only for small models."""
    P = op.num_parameters
    H = op.matmat(np.eye(P))
    return 0.5 * (H + H.T)


def _check_budget(memory_budget):
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, np.integer)) or memory_budget <= 0:
        raise ValueError(f"memory_budget={memory_budget!r} must be a positive int (bytes of Krylov basis), or None "
                         "for the default")
    return int(memory_budget)


def extreme_eigenpairs(op, k: int, which: str, *, rng, tol=1e-6, maxiter=None, ncv=None, min_steps=1, v0=None,
                       min_basis=MIN_STEPS, memory_budget=MEMORY_BUDGET, guard=GUARD, vectors=True):
    """The ``k`` algebraically largest (``which="LA"``, descending) or smallest (``"SA"``, ascending) eigenpairs,
    or with ``which="BE"`` and ``k=1`` both ends from one Krylov space: ``[lambda_min, lambda_max]``, ``lambda_max``
    to ``tol |lambda_max|`` and ``lambda_min`` to ``tol (lambda_max - lambda_min)`` (what a ratio of the two needs;
    about half the products of two solves).

    Every value is within ``tol`` (relative, as above) of the eigenvalue of its rank: the convergence test and
    its guard are in the module docstring.  Returns ``(values[k], vectors[P, k], info)``; the vectors are
    unit eigenvectors in :func:`basis_dtype` (None with ``vectors=False``); ``info`` has the method
    (``"lanczos"``, or ``"dense"`` when ``k`` is close to ``P`` and the Hessian is assembled from ``P``
    products), the number of products, thick restarts and basis vectors, and whether it converged.  After
    ``maxiter`` restarts (default ``MAX_RESTARTS``) the best ``k`` estimates come back with ``converged=False``:
    never fewer values than asked for, and never an endless run.
    ``min_steps``: Lanczos does not stop before this many steps.
    ``v0`` (``[P]``): a warm start, e.g. the eigenvector of nearby weights.  The answer is held to the same
    convergence test as from a random start (only the number of products changes); 1 % of a random vector from
    ``rng`` is added so that the start never lies exactly in an invariant subspace that misses the wanted pair.
    ``min_basis``, ``ncv``: the basis holds ``max(min_basis, 3 k, ncv)`` vectors at most before a thick restart,
    fewer when ``memory_budget`` (bytes of basis plus returned vectors; default :func:`default_memory_budget`)
    holds fewer; at least ``k + guard + 2``, the least a thick restart runs in.
    ``guard``: Ritz values beyond the ``k``-th held to ``tol`` as well (0 turns the guard off; so does
    nothing else: the wanted values are still held to :func:`wanted_tolerance`).
    """
    if which not in ("LA", "SA", "BE"):
        raise ValueError(f"which={which!r}; pass 'LA' (largest), 'SA' (smallest) or 'BE' (both ends, k=1)")
    if which == "BE" and k != 1:
        raise ValueError(f"which='BE' gives one eigenpair at each end: pass k=1, got k={k}")
    P = op.num_parameters
    start = op.hvps
    if k == 0:
        return np.zeros(0), (np.zeros((P, 0)) if vectors else None), {"method": "none", "hvps": 0,
                                                                       "converged": True}
    if k >= P - 1 or P <= 16:
        w, V = np.linalg.eigh(dense_hessian(op))
        sel = np.arange(P - 1, P - 1 - k, -1) if which == "LA" else np.array([0, P - 1]) if which == "BE" \
            else np.arange(k)
        return w[sel], (_fix_sign(V[:, sel].copy()) if vectors else None), \
            {"method": "dense", "hvps": op.hvps - start, "converged": True}
    random = rng.standard_normal(P)
    warm = v0 is not None
    if v0 is None:
        v0 = random
    else:
        v0 = np.asarray(v0, dtype=np.float64).reshape(-1)
        if v0.shape != (P,) or not np.isfinite(v0).all() or not np.any(v0):
            raise ValueError(f"v0 must be a finite, nonzero vector of the {P} parameters, got shape {v0.shape}")
        v0 = v0 / np.linalg.norm(v0) + 1e-2 * random / np.linalg.norm(random)
    del random
    nwant = 2 if which == "BE" else k
    guard = max(0, int(guard))
    dtype = basis_dtype(op)
    vector_bytes = P * dtype.itemsize
    need = nwant + (2 if which == "BE" else 1) * guard + 2  # kept Ritz vectors plus two new ones per restart
    out = nwant if vectors else 0
    budget = default_memory_budget(op) if memory_budget is None else _check_budget(memory_budget)
    fits = budget // vector_bytes - out
    if fits < min(need, P):
        if memory_budget is not None:
            raise ValueError(
                f"memory_budget={memory_budget} bytes holds {budget // vector_bytes} vectors of {P} {dtype} entries; "
                f"k={k} with guard={guard} needs {min(need, P) + out} ({(min(need, P) + out) * vector_bytes} bytes): "
                f"pass memory_budget>={(min(need, P) + out) * vector_bytes}, a smaller k, or vectors=False")
        fits = need  # the default bows to what k needs
    m = min(P, fits, max(min_basis, 3 * k, ncv or 0, need))
    tol_eff = tol if tol > 0 else np.finfo(np.float64).eps
    maxiter = MAX_RESTARTS if maxiter is None else int(maxiter)
    values, V, info = _thick_restart_lanczos(op, k, which, v0, tol_eff, m, dtype, max(1, min_steps), guard,
                                             maxiter, vectors, rng, WARM_GUARD_TOL if warm else GUARD_TOL)
    if V is not None:
        V = _fix_sign(V)
    info.update(method="lanczos", hvps=op.hvps - start, tol=tol, maxiter=maxiter)
    return values, V, info


def inner64(basis, w):
    """``basis @ w`` (``basis[r, P]``, ``w[P]``) as float64, accumulated in float64 a slab of columns at a time
    (a quarter of a vector's bytes of temporaries): a float32 BLAS dot over 19M entries is off by 1e-4 to 1e-3."""
    if basis.dtype == torch.float64:
        return basis @ w.double()
    P = w.shape[0]
    cols = max(4096, P // (16 * max(1, basis.shape[0])))
    h = torch.zeros(basis.shape[0], dtype=torch.float64, device=w.device)
    for c in range(0, P, cols):
        h += basis[:, c:c + cols].double() @ w[c:c + cols].double()
    return h


def norm64(w) -> float:
    """``||w||``, accumulated in float64 (see :func:`inner64`)."""
    if w.dtype == torch.float64:
        return float(torch.linalg.vector_norm(w))
    return math.sqrt(max(float(inner64(w[None], w)[0]), 0.0))


def _orthogonalize(w, basis, before):
    """Classical Gram-Schmidt of ``w`` against the rows of ``basis``, in place, repeated once when a pass left
    less than ``DGKS`` of the norm (``before``: ``||w||`` going in); returns ``||w||``."""
    after = before
    for _ in range(2):
        w.addmv_(basis.T, inner64(basis, w).to(w.dtype), alpha=-1.0)
        after = norm64(w)
        if after > DGKS * before:
            break
        before = after
    return after


def lanczos_residual(w, Q, j, a, b_prev):
    """The next Lanczos residual from ``w = H q_j`` (a tensor the caller owns), in place; returns ``||w||``.

    The three-term recurrence ``w - a q_j - b_prev q_{j-1}`` leaves ``w`` orthogonal to the basis up to rounding,
    which grows as Ritz values converge and would bring them back as spurious copies.  One classical Gram-Schmidt
    pass against ``Q[:j + 1]`` removes it (full reorthogonalization); a second runs only when the first shrank
    ``w`` below ``DGKS`` of its norm, i.e. removed more than rounding ("twice is enough", Parlett 1998 §6.9; the
    test of Daniel, Gragg, Kaufman & Stewart 1976, as in ARPACK's ``dsaitr``).
    """
    w.add_(Q[j], alpha=-a)
    if j:
        w.add_(Q[j - 1], alpha=-b_prev)
    return _orthogonalize(w, Q[:j + 1], norm64(w))


def _selection(theta, which, k, guard):
    """Indices (into ascending ``theta``) of the wanted Ritz values, of the guard's, and the scale each one's
    relative test uses."""
    n = len(theta)
    if which == "BE":
        spread = theta[-1] - theta[0]
        want = np.array([0, n - 1]) if n > 1 else np.zeros(0, dtype=int)
        inner = np.arange(1, n - 1)
        guarded = np.r_[inner[:guard], inner[::-1][:guard]] if len(inner) >= 2 * guard else np.zeros(0, dtype=int)
        bound = lambda idx: np.where(idx < n / 2, spread, np.abs(theta[idx]))  # noqa: E731
        return want, guarded, bound
    order = np.arange(n - 1, -1, -1) if which == "LA" else np.arange(n)
    want = order[:k] if n >= k else np.zeros(0, dtype=int)
    guarded = order[k:k + guard] if n >= k + guard else np.zeros(0, dtype=int)
    return want, guarded, lambda idx: np.abs(theta[idx])


def _keep(theta, which, l):
    """The ``l`` Ritz values nearest the wanted end(s) that a thick restart keeps (indices into ascending theta)."""
    n = len(theta)
    if which == "LA":
        return np.arange(n - l, n)
    if which == "SA":
        return np.arange(l)
    low = (l + 1) // 2
    return np.r_[np.arange(low), np.arange(n - (l - low), n)]


def _combine(Q, n, Y, out):
    """``out[i] = sum_r Y[r, i] Q[r]`` over the first ``n`` rows, a slab of columns at a time; ``out`` may be
    ``Q[:Y.shape[1]]`` itself (each slab is read whole before it is written)."""
    Yt = torch.from_numpy(np.ascontiguousarray(Y.T)).to(device=Q.device, dtype=Q.dtype)
    for c in range(0, Q.shape[1], CHUNK):
        out[:, c:c + CHUNK] = Yt @ Q[:n, c:c + CHUNK]


def _thick_restart_lanczos(op, k, which, v0, tol, m, dtype, min_steps, guard, maxiter, vectors, rng,
                           guard_tol=GUARD_TOL):
    """Lanczos in a basis of ``m`` rows with thick restarts; ``(values, vectors[P, k] or None, info)``."""
    P = op.num_parameters
    nwant = 2 if which == "BE" else k
    tight = wanted_tolerance(tol)
    threshold = invariant_threshold(op)
    Q = torch.empty((m, P), dtype=dtype, device=op.device)
    Q[0].copy_(torch.from_numpy(np.asarray(v0, dtype=np.float64)))  # converted in place: no temporary vector
    Q[0] /= norm64(Q[0])
    T = np.zeros((m, m))
    j, arrow, restarts, steps = 0, 0, 0, 0  # rows [0, arrow) are kept Ritz vectors, coupled to row arrow
    while True:
        w = op.matvec_torch(Q[j]).to(dtype)
        steps += 1
        a = float(inner64(Q[j:j + 1], w)[0])
        T[j, j] = a
        w.add_(Q[j], alpha=-a)
        if j == arrow and arrow:  # the first step after a restart: H q couples to every kept vector
            w.addmv_(Q[:arrow].T, torch.from_numpy(T[j, :arrow]).to(Q), alpha=-1.0)
        elif j:
            w.add_(Q[j - 1], alpha=-T[j, j - 1])
        b = _orthogonalize(w, Q[:j + 1], norm64(w))
        n = j + 1
        theta, S = np.linalg.eigh(T[:n, :n])
        want, guarded, bound = _selection(theta, which, k, guard)
        residual = b * np.abs(S[-1])
        invariant = b <= threshold * max(np.abs(theta).max(), 1e-300)  # exhausted: the Ritz values are exact
        extra = len(guarded) == (2 if which == "BE" else 1) * guard
        tested = extra and steps >= min_steps \
            and bool(np.all(residual[want] <= tight * np.maximum(EPS23, bound(want)))) \
            and bool(np.all(residual[guarded] <= max(tol, guard_tol) * np.maximum(EPS23, bound(guarded))))
        converged = len(want) == nwant and (invariant or n == P or tested)
        if converged or (n == m and restarts >= maxiter and len(want) == nwant):
            Y = S[:, want]
            V = None
            del w
            if vectors:
                out = torch.empty((nwant, P), dtype=dtype, device=op.device)
                _combine(Q, n, Y, out)
                del Q
                V = out.cpu().numpy().T
            return theta[want], V, {"converged": bool(converged), "restarts": restarts, "basis": m}
        if invariant:
            # fewer Ritz values than asked for and an exhausted space: go on from a random vector orthogonal to it
            # (T stays block diagonal: beta = 0)
            w = torch.from_numpy(rng.standard_normal(P)).to(device=op.device, dtype=dtype)
            b = _orthogonalize(w, Q[:n], norm64(w))
            w /= b
            b = 0.0
        if n == m:  # full: keep the Ritz vectors nearest the wanted end, go on from the residual
            base = nwant + (2 if which == "BE" else 1) * guard
            keep = _keep(theta, which, base + (m - base - 2) // 2)  # two new vectors at least per restart
            lk = len(keep)
            _combine(Q, n, S[:, keep], Q[:lk])
            T[:] = 0.0
            T[np.arange(lk), np.arange(lk)] = theta[keep]
            T[lk, :lk] = T[:lk, lk] = b * S[-1, keep]
            Q[lk] = w if b == 0.0 else w.div_(b)
            del w
            j, arrow = lk, lk
            restarts += 1
            continue
        T[n, j] = T[j, n] = b
        Q[n] = w if b == 0.0 else w.div_(b)
        del w  # the next product's output must not meet this one's
        j = n


def _arpack(op, k, which, v0, tol, maxiter, ncv):
    """scipy's ARPACK (``eigsh``) on the same operator: the reference the tests and benchmarks compare with."""
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    converged = True
    try:
        w, V = eigsh(op.linear_operator(), k=k, which=which, v0=v0, tol=tol, maxiter=maxiter, ncv=ncv)
    except ArpackNoConvergence as exc:  # keep what converged; the caller decides whether that is enough
        converged = False
        w, V = exc.eigenvalues, exc.eigenvectors
    order = np.argsort(-w) if which == "LA" else np.argsort(w)  # "BE": ascending, [lambda_min, lambda_max]
    return w[order], V[:, order], converged
