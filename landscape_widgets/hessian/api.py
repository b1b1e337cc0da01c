"""What ``Landscape.spectrum``, ``Landscape.trust`` and ``Landscape.seed_spread`` do (kept here so that the
entry point stays a thin layer)."""
from __future__ import annotations

import numbers

import numpy as np

from .._checks import check_int
from ..evaluator import Timer
from .hutchinson import METHODS
from .hvp import HessianOperator
from .spectrum import Spectrum, compute_spectrum
from .trust import SeedSpread, spread_panel, trust_panel


def _check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _check_tol(tol):
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not 0 <= float(tol) < 1:
        raise ValueError(f"tol={tol!r} must be a number in [0, 1) (the eigenvalues' relative accuracy: residual "
                         "<= tol |lambda|; 0 = machine precision)")
    return float(tol)


def spectrum(ls, k=5, *, bottom=1, density=True, trace=True, seed=0, steps=90, runs=10, trace_samples=99,
             trace_method="hutch++", tol=1e-6, backend="graph", callback=None, cancel=None) -> Spectrum:
    from ..directions.gaussian import check_seed

    seed = check_seed(seed)
    density = _check_bool(density, "density")
    trace = _check_bool(trace, "trace")
    steps = check_int(steps, "steps", low=1, hint=" (Lanczos steps per run, about 90)")
    runs = check_int(runs, "runs", low=1, hint=" (SLQ runs averaged)")
    trace_samples = check_int(trace_samples, "trace_samples", low=2, hint=" (Hessian-vector products for the trace)")
    if trace_method not in METHODS:
        raise ValueError(f"trace_method={trace_method!r} is not known; pass one of {', '.join(map(repr, METHODS))}")
    tol = _check_tol(tol)
    timer = Timer()
    private = ls._fresh()
    P = private.num_parameters
    k = check_int(k, "k", low=1, high=P, hint=f" (eigenvalues; the model has {P} parameters)")
    bottom = check_int(bottom, "bottom", low=0, high=P, hint=f" (smallest eigenvalues; the model has {P} parameters)")
    op = HessianOperator(private, ls.data, ls.objective, backend=backend, cancel=cancel)
    report = None if callback is None else (lambda stage, done, total: callback(
        {"stage": stage, "done": done, "total": total, "hvps": op.hvps}))
    with op.running():
        fields, meta = compute_spectrum(op, k, bottom, density=density, trace=trace, seed=seed, steps=steps, runs=runs,
                                        trace_samples=trace_samples, trace_method=trace_method, tol=tol,
                                        report=report)
    meta["timings"]["total_s"] = round(timer(), 6)
    return Spectrum(**fields, meta=ls._meta(private, kind="spectrum", **meta))


def _same_weights(result, private, what):
    sha = result.meta.get("model_sha256")
    if sha is not None and sha != private.fingerprint():
        raise ValueError(f"{what} was computed at other weights than the model's current ones; recompute it "
                         "with this Landscape (the trust panel describes the model as it is now)")


def trust(ls, surface, *, spectrum=None, seed=0, trace_samples=99, tol=1e-6, cancel=None) -> dict:
    from ..results import Surface

    spread = isinstance(surface, SeedSpread)
    if not spread and not isinstance(surface, Surface):
        raise TypeError(f"surface must be an lw.Surface (from Landscape.plane) or an lw.SeedSpread (from "
                        f"Landscape.seed_spread), got {type(surface).__name__}")
    if not spread and not surface.directions:
        raise ValueError("surface has no directions (loaded from a file without them?); recompute it with "
                         "Landscape.plane")
    if spectrum is not None and not isinstance(spectrum, Spectrum):
        raise TypeError(f"spectrum must be an lw.Spectrum (from Landscape.spectrum) or None, got "
                        f"{type(spectrum).__name__}")
    private = ls._fresh()
    _same_weights(surface, private, "seed spread" if spread else "surface")
    if spectrum is not None:
        _same_weights(spectrum, private, "spectrum")
    lambdas = None
    if spread:
        dirs = _spread_directions(surface, private)
    else:
        if surface.meta.get("direction_kind") == "hessian" and surface.meta.get("lambda_min") is not None:
            lambdas = (surface.meta["lambda_max"], surface.meta["lambda_min"])
        dirs = [{n: t.to(device=private.device, dtype=private.base[n].dtype) for n, t in d.items()}
                for d in surface.directions]
    op = HessianOperator(private, ls.data, ls.objective, cancel=cancel)
    with op.running():
        panel = trust_panel(op, dirs, spectrum=spectrum, lambdas=lambdas, seed=seed, trace_samples=trace_samples,
                            tol=_check_tol(tol))
    return spread_panel(panel, [int(s) for s in surface.seeds]) if spread else panel


def _spread_directions(spread, private):
    """d1, d2 of every seed's plane in turn, regenerated from the seed and the spread's settings as ``plane`` made
    them (a spread keeps no directions: K pairs of model-sized tensors)."""
    from ..directions import make_directions

    meta = spread.meta
    kind = meta.get("direction_kind")
    if kind != "random" or meta.get("normalization") is None:
        raise ValueError(f"the trust panel of a seed spread needs random directions (this one has "
                         f"{kind!r}); pass a spread from Landscape.seed_spread(directions='random')")
    dirs = []
    for s in spread.seeds:
        pair, _ = make_directions(kind, private, 2, argname="directions", seed=int(s),
                                  normalization=meta["normalization"], ignore=meta.get("ignore"))
        dirs += list(pair)
    return dirs


def seed_spread(ls, seeds=5, *, directions="random", callback=None, cancel=None, **plane_options) -> SeedSpread:
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        seeds = list(range(check_int(seeds, "seeds", low=2, hint=" (how many seeds, or a list of seeds)")))
    elif isinstance(seeds, (list, tuple, range, np.ndarray)) and len(seeds) >= 2:
        seeds = [int(s) for s in seeds]
    else:
        raise ValueError(f"seeds must be a count >= 2 or a list of at least 2 seeds, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {seeds} repeat; pass distinct seeds")
    plane_options.setdefault("progress", False)
    timer = Timer()
    center = ls.loss()
    surfaces = []
    for k, s in enumerate(seeds):
        tile_cb = None if callback is None else (lambda tile, k=k: callback(k, tile))
        surfaces.append(ls.plane(directions=directions, seed=s, callback=tile_cb, cancel=cancel, **plane_options))
    first = surfaces[0]
    for s in surfaces[1:]:
        if not (np.array_equal(s.alphas, first.alphas) and np.array_equal(s.betas, first.betas)):
            raise ValueError("the seeds' planes have different grids (a span that depends on the seed); pass an "
                             "explicit span so that cells compare")
    meta = {k: v for k, v in first.meta.items() if k not in ("seed", "timings", "cosine")}
    meta.update(kind="seed_spread", seeds=seeds, center_loss=center, cosines=[s.meta.get("cosine") for s in surfaces],
                sharpness_definition="100 * (max over the grid of L - L0) / (1 + L0) (Keskar et al. 2017, "
                                     "arXiv 1609.04836, Metric 2.1, box replaced by the plotted grid)",
                total_s=round(timer(), 6))
    return SeedSpread(first.alphas, first.betas, seeds, np.stack([s.losses for s in surfaces]), meta)


__all__ = ["seed_spread", "spectrum", "trust"]
