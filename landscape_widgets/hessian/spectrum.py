"""``lw.Spectrum``: extreme eigenvalues, trace and spectral density of the Hessian of the full-data loss."""
from __future__ import annotations

import numpy as np

from ..runtime import Timer
from ..results import BASE_FIELDS, Field, Result, register_result
from .hutchinson import hutchinson_trace
from .lanczos import extreme_eigenpairs
from .slq import lanczos_quadrature, plan as slq_plan, smoothed_density


def _converged(stages) -> bool:
    """Whether the extreme-eigenvalue stages of the record ``stages`` met their convergence test (absent: assumed)."""
    return all(stages.get(s, {}).get("converged", True) for s in ("top", "bottom"))


def _seconds(timings):
    return timings.get("total_s")


@register_result
class Spectrum(Result):
    """Eigen-spectrum of the Hessian ``H`` of the loss over all data, at the model's weights.

    ``top_eigenvalues``: the ``k`` algebraically largest eigenvalues, descending; ``bottom_eigenvalues``: the
    ``bottom`` smallest, ascending (negative = directions of negative curvature); ``trace`` and ``trace_stderr``:
    ``tr(H)`` by Hutchinson/Hutch++; ``density_grid``, ``density``: the SLQ spectral density (integrates to 1 over
    the grid; None without ``density=True``); ``meta``: steps, runs, seeds, products, timings.

    Typed fields (keyword arguments, else read from ``meta``): ``tol`` (the eigenvalues' relative accuracy),
    ``trace_samples`` and ``trace_method`` (what estimated the trace; None without one), ``converged`` (both
    extreme-eigenvalue stages met their test), ``hvps_total``, ``steps`` and ``runs`` (SLQ's; None without a
    density), ``seconds`` (the whole computation), ``curvature`` ("hessian", "ggn" or "fisher"), ``data`` (what
    it was computed on: ``num_samples``, and ``subset_of`` for ``samples=``), ``spread`` (with ``spread=``: the
    eigenvalues and tr(H)/N on each disjoint subset, :func:`~landscape_widgets.hessian.spread.spread_of`; the
    values above are the first subset's); plus ``fingerprint``, ``device``, ``num_parameters``.
    """

    _arrays = ("top_eigenvalues", "bottom_eigenvalues", "trace", "trace_stderr")
    _optional = ("density_grid", "density", "slq_nodes", "slq_weights")
    _fields = BASE_FIELDS + (Field("tol", read=float), Field("trace_samples", read=int), Field("trace_method"),
                             Field("converged", "stages", read=_converged, mirror=False),
                             Field("hvps_total", read=int), Field("steps", read=int), Field("runs", read=int),
                             Field("seconds", "timings", read=_seconds, mirror=False),
                             Field("curvature"), Field("data"), Field("spread"))

    def __init__(self, top_eigenvalues, bottom_eigenvalues, trace, trace_stderr, density_grid=None, density=None,
                 meta=None, slq_nodes=None, slq_weights=None, **fields):
        self.top_eigenvalues = np.asarray(top_eigenvalues, dtype=np.float64)
        self.bottom_eigenvalues = np.asarray(bottom_eigenvalues, dtype=np.float64)
        self.trace = float(trace)
        self.trace_stderr = float(trace_stderr)
        self.density_grid = None if density_grid is None else np.asarray(density_grid, dtype=np.float64)
        self.density = None if density is None else np.asarray(density, dtype=np.float64)
        # raw quadrature, one row per run (NaN-padded when a run stopped early): re-smooth without new products
        self.slq_nodes = None if slq_nodes is None else np.asarray(slq_nodes, dtype=np.float64)
        self.slq_weights = None if slq_weights is None else np.asarray(slq_weights, dtype=np.float64)
        self.meta = dict(meta or {})
        self._set_fields(self._field_names(fields))

    @classmethod
    def _from_payload(cls, arrays, meta):
        obj = super()._from_payload(arrays, meta)
        obj.trace, obj.trace_stderr = float(obj.trace), float(obj.trace_stderr)
        return obj

    @property
    def lambda_max(self) -> float:
        return float(self.top_eigenvalues[0])

    @property
    def lambda_min(self) -> float:
        """The most negative (smallest) eigenvalue found; from the top ones when ``bottom=0``."""
        if len(self.bottom_eigenvalues):
            return float(self.bottom_eigenvalues[0])
        return float(self.top_eigenvalues[-1])

    def describe_spread(self, name="lambda_max") -> str:
        """``"λmax 0.92 ± 0.03 over 4 subsets of 256"`` (``spread=`` only); ``name``: lambda_max, lambda_min,
        trace_over_n, top_<i>, bottom_<i>."""
        if self.spread is None:
            raise ValueError("this spectrum has no spread; compute it with samples= and spread= (e.g. "
                             "ls.spectrum(samples=256, spread=4))")
        from .spread import describe_spread
        return describe_spread(self.spread, name)

    def plot(self, ax=None, **options):
        """A static matplotlib figure: the SLQ density on a log axis, the eigenvalues marked
        (:func:`landscape_widgets.plot.plot_spectrum`); returns the Axes."""
        from ..plot import plot_spectrum
        return plot_spectrum(self, ax=ax, **options)


def _padded(rows):
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def seed_streams(seed):
    """Independent generators for the stages (top, bottom, density, trace) from ``SeedSequence(seed)``: a
    Hessian plane and a spectrum with the same seed start Lanczos from the same vectors."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]


def compute_spectrum(op, k, bottom, *, density=True, trace=True, seed=0, steps=90, runs=10, trace_samples=99,
                     trace_method="hutch++", tol=1e-6, maxiter=None, grid_points=2000, sigma=None, report=None):
    """Everything :class:`Spectrum` holds, from the operator ``op``; returns ``(spectrum fields, meta)``.

    ``report(stage, done, total)`` is called as the work proceeds (``total`` None where unknown in advance).
    The four stages draw from independent child streams of ``np.random.SeedSequence(seed)``.
    """
    rng_top, rng_bottom, rng_slq, rng_trace = seed_streams(seed)
    report = report or (lambda *a: None)
    timings, hvps, info = {}, {}, {}

    def stage(name, fn):
        t, h0 = Timer(), op.hvps
        out = fn()
        timings[name + "_s"] = round(t(), 6)
        hvps[name] = op.hvps - h0
        return out

    report("top", 0, None)
    top, _, info["top"] = stage("top", lambda: extreme_eigenpairs(op, k, "LA", rng=rng_top, tol=tol,
                                                                   maxiter=maxiter))
    report("bottom", 0, None)
    low, _, info["bottom"] = stage("bottom", lambda: extreme_eigenpairs(op, bottom, "SA", rng=rng_bottom, tol=tol,
                                                                        maxiter=maxiter))
    with_trace = trace
    trace = stderr = float("nan")  # trace=False: no products spent on it
    if with_trace:
        report("trace", 0, trace_samples)
        trace, stderr, info["trace"] = stage("trace", lambda: hutchinson_trace(op, trace_samples, rng=rng_trace,
                                                                               method=trace_method))
    fields = {"top_eigenvalues": top, "bottom_eigenvalues": low, "trace": trace, "trace_stderr": stderr}
    if density:
        nodes, weights = stage("density", lambda: lanczos_quadrature(
            op, steps, runs, rng=rng_slq, on_step=lambda j, m: report("density", j, m)))
        grid, dens, sig = smoothed_density(nodes, weights, grid_points=grid_points, sigma=sigma)
        fields.update(density_grid=grid, density=dens, slq_nodes=_padded(nodes), slq_weights=_padded(weights))
        info["density"] = {"steps": min(steps, op.num_parameters), "runs": runs, "sigma": sig,
                           "grid_points": grid_points, "vector": "rademacher",
                           "reorthogonalization": "full" if slq_plan(op, steps, runs)[0]
                           else "none (three-term recurrence)"}
    report("done", 1, 1)
    meta = {"k": k, "bottom": bottom, "seed": seed, "steps": steps if density else None,
            "runs": runs if density else None, "trace_samples": trace_samples if with_trace else None,
            "trace_method": trace_method if with_trace else None,
            "tol": tol, "hvps": hvps, "hvps_total": int(sum(hvps.values())), "timings": timings, "stages": info,
            "trace_per_parameter": trace / op.num_parameters, "backend": op.backend, "loss": op.loss}
    return fields, meta
