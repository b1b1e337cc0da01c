"""The trust panel: evidence, next to a surface, of what its 2-D slice hides.

- Curvature along each plotted direction, ``kappa(d) = d^T H d / ||d||^2`` (one Hessian-vector product each), beside
  ``lambda_max``, ``lambda_min``, Li et al.'s ratio ``|lambda_min / lambda_max|`` and ``tr(H)/N``.  For random
  directions ``E[kappa] = tr(H)/N`` (Böttcher & Wheeler 2022, arXiv 2208.13219, eq. 10), so both kappas come out
  positive at a saddle whose trace is positive.
- Each eigenvalue comes with its error bound.  Lanczos (and ARPACK) stop when the Ritz pair's residual is at most
  ``tol * max(eps^(2/3), |theta|)`` (:func:`~landscape_widgets.hessian.lanczos.extreme_eigenpairs`), and an
  eigenvalue of ``H`` lies within the residual of the Ritz value (Parlett 1998, Thm 4.5.1); the products are computed
  in the model's dtype, which moves every eigenvalue by up to ``eps_dtype ||H||`` more (Weyl).
  ``negative_curvature``: ``lambda_min < 0`` beyond that bound.
- The alarm, ``hides_saddle``: the negative curvature is *strong* -- ``|lambda_min| >= SADDLE_RATIO * lambda_max``,
  both taken at the ends of their error bars least favourable to the alarm -- while both kappas are ``> 0``.
- The panel of a seed spread (:class:`~landscape_widgets.results.SeedSpread`): both kappas for every seed's plane,
  and the seeds whose plane hides a saddle by the same rule.

Why a ratio threshold.  Trained networks almost always keep small negative eigenvalues: Ghorbani, Krishnan & Xiao
2019 (arXiv 1901.10159) find the negative part of the spectrum of trained networks tiny next to its positive
outliers, and Li et al. 2018 (arXiv 1712.09913, §6) map ``|lambda_min / lambda_max|`` over their plots and read
regions where it is near zero as convex ("insignificant negative eigenvalues"), keeping "non-convex" for large
ratios.  A rule of ``lambda_min < 0`` alone therefore fires on nearly every trained network, its random slices
curving upwards.  ``SADDLE_RATIO = 0.05`` sits between the two regimes: the embedded digits models, trained as the
demo trains them (30 epochs), have ratios of 0.2-0.8 % (MLP seeds 0-2: 0.69 %, 0.23 %, 0.80 %; CNN: 0.38 %), and
the MLP 4.5 % after 5 epochs, while at initialization both have 12 % and the random-weight test models 40 % and
91 %.  Below 5 %, an equal step along the eigenvectors of ``lambda_min`` and ``lambda_max`` falls by less than a
twentieth of what it rises: about one of the surface plot's 24 contour intervals, were that rise its colour range.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .hutchinson import hutchinson_trace
from .lanczos import EPS23, extreme_eigenpairs
from .spectrum import seed_streams

SADDLE_RATIO = 0.05  # |lambda_min| >= 5 % of lambda_max: negative curvature worth an alarm (see the module docstring)
EPS = float(np.finfo(np.float64).eps)  # the accuracy tol=0 stands for (extreme_eigenpairs: machine precision)


def curvature(op, d: dict) -> float:
    """``kappa(d) = d^T H d / ||d||^2``; NaN for a zero direction."""
    v = op.flatten({n: d[n].to(op.device) for n in op.names}).double()
    norm2 = float((v * v).sum())
    if norm2 == 0.0:
        return float("nan")
    return op.quadratic_form(d) / norm2


def eigenvalue_error(value: float, tol: float, norm: float = 0.0, dtype=torch.float64) -> float:
    """Bound on ``|lambda - theta|`` for a Ritz value ``theta`` accepted at ``tol``: the stopping residual
    ``tol * max(eps^(2/3), |theta|)`` (ARPACK's ``dsconv``; Parlett Thm 4.5.1: an eigenvalue lies within the
    residual), plus ``eps_dtype * norm`` (``norm = ||H||``) for products rounded in ``dtype`` (Weyl's inequality)."""
    return max(float(tol), EPS) * max(EPS23, abs(float(value))) + float(torch.finfo(dtype).eps) * float(norm)


def strong_negative_curvature(lmax, lmin, err_max=0.0, err_min=0.0, threshold=SADDLE_RATIO):
    """``(negative, strong)``: ``lambda_min < 0`` beyond its error, and ``|lambda_min| >= threshold * lambda_max``
    with both ends of the error bars against the alarm (the smallest ``|lambda_min|``, the largest ``lambda_max``).
    ``lambda_max <= 0`` (no upward curvature at all) makes any negative curvature strong."""
    worst_min = float(lmin) + float(err_min)
    negative = worst_min < 0
    return bool(negative), bool(negative and -worst_min >= threshold * (float(lmax) + float(err_max)))


def hides_saddle(strong: bool, kappas) -> bool:
    """The panel's saddle rule: the Hessian has strong negative curvature, yet every plotted direction curves
    upwards."""
    return bool(strong and all(k > 0 for k in kappas))


def _ratio_words(panel) -> str:
    """What the alarm rests on, in the panel's numbers: "λmin = -0.5 is 54.2 % of λmax = 0.923 (alarm from 5 %)"."""
    share = (f"{100 * panel['eig_ratio']:.3g} % of" if math.isfinite(panel["eig_ratio"]) else "against")
    return (f"λmin = {panel['lambda_min']:.3g} is {share} λmax = {panel['lambda_max']:.3g} "
            f"(alarm from {100 * panel['saddle_threshold']:g} %)")


def trust_panel(op, directions, *, spectrum=None, lambdas=None, trace=None, seed=0, trace_samples=99, tol=1e-6,
                report=None, warm=None, vectors=None, trace_method=None):
    """The trust panel for ``directions`` (dicts) as a plain dict (JSON-ready; ``Surface.trust``).

    ``spectrum`` (an ``lw.Spectrum`` at the same weights), ``lambdas=(lambda_max, lambda_min)`` and
    ``trace=(trace, stderr)`` save the eigenvalue and trace computations; ``tol`` is the accuracy the eigenvalues
    were (or are) computed to, ``trace_samples`` / ``trace_method`` what estimated the trace (a spectrum's own
    settings take their place).  ``report(partial)`` receives the panel as it grows, marked ``partial``: the
    curvatures first, then with the eigenvalues (the trace comes last).  ``warm=(v_max, v_min)``: Lanczos starts
    from these vectors (the eigenvectors of earlier, nearby weights), held to the same convergence test;
    ``vectors`` (a dict) receives this panel's eigenvectors as ``"max"``/``"min"``.
    """
    h0 = op.hvps
    N = op.num_parameters
    kappas = [curvature(op, d) for d in directions]
    if report is not None:
        report({"kappa": [float(k) for k in kappas], "num_parameters": N, "partial": True})
    trace, stderr = trace if trace is not None else (None, None)
    converged = True
    if spectrum is not None:
        lmax, lmin = spectrum.lambda_max, spectrum.lambda_min
        trace, stderr = spectrum.trace, spectrum.trace_stderr
        tol = spectrum.tol if spectrum.tol is not None else tol
        trace_samples, trace_method = spectrum.trace_samples, spectrum.trace_method
        converged = spectrum.converged is not False
    elif lambdas is not None:
        lmax, lmin = (float(v) for v in lambdas)
    else:
        rng_top, rng_bottom, _, _ = seed_streams(seed)
        w_max, w_min = warm if warm is not None else (None, None)
        top, v_max, info_top = extreme_eigenpairs(op, 1, "LA", rng=rng_top, tol=tol, v0=w_max)
        bottom, v_min, info_bottom = extreme_eigenpairs(op, 1, "SA", rng=rng_bottom, tol=tol, v0=w_min)
        lmax, lmin = float(top[0]), float(bottom[0])
        converged = bool(info_top.get("converged", True) and info_bottom.get("converged", True))
        if vectors is not None:
            vectors.update(max=v_max[:, 0], min=v_min[:, 0])
    lmax, lmin = float(lmax), float(lmin)
    if report is not None:
        report({"kappa": [float(k) for k in kappas], "num_parameters": N, "partial": True,
                "lambda_max": lmax, "lambda_min": lmin})
    if trace is None:
        trace, stderr, info = hutchinson_trace(op, trace_samples, rng=seed_streams(seed)[3],
                                               **({} if trace_method is None else {"method": trace_method}))
        trace_method = info["method"]
    # an estimate that did not converge has no error bound: it cannot raise the alarm
    norm = max(abs(lmax), abs(lmin))
    dtype = getattr(op, "dtype", torch.float64)
    err_max = eigenvalue_error(lmax, tol, norm, dtype) if converged else math.inf
    err_min = eigenvalue_error(lmin, tol, norm, dtype) if converged else math.inf
    negative, strong = strong_negative_curvature(lmax, lmin, err_max, err_min)
    hides = hides_saddle(strong, kappas)
    panel = {"kappa": [float(k) for k in kappas], "lambda_max": lmax, "lambda_min": lmin,
             "lambda_max_error": err_max, "lambda_min_error": err_min, "tol": float(tol),
             "eigenvalues_converged": converged,
             "trace": float(trace), "trace_stderr": float(stderr), "trace_over_n": float(trace) / N,
             "trace_over_n_stderr": float(stderr) / N, "trace_method": trace_method,
             "trace_samples": None if trace_samples is None else int(trace_samples), "num_parameters": N,
             "eig_ratio": abs(lmin / lmax) if lmax != 0 else float("nan"), "saddle_threshold": SADDLE_RATIO,
             "negative_curvature": negative, "strong_negative_curvature": strong,
             "hides_saddle": hides, "hvps": op.hvps - h0}
    panel["warning"] = (f"{_ratio_words(panel)}, but both plotted directions curve upwards: this slice hides a saddle"
                        if hides else None)
    return panel


def spread_panel(panel: dict, seeds: list) -> dict:
    """A trust panel over the 2K directions of K seeds' planes (``trust_panel`` of d1, d2 of each seed in turn) as
    the panel of their median: ``kappa_per_seed`` [K][2], ``kappa_range`` [[min, max] of kappa(d1)], [... d2]],
    ``hides_saddle_seeds`` (the seeds whose plane hides a saddle, by the single plane's rule) and ``hides_saddle``
    when any does."""
    pairs = [panel["kappa"][2 * i:2 * i + 2] for i in range(len(seeds))]
    hiding = [s for s, pair in zip(seeds, pairs) if hides_saddle(panel["strong_negative_curvature"], pair)]
    out = dict(panel, seeds=list(seeds), kappa_per_seed=pairs,
               kappa_range=[[min(p[j] for p in pairs), max(p[j] for p in pairs)] for j in range(2)],
               hides_saddle=bool(hiding), hides_saddle_seeds=hiding)
    del out["kappa"]  # kappa_per_seed instead: "the two kappas" of a median of planes would mean nothing
    out["warning"] = (f"{_ratio_words(panel)}, but both directions curve upwards in the planes of {len(hiding)} of "
                      f"{len(seeds)} seeds: those slices hide a saddle" if hiding else None)
    return out
