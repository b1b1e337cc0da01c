"""``spectrum`` and ``trust`` of a :class:`~landscape_widgets.engine.Problem` (what ``Landscape.spectrum`` and
``Landscape.trust`` call).  Below the direction kinds: what a panel needs from them (a seed spread's directions,
the curvatures a kind found) comes in as arguments and typed result fields."""
from __future__ import annotations

import contextlib
import numbers

import numpy as np

from .._checks import check_int, check_seed
from ..runtime import Timer
from ..results import SeedSpread, Surface
from .hutchinson import METHODS
from .operators import check_curvature, make_operator
from .spread import spread_of
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


def operator(problem, private, *, curvature="hessian", client=None, backend="graph", cancel=None):
    """The curvature operator of ``problem`` at ``private``'s weights: here, or summed over the shards of the data
    on the workers of a Dask ``client``."""
    check_curvature(curvature)
    if client is not None:
        from .sharded import sharded_operator
        return sharded_operator(client, problem, curvature=curvature, cancel=cancel, backend=backend)
    return make_operator(curvature, private, problem.data, problem.objective, backend=backend, cancel=cancel)


@contextlib.contextmanager
def _closing(op):
    """An operator on Dask workers gives their shards back when the computation ends (``close``)."""
    try:
        yield op
    finally:
        close = getattr(op, "close", None)
        if close is not None:
            close()


def _spectrum_values(spec) -> dict:
    out = {f"top_{i + 1}": float(v) for i, v in enumerate(spec.top_eigenvalues)}
    out.update({f"bottom_{i + 1}": float(v) for i, v in enumerate(spec.bottom_eigenvalues)})
    out["lambda_max"] = spec.lambda_max
    out["lambda_min"] = spec.lambda_min
    if np.isfinite(spec.trace):
        out["trace_over_n"] = spec.trace / spec.num_parameters
    return out


def spectrum(problem, k=5, *, bottom=1, density=True, trace=True, seed=0, steps=90, runs=10, trace_samples=99,
             trace_method="hutch++", tol=1e-6, backend="graph", callback=None, cancel=None,
             progress=True, curvature="hessian", client=None, spread=None) -> Spectrum:
    """``spread``: the problems on disjoint subsets (the first is ``problem``); the others give the same
    eigenvalues and trace (no density) for :attr:`Spectrum.spread`."""
    seed = check_seed(seed)
    density = _check_bool(density, "density")
    trace = _check_bool(trace, "trace")
    steps = check_int(steps, "steps", low=1, hint=" (Lanczos steps per run, about 90)")
    runs = check_int(runs, "runs", low=1, hint=" (SLQ runs averaged)")
    trace_samples = check_int(trace_samples, "trace_samples", low=2, hint=" (Hessian-vector products for the trace)")
    if trace_method not in METHODS:
        raise ValueError(f"trace_method={trace_method!r} is not known; pass one of {', '.join(map(repr, METHODS))}")
    tol = _check_tol(tol)
    check_curvature(curvature)
    timer = Timer()
    private = problem.private()
    P = private.num_parameters
    k = check_int(k, "k", low=1, high=P, hint=f" (eigenvalues; the model has {P} parameters)")
    bottom = check_int(bottom, "bottom", low=0, high=P, hint=f" (smallest eigenvalues; the model has {P} parameters)")
    problems = list(spread) if spread else [problem]
    done = []
    for index, part in enumerate(problems):
        with_density = density and index == 0
        op = operator(part, private, curvature=curvature, client=client, backend=backend, cancel=cancel)
        where = f"subset {index + 1}/{len(problems)} " if len(problems) > 1 else ""
        with _closing(op), op.progress("spectrum", _check_bool(progress, "progress")) as stage, op.running():
            def report(name, done_, total, op=op):
                stage(name if total is None else f"{name} {done_}/{total}")
                if callback is not None:
                    callback({"stage": where + name, "done": done_, "total": total, "hvps": op.hvps,
                              **({"subset": index, "subsets": len(problems)} if len(problems) > 1 else {})})

            fields, record = compute_spectrum(op, k, bottom, density=with_density, trace=trace, seed=seed,
                                              steps=steps, runs=runs, trace_samples=trace_samples,
                                              trace_method=trace_method, tol=tol, report=report)
        record["curvature"] = curvature
        record["timings"]["total_s"] = round(timer(), 6)
        done.append(Spectrum(**fields, meta=part.describe(private, kind="spectrum", **record)))
    first = done[0]
    if len(done) > 1:
        first = Spectrum(first.top_eigenvalues, first.bottom_eigenvalues, first.trace, first.trace_stderr,
                         first.density_grid, first.density, meta=dict(first.meta, timings=dict(
                             first.meta["timings"], total_s=round(timer(), 6))),
                         slq_nodes=first.slq_nodes, slq_weights=first.slq_weights,
                         spread=spread_of([_spectrum_values(s) for s in done], problems[0].data.num_samples,
                                          [p.data.describe() for p in problems]))
    return first


def _same_weights(result, private, what):
    sha = result.fingerprint
    if sha is not None and sha != private.fingerprint():
        raise ValueError(f"{what} was computed at other weights than the model's current ones; recompute it "
                         "with this Landscape (the trust panel describes the model as it is now)")


def _trust_values(panel) -> dict:
    out = {"lambda_max": panel["lambda_max"], "lambda_min": panel["lambda_min"],
           "trace_over_n": panel["trace_over_n"], "eig_ratio": panel["eig_ratio"]}
    for i, v in enumerate(panel.get("kappa") or ()):
        out[f"kappa_d{i + 1}"] = v
    return out


def trust(problem, surface, *, spread_directions=None, spectrum=None, seed=0, trace_samples=99, tol=1e-6,
          cancel=None, progress=True, callback=None, curvature="hessian", client=None, spread=None) -> dict:
    """The trust panel of ``surface``: a Surface, or a SeedSpread with ``spread_directions(private)``, which gives
    d1, d2 of every seed's plane in turn (a spread does not keep them; the direction kinds make them again).
    ``spread``: the problems on disjoint subsets (the first is ``problem``): the panel is the first's, with
    ``spread`` (:func:`~.spread.spread_of`) of the eigenvalues, kappas and tr(H)/N over all of them."""
    if not spread:
        return _trust(problem, surface, spread_directions=spread_directions, spectrum=spectrum, seed=seed,
                      trace_samples=trace_samples, tol=tol, cancel=cancel, progress=progress, callback=callback,
                      curvature=curvature, client=client)
    if spectrum is not None:
        raise ValueError("spread= recomputes the eigenvalues on every subset; leave spectrum= out (or pass "
                         "spread=None to reuse the spectrum)")
    panels = []
    for index, part in enumerate(spread):
        panels.append(_trust(part, surface, spread_directions=spread_directions, seed=seed,
                             trace_samples=trace_samples, tol=tol, cancel=cancel, progress=progress,
                             callback=callback if index == 0 else None, curvature=curvature, client=client))
    values = [_trust_values(p) for p in panels]
    return dict(panels[0], spread=spread_of(values, spread[0].data.num_samples, [p.data.describe() for p in spread]),
                hvps=int(sum(p["hvps"] for p in panels)))


def _trust(problem, surface, *, spread_directions=None, spectrum=None, seed=0, trace_samples=99, tol=1e-6,
           cancel=None, progress=True, callback=None, curvature="hessian", client=None) -> dict:
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
    check_curvature(curvature)
    private = problem.private()
    _same_weights(surface, private, "seed spread" if spread else "surface")
    if spectrum is not None:
        _same_weights(spectrum, private, "spectrum")
        _same_source(spectrum, problem, curvature)
    lambdas = None
    if spread:
        if spread_directions is None:
            raise ValueError("the trust panel of a seed spread needs its planes' directions; use Landscape.trust")
        dirs = list(spread_directions(private))
    else:
        # the eigenvalues a Hessian direction kind found, when they are of this curvature and data: no second solve
        lambdas = surface.curvatures if _same_curvature_data(surface, problem, curvature) else None
        dirs = [{n: t.to(device=private.device, dtype=private.base[n].dtype) for n, t in d.items()}
                for d in surface.directions]
    tol = _check_tol(tol)
    known = None if spectrum is not None else _known_facts(problem, private, seed, tol, trace_samples, curvature)
    shown_tol, shown_samples = tol, trace_samples  # the accuracy of what the panel shows, which it states
    if known is not None:
        _, _, facts_tol, shown_samples, _ = next(k for k, f in problem.hessian_facts.items() if f is known)
        if lambdas is None:
            lambdas, shown_tol = known["lambdas"], facts_tol
    op = operator(problem, private, curvature=curvature, client=client, cancel=cancel)
    vectors = {}
    warm = None if lambdas is not None or spectrum is not None else _warm_start(problem, op.num_parameters,
                                                                                  curvature)
    with _closing(op), op.progress("trust panel", _check_bool(progress, "progress")), op.running():
        panel = trust_panel(op, dirs, spectrum=spectrum, lambdas=lambdas, seed=seed, trace_samples=shown_samples,
                            tol=shown_tol, trace=None if known is None else known["trace"],
                            trace_method=None if known is None else known.get("trace_method"),
                            report=None if spread else callback, warm=warm, vectors=vectors)
    panel["warm_start"] = warm is not None
    panel["curvature"] = curvature
    panel["data"] = problem.data.describe()
    if spectrum is None and known is None:
        _remember_facts(problem, private, seed, tol, trace_samples, curvature, panel, vectors)
        # the newest entry (just added): with the estimator, so that a panel reusing its trace can name it
        problem.hessian_facts[next(reversed(problem.hessian_facts))]["trace_method"] = panel["trace_method"]
    panel["reused_hessian_facts"] = known is not None
    return spread_panel(panel, [int(s) for s in surface.seeds]) if spread else panel


def _same_source(spectrum, problem, curvature):
    """A spectrum lends its eigenvalues only to a panel of the same curvature on the same data."""
    if (spectrum.curvature or "hessian") != curvature:
        raise ValueError(f"spectrum is of the {spectrum.curvature or 'hessian'} and the panel asks for the "
                         f"{curvature}; pass a spectrum computed with curvature={curvature!r}, or none")
    if spectrum.data is not None and spectrum.data != problem.data.describe():
        raise ValueError(f"spectrum was computed on other data ({spectrum.data}) than the panel's "
                         f"({problem.data.describe()}); pass the same samples= to both, or no spectrum")


def _same_curvature_data(surface, problem, curvature) -> bool:
    """Whether a Hessian-direction surface's eigenvalues are of ``curvature`` on ``problem``'s data."""
    if surface.curvatures is None:
        return False
    meta = surface.meta
    return (meta.get("curvature") or "hessian") == curvature and \
        meta.get("eigen_data", surface.data) == problem.data.describe()


def _known_facts(problem, private, seed, tol, trace_samples, curvature):
    """lambda_max, lambda_min and the trace of these weights, data, loss and curvature from an earlier panel of
    this problem that was at least as accurate (same seed, ``tol`` no looser, no fewer trace samples), else None."""
    now = private.fingerprint()
    for (sha, s, t, n, c), facts in problem.hessian_facts.items():
        if sha == now and s == seed and t <= tol and n >= trace_samples and c == curvature:
            return facts
    return None


def _remember_facts(problem, private, seed, tol, trace_samples, curvature, panel, vectors):
    facts = problem.hessian_facts
    if len(facts) > 32:  # weights of a training run come and go: keep the newest
        facts.pop(next(iter(facts)))
    for older in facts.values():  # eigenvectors are as large as the model: only the newest are kept
        older.pop("vectors", None)
    facts[(private.fingerprint(), seed, tol, trace_samples, curvature)] = {
        "lambdas": (panel["lambda_max"], panel["lambda_min"]),
        "trace": (panel["trace"], panel["trace_stderr"]),
        "vectors": (vectors["max"], vectors["min"]) if vectors else None, "curvature": curvature}


def _warm_start(problem, num_parameters, curvature="hessian"):
    """The eigenvectors of lambda_max and lambda_min of the newest earlier panel of the same curvature (other
    weights of the same model: a training run moves them a little), for Lanczos to start from; None when there
    are none."""
    for facts in reversed(list(problem.hessian_facts.values())):
        vectors = facts.get("vectors")
        if vectors is not None and facts.get("curvature", "hessian") == curvature and \
                all(len(v) == num_parameters for v in vectors):
            return vectors
    return None


__all__ = ["spectrum", "trust"]
