"""The trust panel: evidence, next to a surface, of what its 2-D slice hides.

- Curvature along each plotted direction, ``kappa(d) = d^T H d / ||d||^2`` (one Hessian-vector product each), beside
  ``lambda_max``, ``lambda_min`` and ``tr(H)/N``.  For random directions ``E[kappa] = tr(H)/N`` (Böttcher & Wheeler
  2022, arXiv 2208.13219, eq. 10), so both kappas come out positive at a saddle whose trace is positive:
  ``hides_saddle`` flags ``lambda_min < 0`` while both kappas are ``> 0``.
- The panel of a seed spread (:class:`~landscape_widgets.results.SeedSpread`): both kappas for every seed's plane.
"""
from __future__ import annotations

from .hutchinson import hutchinson_trace
from .lanczos import extreme_eigenpairs
from .spectrum import seed_streams

NEGATIVE_RTOL = 1e-6  # lambda_min counts as negative below -1e-6 |lambda_max|: above that it is rounding noise


def curvature(op, d: dict) -> float:
    """``kappa(d) = d^T H d / ||d||^2``; NaN for a zero direction."""
    v = op.flatten({n: d[n].to(op.device) for n in op.names}).double()
    norm2 = float((v * v).sum())
    if norm2 == 0.0:
        return float("nan")
    return op.quadratic_form(d) / norm2


def hides_saddle(negative_curvature: bool, kappas) -> bool:
    """The panel's saddle rule: the Hessian has a negative eigenvalue, yet every plotted direction curves upwards."""
    return bool(negative_curvature and all(k > 0 for k in kappas))


def trust_panel(op, directions, *, spectrum=None, lambdas=None, trace=None, seed=0, trace_samples=99, tol=1e-6,
                report=None, warm=None, vectors=None):
    """The trust panel for ``directions`` (dicts) as a plain dict (JSON-ready; stored in ``surface.meta``).

    ``spectrum`` (an ``lw.Spectrum`` at the same weights), ``lambdas=(lambda_max, lambda_min)`` and
    ``trace=(trace, stderr)`` save the eigenvalue and trace computations.  ``report(partial)`` receives the panel
    as it grows, marked ``partial``: the curvatures first, then with the eigenvalues (the trace comes last).
    ``warm=(v_max, v_min)``: Lanczos starts from these vectors (the eigenvectors of earlier, nearby weights), held
    to the same convergence test; ``vectors`` (a dict) receives this panel's eigenvectors as ``"max"``/``"min"``.
    """
    h0 = op.hvps
    N = op.num_parameters
    kappas = [curvature(op, d) for d in directions]
    if report is not None:
        report({"kappa": [float(k) for k in kappas], "num_parameters": N, "partial": True})
    trace, stderr = trace if trace is not None else (None, None)
    if spectrum is not None:
        lmax, lmin = spectrum.lambda_max, spectrum.lambda_min
        trace, stderr = spectrum.trace, spectrum.trace_stderr
    elif lambdas is not None:
        lmax, lmin = (float(v) for v in lambdas)
    else:
        rng_top, rng_bottom, _, _ = seed_streams(seed)
        w_max, w_min = warm if warm is not None else (None, None)
        top, v_max, _ = extreme_eigenpairs(op, 1, "LA", rng=rng_top, tol=tol, v0=w_max)
        bottom, v_min, _ = extreme_eigenpairs(op, 1, "SA", rng=rng_bottom, tol=tol, v0=w_min)
        lmax, lmin = float(top[0]), float(bottom[0])
        if vectors is not None:
            vectors.update(max=v_max[:, 0], min=v_min[:, 0])
    if report is not None:
        report({"kappa": [float(k) for k in kappas], "num_parameters": N, "partial": True,
                "lambda_max": float(lmax), "lambda_min": float(lmin)})
    if trace is None:
        trace, stderr, _ = hutchinson_trace(op, trace_samples, rng=seed_streams(seed)[3])
    negative = lmin < -NEGATIVE_RTOL * abs(lmax)
    hides = hides_saddle(negative, kappas)
    return {"kappa": [float(k) for k in kappas], "lambda_max": float(lmax), "lambda_min": float(lmin),
            "trace": float(trace), "trace_stderr": float(stderr), "trace_over_n": float(trace) / N,
            "trace_over_n_stderr": float(stderr) / N, "num_parameters": N,
            "eig_ratio": abs(lmin / lmax) if lmax != 0 else float("nan"), "negative_curvature": bool(negative),
            "hides_saddle": hides, "hvps": op.hvps - h0,
            "warning": ("lambda_min < 0 but both plotted directions curve upwards: this slice hides a saddle"
                        if hides else None)}


def spread_panel(panel: dict, seeds: list) -> dict:
    """A trust panel over the 2K directions of K seeds' planes (``trust_panel`` of d1, d2 of each seed in turn) as
    the panel of their median: ``kappa_per_seed`` [K][2], ``kappa_range`` [[min, max] of kappa(d1)], [... d2]],
    ``hides_saddle_seeds`` (the seeds whose plane hides a saddle) and ``hides_saddle`` when any does."""
    pairs = [panel["kappa"][2 * i:2 * i + 2] for i in range(len(seeds))]
    hiding = [s for s, pair in zip(seeds, pairs) if hides_saddle(panel["negative_curvature"], pair)]
    out = dict(panel, seeds=list(seeds), kappa_per_seed=pairs,
               kappa_range=[[min(p[j] for p in pairs), max(p[j] for p in pairs)] for j in range(2)],
               hides_saddle=bool(hiding), hides_saddle_seeds=hiding)
    del out["kappa"]  # kappa_per_seed instead: "the two kappas" of a median of planes would mean nothing
    out["warning"] = (f"lambda_min < 0 but both directions curve upwards in the planes of {len(hiding)} of "
                      f"{len(seeds)} seeds: those slices hide a saddle" if hiding else None)
    return out
