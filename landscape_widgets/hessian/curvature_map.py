"""The curvature map: ``|lambda_min / lambda_max|`` of the Hessian at every point of a plane.

Li et al. 2018 (arXiv 1712.09913, §6 "Measuring the level of convexity"; their ``plot_hessian_eigen.py``) compute,
at each point ``theta + a d1 + b d2`` of a plotted plane, the two extreme eigenvalues of the Hessian of the loss and
map ``|lambda_min / lambda_max|``: near 0 (blue in their figures) the landscape is locally convex, large values show
strong negative curvature, which the 2-D slice may hide.  Here the Hessian is that of the loss over all the data, in
eval mode, over the moved parameters (``params=``), taken at the point's weights through
:class:`~landscape_widgets.hessian.hvp.HessianOperator` (``weights=``): the point enters the functional call, so
neither the user's model nor the private copy is written.

Eigen-solves, beside Li et al.'s (``hess_vec_prod.min_max_hessian_eigs``):

- theirs: ``eigsh(H, k=1, tol=1e-2)`` with ARPACK's default ``which="LM"`` (the eigenvalue of largest *magnitude*),
  then ``eigsh(H - 0.51 lambda I, k=1, tol=1e-2) + 0.51 lambda`` for the other end (the two swapped when the first
  was negative); weights of dimension > 1 only (biases and BatchNorm's affine parameters stay fixed); ARPACK's own
  random start vector.
- ours: both extreme eigenvalues from one Lanczos run (:func:`~.lanczos.extreme_eigenpairs` with ``which="BE"``:
  full reorthogonalization, ARPACK's ``eigsh(which="BE")`` when 200 steps do not suffice), each held to ARPACK's
  residual test from the 20th product on: ``lambda_max`` to ``tol |lambda_max|``, ``lambda_min`` to
  ``tol (lambda_max - lambda_min)`` absolute, the accuracy the ratio needs (a test relative to a ``lambda_min`` near
  0 would spend many products on digits the map does not show; it is the test ``eigsh`` applies on the shifted
  ``H - lambda_max I``, whose Krylov spaces are the same).  ARPACK tests first after its default ``ncv = 20``
  vectors; a test after every step from the first, at ``tol = 1e-2``, accepted Ritz values converged to inner
  eigenvalues after a few steps on tiny models (lambda_max 4.5 % low), hence ``MIN_STEPS``.  One run finds both
  ends in about half the products of two solves.  ``tol = 1e-2`` by default, as theirs; the parameters are the
  moved set.
- warm starts: the points are solved in row-major order, each from the Ritz vectors of lambda_max and lambda_min of
  its left neighbour (a row's first point: of the point above) plus 1 % of a random vector from the point's own
  child stream of ``np.random.SeedSequence(seed)`` (:func:`~.lanczos.extreme_eigenpairs` ``v0=``); only the first
  point, and one after a non-finite neighbour, starts from that random vector alone.  Every point is held to the same
  residual test (from the ``WARM_MIN_STEPS``-th product on when warm-started, as the start already holds both ends),
  so only the number of products changes; a cell's digits below ``tol`` depend on the order, which is fixed, so a map
  is reproducible.  On the 7x7 maps (``benchmarks/curvature_map.py``), where every cold start stops at
  ``MIN_STEPS``: digits MLP 906 instead of 980 products, digits CNN 718 instead of 980.
  The micro-batch plan of the data is made once, at the first point, and shared by all.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from .._checks import axis, check_resolution, check_seed
from ..driver import Cancelled, is_cancelled
from ..runtime import Timer
from ..results import CurvatureMap, Surface, eig_ratio
from .hvp import PLAN, HessianOperator, NonFiniteHessian
from .lanczos import extreme_eigenpairs

DEFAULT_RESOLUTION = 11  # per axis, at most: every point costs an eigen-solve for both ends
MIN_STEPS = 20  # scipy's eigsh default ncv for k=1: Li et al.'s solves tested no earlier
# a warm-started point (its neighbour's extreme eigenvectors as the start) tests from this step on: the start already
# holds both ends, and the same residual test decides (see the module docstring)
WARM_MIN_STEPS = 8
EIGENSOLVER = ("lambda_max and lambda_min from one Lanczos run (full reorthogonalization, which='BE'; ARPACK's "
               "residual test after every product from the 20th on: lambda_max to tol |lambda_max|, lambda_min to "
               "tol (lambda_max - lambda_min); ARPACK eigsh(which='BE') beyond 200 steps); in row-major order, each "
               "point after the first warm-started from its left (a row's first: upper) neighbour's Ritz vectors "
               f"plus 1 % random, tested from product {WARM_MIN_STEPS} on")
LI_ET_AL_SETTINGS = ("Li et al. 2018, hess_vec_prod.min_max_hessian_eigs: scipy eigsh(H, k=1, tol=1e-2, which='LM'), "
                     "then eigsh(H - 0.51 lambda I, k=1, tol=1e-2) + 0.51 lambda; parameters of dimension > 1 only")


# the loss or a Hessian-vector product at a point is NaN or infinite: that cell of the map is NaN
NonFinite = NonFiniteHessian


class ShiftedOperator:
    """``H - shift I`` of a :class:`~.hvp.HessianOperator`, with the interface :func:`~.lanczos.extreme_eigenpairs`
    uses; a non-finite loss or product raises :class:`NonFinite` at once instead of feeding NaN to the solver."""

    def __init__(self, op: HessianOperator, shift: float = 0.0):
        self.op = op
        self.shift = float(shift)
        self.num_parameters = op.num_parameters
        self.device = op.device
        self.dtype = op.dtype

    @property
    def hvps(self) -> int:
        return self.op.hvps

    def matmat_torch(self, V: torch.Tensor) -> torch.Tensor:
        out = self.op.matmat_torch(V).double()
        loss = self.op.loss
        if (loss is not None and not math.isfinite(loss)) or not bool(torch.isfinite(out).all()):
            raise NonFinite(f"the loss ({loss}) or a Hessian-vector product is not finite")
        if self.shift:
            out -= self.shift * V.to(device=out.device, dtype=torch.float64)
        return out

    def matvec_torch(self, v: torch.Tensor) -> torch.Tensor:
        return self.matmat_torch(v.reshape(1, -1))[0]

    def matvec(self, v) -> np.ndarray:
        v = torch.from_numpy(np.ascontiguousarray(np.asarray(v, dtype=np.float64).reshape(-1)))
        return self.matvec_torch(v).cpu().numpy()

    def matmat(self, V) -> np.ndarray:
        """float64 numpy ``V[P, m]`` -> ``(H - shift I) V`` as ``[P, m]``."""
        V = torch.from_numpy(np.ascontiguousarray(np.asarray(V, dtype=np.float64).T))
        return self.matmat_torch(V).cpu().numpy().T

    def linear_operator(self):
        from scipy.sparse.linalg import LinearOperator

        P = self.num_parameters
        return LinearOperator((P, P), matvec=self.matvec, matmat=self.matmat, rmatvec=self.matvec,
                              dtype=np.float64)


def extreme_eigenvalues(op: HessianOperator, *, tol: float, rng, v0=None, min_steps=MIN_STEPS) -> tuple:
    """``(lambda_max, lambda_min, info)`` of ``op``'s Hessian (see the module docstring for the solves);
    ``rng``: the start vector's generator; ``v0``: a warm start (``[P]``), tested from ``min_steps`` on.
    ``info["vectors"]``: the Ritz vectors ``[P, 2]`` of ``lambda_min``, ``lambda_max``.  Raises :class:`NonFinite`
    where the loss or a product is not finite."""
    ends, vectors, info = extreme_eigenpairs(ShiftedOperator(op), 1, "BE", rng=rng, tol=tol, min_steps=min_steps,
                                             v0=v0)
    lmin, lmax = float(ends[0]), float(ends[1])
    if not (math.isfinite(lmax) and math.isfinite(lmin)):
        raise NonFinite(f"eigenvalues {lmax}, {lmin}")
    return lmax, lmin, {"both": info, "vectors": vectors}


def warm_start(vectors):
    """A point's start from its neighbour's Ritz vectors ``[P, 2]`` (or None): the sum of both unit vectors, the two
    ends with equal weight (Lanczos converges to each end at the rate its start holds of it; lambda_max's vector alone
    made more products than a random start on the digits MLP: lambda_min's end is the slow one); None where there
    are no finite vectors."""
    if vectors is None or not np.isfinite(vectors).all():
        return None
    norms = np.linalg.norm(vectors, axis=0)
    if not (norms > 0).all():
        return None
    return (vectors / norms).sum(axis=1)


def check_tol(tol) -> float:
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not 0 <= float(tol) < 1:
        raise ValueError(f"tol={tol!r} must be a number in [0, 1) (the eigenvalues' relative accuracy, 1e-2 as Li et "
                         "al.; 0 = machine precision)")
    return float(tol)


def _grid(surface, resolution):
    if resolution is None:
        nx, ny = (min(len(surface.alphas), DEFAULT_RESOLUTION), min(len(surface.betas), DEFAULT_RESOLUTION))
    else:
        nx, ny = check_resolution(resolution)
    (a0, a1), (b0, b1) = surface.span
    return axis((a0, a1), nx), axis((b0, b1), ny)


def _directions(surface, private) -> list:
    """The surface's two directions under the private copy's names, dtypes and device; clear errors where they are
    not this Landscape's plane."""
    if not isinstance(surface, Surface):
        raise TypeError(f"surface must be an lw.Surface (from Landscape.plane), got {type(surface).__name__}")
    if not surface.directions or len(surface.directions) != 2:
        raise ValueError("surface has no directions (loaded from a file saved without them?); the curvature map "
                         "needs the plane's d1 and d2: recompute it with Landscape.plane")
    if surface.span is None or len(surface.alphas) < 2 or len(surface.betas) < 2:
        raise ValueError("surface has no grid (alphas and betas with at least 2 points each); pass a surface from "
                         "Landscape.plane")
    sha = surface.fingerprint
    if sha is not None and sha != private.fingerprint():
        raise ValueError("surface was computed at other weights than the model's current ones; its plane is "
                         "theta + a d1 + b d2 around those weights: recompute it with Landscape.plane")
    dirs = []
    for k, d in enumerate(surface.directions):
        d = private.canonical(d, f"surface.directions[{k}]")
        missing = [n for n in private.names if n not in d]
        extra = [n for n in d if n not in private.names]
        if missing or extra:
            raise ValueError(f"surface.directions[{k}] moves other parameters than this Landscape (missing "
                             f"{missing[:3]}, not moved here {extra[:3]}); compute the surface with this Landscape "
                             "(the same params=)")
        out = {}
        for n in private.names:
            ref = private.base[n]
            if tuple(d[n].shape) != tuple(ref.shape):
                raise ValueError(f"surface.directions[{k}][{n!r}] has shape {tuple(d[n].shape)}, the parameter's "
                                 f"is {tuple(ref.shape)}; compute the surface with this Landscape")
            out[n] = d[n].detach().to(device=ref.device, dtype=ref.dtype)
        dirs.append(out)
    return dirs


def point_weights(private, dirs, a: float, b: float) -> dict:
    """``theta + a d1 + b d2`` over the moved parameters, in their dtype, with the plane evaluator's arithmetic
    (base, then ``+ a d1``, then ``+ b d2``; a zero coefficient adds nothing): the plane's own points."""
    out = {}
    for n in private.names:
        w = private.base[n].clone()
        for c, d in zip((a, b), dirs):
            if c != 0.0:
                w.add_(d[n], alpha=float(c))
        out[n] = w
    return out


def curvature_map(problem, surface, *, resolution=None, tol=1e-2, seed=0, progress=True, callback=None,
                  cancel=None) -> CurvatureMap:
    """``Landscape.curvature_map``: the map on ``surface``'s plane (see the module docstring)."""
    private = problem.private()
    dirs = _directions(surface, private)
    alphas, betas = _grid(surface, resolution)
    tol = check_tol(tol)
    seed = check_seed(seed)
    if not isinstance(progress, (bool, np.bool_)):
        raise TypeError(f"progress must be True or False, got {progress!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a callable receiving a dict per finished point, or None; got "
                        f"{type(callback).__name__}")
    timer = Timer()
    nx, ny = len(alphas), len(betas)
    total = nx * ny
    lmax, lmin, losses = (np.full((nx, ny), np.nan) for _ in range(3))
    hvps = np.zeros((nx, ny), dtype=np.int64)
    warm = np.zeros((nx, ny), dtype=bool)
    unconverged, non_finite = [], []
    # one child stream per point (its random start, or the 1 % random part of its warm start)
    streams = np.random.SeedSequence(seed).spawn(total)
    micro = PLAN  # the micro-batch plan of the data, made at the first point and shared by all
    above = [None] * ny  # the Ritz vectors of the row above (the row being computed replaces them one by one)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc="curvature map", unit="pt", leave=False)
    try:
        for k in range(total):
            if is_cancelled(cancel):
                raise Cancelled(f"cancelled after {k} of {total} points")
            i, j = divmod(k, ny)
            op = HessianOperator(private, problem.data, problem.objective, cancel=cancel,
                                 weights=point_weights(private, dirs, alphas[i], betas[j]), micro_batches=micro)
            # row-major order: a point starts from its left neighbour's eigenvectors, a row's first point from the
            # point above; the first point, and one after a non-finite neighbour, from random.  (Left and above
            # together made 4 % more products on the digits MLP than one of them.)
            v0 = warm_start(above[j - 1] if j else above[j])
            vectors = None
            with op.running():
                try:
                    hi, lo, info = extreme_eigenvalues(op, tol=tol, rng=np.random.default_rng(streams[k]), v0=v0,
                                                       min_steps=MIN_STEPS if v0 is None else WARM_MIN_STEPS)
                except NonFinite:
                    non_finite.append([i, j])
                else:
                    lmax[i, j], lmin[i, j] = hi, lo
                    if not info["both"]["converged"]:
                        unconverged.append([i, j])
                    vectors = info["vectors"]
                    warm[i, j] = v0 is not None
                micro = op.micro_batches()
            above[j] = vectors
            losses[i, j] = np.nan if op.loss is None else op.loss
            hvps[i, j] = op.hvps
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{int(hvps.sum())} HVPs")
            if callback is not None:
                callback({"i": i, "j": j, "alpha": float(alphas[i]), "beta": float(betas[j]),
                          "lambda_max": float(lmax[i, j]), "lambda_min": float(lmin[i, j]),
                          "ratio": float(eig_ratio(lmax[i, j], lmin[i, j])),
                          "loss": float(losses[i, j]), "hvps": int(hvps[i, j]), "done": k + 1, "total": total})
    finally:
        if bar is not None:
            bar.close()
    elapsed = timer()
    meta = problem.describe(
        private, kind="curvature_map", resolution=[nx, ny], tol=tol, seed=seed, eigensolver=EIGENSOLVER,
        reference_settings=LI_ET_AL_SETTINGS, direction_kind=surface.direction_kind,
        surface_resolution=[len(surface.alphas), len(surface.betas)], hvps=int(hvps.sum()),
        hvps_per_point=hvps.tolist(), warm_started=warm.tolist(), non_finite=non_finite, unconverged=unconverged,
        timings={"total_s": round(elapsed, 6), "per_point_s": round(elapsed / total, 6),
                 "hvps_per_s": round(float(hvps.sum()) / max(elapsed, 1e-12), 3)})
    return CurvatureMap(alphas, betas, lmax, lmin, losses, meta)


__all__ = ["CurvatureMap", "NonFinite", "ShiftedOperator", "curvature_map", "extreme_eigenvalues"]
