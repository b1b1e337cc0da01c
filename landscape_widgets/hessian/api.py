"""``spectrum`` and ``trust`` of a :class:`~landscape_widgets.engine.Problem` (what ``Landscape.spectrum`` and
``Landscape.trust`` call).  Below the direction kinds: what a panel needs from them (a seed spread's directions,
the curvatures a kind found) comes in as arguments and typed result fields."""
from __future__ import annotations

import numbers

import numpy as np

from .._checks import check_int, check_seed
from ..runtime import Timer
from ..results import SeedSpread, Surface
from .hutchinson import METHODS
from .hvp import HessianOperator
from .spectrum import Spectrum, compute_spectrum
from .trust import spread_panel, trust_panel


def _check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _check_tol(tol):
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not 0 <= float(tol) < 1:
        raise ValueError(f"tol={tol!r} must be a number in [0, 1) (the eigenvalues' relative accuracy: residual "
                         "<= tol |lambda|; 0 = machine precision)")
    return float(tol)


def spectrum(problem, k=5, *, bottom=1, density=True, trace=True, seed=0, steps=90, runs=10, trace_samples=99,
             trace_method="hutch++", tol=1e-6, backend="graph", callback=None, cancel=None,
             progress=True) -> Spectrum:
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
    private = problem.private()
    P = private.num_parameters
    k = check_int(k, "k", low=1, high=P, hint=f" (eigenvalues; the model has {P} parameters)")
    bottom = check_int(bottom, "bottom", low=0, high=P, hint=f" (smallest eigenvalues; the model has {P} parameters)")
    op = HessianOperator(private, problem.data, problem.objective, backend=backend, cancel=cancel)
    with op.progress("spectrum", _check_bool(progress, "progress")) as stage, op.running():
        def report(name, done, total):
            stage(name if total is None else f"{name} {done}/{total}")
            if callback is not None:
                callback({"stage": name, "done": done, "total": total, "hvps": op.hvps})

        fields, record = compute_spectrum(op, k, bottom, density=density, trace=trace, seed=seed, steps=steps,
                                          runs=runs, trace_samples=trace_samples, trace_method=trace_method, tol=tol,
                                          report=report)
    record["timings"]["total_s"] = round(timer(), 6)
    return Spectrum(**fields, meta=problem.describe(private, kind="spectrum", **record))


def _same_weights(result, private, what):
    sha = result.fingerprint
    if sha is not None and sha != private.fingerprint():
        raise ValueError(f"{what} was computed at other weights than the model's current ones; recompute it "
                         "with this Landscape (the trust panel describes the model as it is now)")


def trust(problem, surface, *, spread_directions=None, spectrum=None, seed=0, trace_samples=99, tol=1e-6,
          cancel=None, progress=True, callback=None) -> dict:
    """The trust panel of ``surface``: a Surface, or a SeedSpread with ``spread_directions(private)``, which gives
    d1, d2 of every seed's plane in turn (a spread does not keep them; the direction kinds make them again)."""
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
    private = problem.private()
    _same_weights(surface, private, "seed spread" if spread else "surface")
    if spectrum is not None:
        _same_weights(spectrum, private, "spectrum")
    lambdas = None
    if spread:
        if spread_directions is None:
            raise ValueError("the trust panel of a seed spread needs its planes' directions; use Landscape.trust")
        dirs = list(spread_directions(private))
    else:
        lambdas = surface.curvatures  # those the direction kind found (Hessian directions): no second solve
        dirs = [{n: t.to(device=private.device, dtype=private.base[n].dtype) for n, t in d.items()}
                for d in surface.directions]
    tol = _check_tol(tol)
    known = None if spectrum is not None else _known_facts(problem, private, seed, tol, trace_samples)
    shown_tol, shown_samples = tol, trace_samples  # the accuracy of what the panel shows, which it states
    if known is not None:
        _, _, facts_tol, shown_samples = next(k for k, f in problem.hessian_facts.items() if f is known)
        if lambdas is None:
            lambdas, shown_tol = known["lambdas"], facts_tol
    op = HessianOperator(private, problem.data, problem.objective, cancel=cancel)
    vectors = {}
    warm = None if lambdas is not None or spectrum is not None else _warm_start(problem, op.num_parameters)
    with op.progress("trust panel", _check_bool(progress, "progress")), op.running():
        panel = trust_panel(op, dirs, spectrum=spectrum, lambdas=lambdas, seed=seed, trace_samples=shown_samples,
                            tol=shown_tol, trace=None if known is None else known["trace"],
                            trace_method=None if known is None else known.get("trace_method"),
                            report=None if spread else callback, warm=warm, vectors=vectors)
    panel["warm_start"] = warm is not None
    if spectrum is None and known is None:
        _remember_facts(problem, private, seed, tol, trace_samples, panel, vectors)
        # the newest entry (just added): with the estimator, so that a panel reusing its trace can name it
        problem.hessian_facts[next(reversed(problem.hessian_facts))]["trace_method"] = panel["trace_method"]
    panel["reused_hessian_facts"] = known is not None
    return spread_panel(panel, [int(s) for s in surface.seeds]) if spread else panel


def _known_facts(problem, private, seed, tol, trace_samples):
    """lambda_max, lambda_min and the trace of these weights, data and loss from an earlier panel of this problem
    that was at least as accurate (same seed, ``tol`` no looser, no fewer trace samples), else None."""
    now = private.fingerprint()
    for (sha, s, t, n), facts in problem.hessian_facts.items():
        if sha == now and s == seed and t <= tol and n >= trace_samples:
            return facts
    return None


def _remember_facts(problem, private, seed, tol, trace_samples, panel, vectors):
    facts = problem.hessian_facts
    if len(facts) > 32:  # weights of a training run come and go: keep the newest
        facts.pop(next(iter(facts)))
    for older in facts.values():  # eigenvectors are as large as the model: only the newest are kept
        older.pop("vectors", None)
    facts[(private.fingerprint(), seed, tol, trace_samples)] = {
        "lambdas": (panel["lambda_max"], panel["lambda_min"]),
        "trace": (panel["trace"], panel["trace_stderr"]),
        "vectors": (vectors["max"], vectors["min"]) if vectors else None}


def _warm_start(problem, num_parameters):
    """The eigenvectors of lambda_max and lambda_min of the newest earlier panel (other weights of the same model:
    a training run moves them a little), for Lanczos to start from; None when there are none."""
    for facts in reversed(list(problem.hessian_facts.values())):
        vectors = facts.get("vectors")
        if vectors is not None and all(len(v) == num_parameters for v in vectors):
            return vectors
    return None


__all__ = ["spectrum", "trust"]
