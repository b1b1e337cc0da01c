"""``SpectrumWidget``: the Hessian's eigen-spectrum, live.

Top and bottom eigenvalues (Lanczos), the spectral density by stochastic Lanczos quadrature on a log axis
(Ghorbani, Krishnan & Xiao 2019, arXiv 1901.10159), the trace with its error bar (Hutch++), and -- given a surface
or a ``SurfaceWidget`` -- that surface's trust panel: ``kappa(d) = d^T H d / ||d||^2`` along its two directions marked
on the density next to ``tr(H)/N``, and a warning when the Hessian's negative curvature is strong
(``|lambda_min| >= SADDLE_RATIO * lambda_max`` beyond the eigenvalues' error bounds) while both kappas are positive
(a saddle the slice hides; Böttcher & Wheeler 2022, arXiv 2208.13219; :mod:`landscape_widgets.hessian.trust`).
Each ``tr(H)/N`` shown names its estimator and its number of products.  The browser receives ``_grid`` and
``_density`` as float32 bytes; everything else as plain numbers.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import traitlets as t

from .._checks import check_int
from ..directions import kind_named
from ..driver import Cancelled
from ._base import SeededWidget, f32, finite, private_landscape
from .controls import ControlSpec, Flag, IntRange, common_controls
from .jobs import Done, Event, Progress
from .status import Status, failure_panel, failure_reason

K = (1, 50)
BOTTOM = (0, 50)
STEPS = (10, 300)
RUNS = (1, 100)
REDRAW = ("_top", "_bottom", "_density", "_trace", "_trust", "_state", "log_scale")  # redraw the plot and panel
STAGES = {"top": "Lanczos: top {k} eigenvalues", "bottom": "Lanczos: bottom {bottom}", "trace": "Hutch++ trace",
          "density": "SLQ density: step {done} of {total}"}  # the status of each stage of Landscape.spectrum


@dataclass(frozen=True)
class SpectrumFailed(Event):
    """Why the spectrum could not be computed (the job then fails as a whole)."""
    reason: str
    kind = "spectrum_failed"


def spectrum_controls(num_parameters) -> ControlSpec:
    """The spectrum view's controls; ``k`` and ``bottom`` at most the Hessian's size."""
    controls = {**common_controls(seed=True), "k": IntRange(K[0], min(K[1], num_parameters)),
                "bottom": IntRange(BOTTOM[0], min(BOTTOM[1], num_parameters)), "steps": IntRange(*STEPS),
                "runs": IntRange(*RUNS), "density": Flag()}
    return ControlSpec(controls, redraw=REDRAW)


class SpectrumWidget(SeededWidget):
    """Live Hessian spectrum: controls for ``k``, ``bottom``, Lanczos ``steps``, SLQ ``runs``, ``seed`` and
    ``density``; each change recomputes in the kernel (worker thread, progress, cancelled by a newer change).

    ``surface``: an :class:`~landscape_widgets.Surface` or a ``SurfaceWidget`` (followed: each new surface it
    finishes updates the trust panel, reusing the spectrum when its settings and the weights are unchanged).  A
    ``SurfaceWidget`` that shows its own trust panel lends it: both views show the same panel, with the trust
    panel's eigenvalues and trace (each ``tr(H)/N`` labelled with its estimator and products); otherwise the
    panel takes this spectrum's eigenvalues and trace.
    ``w.spectrum`` is the latest :class:`~landscape_widgets.Spectrum`, ``w.trust`` the latest trust panel dict.
    A trust panel that cannot be computed leaves the spectrum shown and says why in its place (``w.trust_error``);
    a spectrum that cannot be computed is an error of this view alone (``w.spectrum_error``, the panel says why),
    and the views beside it in a dashboard carry on.
    ``send_interval``: the least seconds between two progress updates sent to the browser (0.15 by default).
    """

    _view = t.Unicode("spectrum").tag(sync=True)
    k = t.Int(5).tag(sync=True)
    bottom = t.Int(1).tag(sync=True)
    density = t.Bool(True).tag(sync=True)
    steps = t.Int(90).tag(sync=True)
    runs = t.Int(10).tag(sync=True)
    _top = t.List(t.Float()).tag(sync=True)
    _bottom = t.List(t.Float()).tag(sync=True)
    _trace = t.Dict().tag(sync=True)   # {trace, stderr, per_parameter, stderr_per_parameter, num_parameters,
    # method, samples}
    _grid = t.Bytes(b"").tag(sync=True)
    _density = t.Bytes(b"").tag(sync=True)
    _trust = t.Dict().tag(sync=True)   # the trust panel of the followed surface, {} without one; "of": which one;
    # {"error": reason, "detail": whole message, "of": ...} when it could not be computed
    _info = t.Dict().tag(sync=True)    # products and timings

    _compute_traits = ("k", "bottom", "density", "steps", "runs", "seed")

    def __init__(self, ls, *, k=5, bottom=1, density=True, steps=90, runs=10, seed=0, surface=None, log_scale=True,
                 title=None, jobs=None, send_interval=None):
        self._ls = private_landscape(ls)
        self._num_parameters = ls.num_parameters  # the moved ones: the Hessian's size
        self._surface = self._check_surface(surface)
        self.spectrum = None
        self.trust = None
        self.trust_error = None  # why the followed surface has no trust panel ("RuntimeError: ..."), else None
        self.spectrum_error = None  # why the latest spectrum could not be computed, else None
        self._cached = None  # (settings, spectrum): a new surface alone does not recompute the spectrum
        self._last_send = 0.0
        super().__init__(k=k, bottom=bottom, density=density, steps=steps, runs=runs, seed=seed, log_scale=log_scale,
                         title="" if title is None else title, controls=spectrum_controls(self._num_parameters),
                         jobs=jobs, send_interval=send_interval)
        from .surface import SurfaceWidget
        self._trusted = None  # the surface the shown trust panel belongs to
        if isinstance(self._surface, SurfaceWidget):
            # "_losses" too: without an event loop the widget computes synchronously and "_state" stays "done"
            self._surface.observe(self._on_surface_change, names=["_state", "_losses"])
        self._schedule()

    @staticmethod
    def _check_surface(surface):
        from ..results import Surface
        from .surface import SurfaceWidget
        if surface is None or isinstance(surface, (Surface, SurfaceWidget)):
            return surface
        raise TypeError(f"surface must be an lw.Surface, an lw.SurfaceWidget or None, got {type(surface).__name__}")

    def _on_surface_change(self, change):
        sw = self._surface
        if sw._state == "done" and sw.surface is not None and sw.surface is not self._trusted:
            self._trusted = sw.surface  # once per new surface, however many trait changes announce it
            self._schedule()

    def _current_surface(self):
        s = self._surface
        return getattr(s, "surface", None) if s is not None and not hasattr(s, "losses") else s

    # -- Python-side checks ---------------------------------------------------------------------------------------
    @t.validate("k")
    def _v_k(self, proposal):
        high = min(K[1], self._num_parameters)
        return check_int(proposal["value"], "k", low=K[0], high=high, hint=" (top eigenvalues)")

    @t.validate("bottom")
    def _v_bottom(self, proposal):
        high = min(BOTTOM[1], self._num_parameters)
        return check_int(proposal["value"], "bottom", low=BOTTOM[0], high=high, hint=" (smallest eigenvalues)")

    @t.validate("steps")
    def _v_steps(self, proposal):
        return check_int(proposal["value"], "steps", low=STEPS[0], high=STEPS[1], hint=" (Lanczos steps per run)")

    @t.validate("runs")
    def _v_runs(self, proposal):
        return check_int(proposal["value"], "runs", low=RUNS[0], high=RUNS[1], hint=" (SLQ runs averaged)")

    # -- computation ------------------------------------------------------------------------------------------------
    def _pending_status(self, p):
        return f"computing top {p['k']} / bottom {p['bottom']} eigenvalues" + (" and the density" if p["density"]
                                                                                else "") + "…"

    def _params(self):
        return {"k": self.k, "bottom": self.bottom, "density": self.density, "steps": self.steps, "runs": self.runs,
                "seed": self.seed}

    def _job(self, p, emit, cancel):
        ls = self._ls
        spec = None
        if self._cached is not None and self._cached[0] == p:
            spec = self._cached[1]
            if spec.fingerprint != ls.problem.fingerprint():
                spec = None  # the model was trained since: recompute
        if spec is None:
            try:
                spec = ls.spectrum(k=p["k"], bottom=p["bottom"], density=p["density"], steps=p["steps"],
                                   runs=p["runs"], seed=p["seed"], callback=lambda ev: emit(Progress(ev)),
                                   cancel=cancel, progress=False)
            except Cancelled:
                raise
            except Exception as exc:
                emit(SpectrumFailed(failure_reason(exc)))
                raise  # and the view's usual error state
        surface = self._current_surface()
        self._trusted = surface
        panel = reason = None
        if surface is not None:
            # a dashboard has two planes: say which one this panel (and its warning) is about
            of = self._surface_label(surface)
            try:
                panel = dict(self._panel(surface, spec, cancel), of=of)
            except Cancelled:
                raise
            except Exception as exc:  # the spectrum is still worth showing
                reason = dict(failure_panel(exc), of=of)
        emit(Done((spec, panel, reason)))

    def _panel(self, surface, spec, cancel):
        """The trust panel of ``surface``.  A followed SurfaceWidget that shows its own panel under the plane: that
        panel, the same numbers on both views (computed the same way when it has not arrived yet: the eigenvalues
        and the trace are kept per weights, so only the two curvatures are recomputed).  Otherwise the panel from
        this spectrum's eigenvalues and trace."""
        from .surface import TRUST_TOL, TRUST_TRACE, SurfaceWidget
        if isinstance(self._surface, SurfaceWidget) and self._surface._with_trust:
            if surface.trust is not None:
                return surface.trust
            return self._ls.trust(surface, trace_samples=TRUST_TRACE, tol=TRUST_TOL, cancel=cancel, progress=False)
        return self._ls.trust(surface, spectrum=spec, cancel=cancel, progress=False)

    def _surface_label(self, surface):
        """The followed widget's title, else the surface's own description (its directions, seed)."""
        title = getattr(self._surface, "title", "") if self._surface is not surface else ""
        if title:
            return title
        kind = kind_named(surface.direction_kind)
        return kind.describe(surface.meta) if kind is not None else "plane along given directions"

    def _event_handlers(self):
        return {**super()._event_handlers(), Progress: self._on_progress, SpectrumFailed: self._on_spectrum_failed,
                Done: self._on_done}

    def _on_progress(self, event, p, t0):
        now = time.perf_counter()
        if now - self._last_send < self._send_interval:
            return
        self._last_send = now
        info = event.info
        stage, done, total = info["stage"], info["done"], info["total"]
        words = STAGES[stage].format(k=p["k"], bottom=p["bottom"], done=done, total=total) if stage in STAGES else stage
        with self.hold_sync():
            self._state = "partial"
            self._done, self._total = (done, total) if stage == "density" else (0, 0)
            self._set_status(Status(words, stage=stage).note("hvps", f"{info['hvps']} Hessian-vector products so far"))

    def _on_spectrum_failed(self, event, p, t0):
        self.spectrum_error, self.trust_error = event.reason, None

    def _on_done(self, event, p, t0):
        spec, panel, reason = event.result
        self.spectrum, self.trust = spec, panel
        self.spectrum_error, self.trust_error = None, reason and reason["error"]
        self._cached = (p, spec)
        n = spec.num_parameters
        with self.hold_sync():
            self._top = [float(v) for v in spec.top_eigenvalues]
            self._bottom = [float(v) for v in spec.bottom_eigenvalues]
            # the estimator and its products: a page may show another tr(H)/N (a plane's trust panel)
            self._trace = finite({"trace": spec.trace, "stderr": spec.trace_stderr, "per_parameter": spec.trace / n,
                                  "stderr_per_parameter": spec.trace_stderr / n, "num_parameters": n,
                                  "method": spec.trace_method, "samples": spec.trace_samples})
            self._trust = finite(panel or reason or {})
            self._info = finite({"hvps": spec.hvps_total, "seconds": spec.seconds, "steps": spec.steps,
                                 "runs": spec.runs})
            self._grid = f32(spec.density_grid) if spec.density is not None else b""
            self._density = f32(spec.density) if spec.density is not None else b""
            self._done = self._total = 1
            self._state = "done"
            self._set_status(Status(f"{spec.hvps_total} Hessian-vector products in "
                                    f"{time.perf_counter() - t0:.2f} s", stage="done")
                             .note("parameters", f"{n:,} parameters")
                             .note("trust", "trust panel unavailable" if reason else None))
