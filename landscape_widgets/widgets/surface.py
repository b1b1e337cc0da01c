"""``SurfaceWidget``: the loss on a random plane around the model (Li et al. 2018, arXiv 1712.09913, §4), live.

``losses[i, j] = L(theta + alphas[i] d1 + betas[j] d2)`` as in :meth:`Landscape.plane`; the browser receives
``losses`` as row-major float32 bytes with ``_shape = [len(alphas), len(betas)]``.
"""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import traitlets as t

from .._checks import check_int
from ..directions import KINDS, MODELS, NORMALIZATIONS, kind_named, kind_of, make_directions
from ..driver import Cancelled
from ._base import (check_compute, RandomDirectionWidget, check_normalization_choice, engine_note,
                    f32, finite, private_landscape)
from .controls import Choice, ControlSpec, FloatRange, IntRange, common_controls
from .jobs import Done, Event, Preview, Tile
from .status import Status, failure_panel, gaps_text

RESOLUTION = (5, 201)
SPAN = (1e-3, 1e3)
VIEWS = ("contour", "heatmap", "surface")
VIEW_LABELS = {"surface": "3-D surface"}
SEEDS = (1, 16)  # seed spread: how many random planes at once ("does the picture depend on the seed")
PREVIEW = 9  # coarse grid shown first: 81 points, a few ms on a small model
PREVIEW_SECONDS = 0.8  # ... on a fixed random subset small enough for the preview to take about this long
TRUST_PASSES = 250  # passes a trust panel makes: about 100 products of two to three passes each
TRUST_MIN_SAMPLES = 64  # a quick panel on fewer samples would say little about the full-data Hessian
TRUST_TRACE = 30  # Hutch++ products for the trust panel's tr(H)/N: a visible error bar, a fraction of the cost
TRUST_TOL = 1e-3  # eigenvalues to 1e-3 relative (the panel shows 4 digits): half the products of 1e-6 for lambda_min
CURVATURE = "curvature"  # ``show`` value of the curvature map layer
CURVATURE_RESOLUTION = 7  # the curvature map's grid: one Lanczos run for both ends per point (20+ products)


@dataclass(frozen=True)
class SeedTile(Event):
    """A tile of the plane of the ``seed_index``-th seed of a seed spread."""
    seed_index: int
    tile: Any
    kind = "spread_tile"


@dataclass(frozen=True)
class SeedSpread(Event):
    """The seed spread: per-cell median and IQR over the seeds' planes."""
    spread: Any
    kind = "spread"


@dataclass(frozen=True)
class TrustPartial(Event):
    """The trust panel as it grows: the kappas, then the eigenvalues."""
    panel: dict
    kind = "trust_partial"


@dataclass(frozen=True)
class TrustPanel(Event):
    """The finished plane's trust panel."""
    panel: dict
    kind = "trust"


@dataclass(frozen=True)
class TrustFailed(Event):
    """Why the trust panel could not be computed: ``{error, detail}``."""
    panel: dict
    kind = "trust_error"


@dataclass(frozen=True)
class CurvaturePoint(Event):
    """A point of the curvature map: ``{done, total}``."""
    info: dict
    kind = "curvature_point"


@dataclass(frozen=True)
class CurvatureMap(Event):
    """The curvature map of ``surface``."""
    surface: Any
    cmap: Any
    kind = "curvature"


@dataclass(frozen=True)
class CurvatureFailed(Event):
    """Why the curvature map of ``surface`` could not be computed: ``{error, detail}``."""
    surface: Any
    panel: dict
    kind = "curvature_error"


def _positive(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _span(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"span must be a finite number (the plane covers -span..span on both axes), got {value!r}")
    s = float(value)
    if not SPAN[0] <= s <= SPAN[1]:
        raise ValueError(f"span={value!r} is out of range; pass a half-width between {SPAN[0]:g} and {SPAN[1]:g}")
    return float(s)


def upsample(losses, alphas, betas, ax, bx):
    """Separable linear interpolation of a coarse grid onto ``ax`` x ``bx``."""
    rows = np.stack([np.interp(ax, alphas, losses[:, j]) for j in range(losses.shape[1])], axis=1)
    return np.stack([np.interp(bx, betas, r) for r in rows], axis=0)


class SurfaceWidget(RandomDirectionWidget):
    """Live loss surface: resolution, seed, normalization, span, log scale and view (contour / heatmap / 3-D).

    Changing any compute control, in the browser or from Python (``w.resolution = 41``), recomputes in the kernel:
    a 9x9 preview first (on a fixed random subset of ``preview_samples`` samples, said in the status; "auto": as
    many as make the preview take about ``preview_seconds``, 0.8 s by default, from the time of one warm pass
    over the data; None: all of them), then
    the full grid on all the data, streamed row by row.  ``w.surface`` is the latest full
    :class:`~landscape_widgets.Surface`; ``w.wait()`` blocks until it is there.  ``compute={"client": client}``
    evaluates the full grids on Dask workers (docs/scaling.md); the previews stay in the kernel.

    ``directions``: "random" (Li et al. §4), "pca" with ``trajectory=`` (Li et al. §7: the projected path is drawn
    over the contour with its steps and losses on hover) or "hessian" (Böttcher & Wheeler 2022).  For "pca" and
    "hessian" the directions are computed once per setting (by the preview) and reused for the full grid, and the
    kind's default grid is used until the span is changed.  ``directions=(model_b, model_c)`` (modules or their
    ``state_dict()``) shows the plane through the model and the two others (``Landscape.plane``'s models plane,
    BatchNorm statistics interpolated), each model marked and labelled at its coordinates with its loss on hover.

    ``show``: what the plot shows: "loss", the name of a metric of the Landscape (``Landscape(metrics=...)``,
    computed in the same passes as the loss) or "curvature": Li et al.'s map of ``|lambda_min / lambda_max|`` (§6,
    :meth:`Landscape.curvature_map`) on a coarse 7x7 grid of the plane, computed in the kernel when first asked
    for and after each new plane while shown (``w.curvature_map``).

    ``trust=True`` (default) puts the trust panel of each finished plane under it (Böttcher & Wheeler 2022,
    arXiv 2208.13219): the curvature ``kappa(d) = d^T H d / ||d||^2`` along both plotted directions next to
    ``lambda_max``, ``lambda_min`` and ``tr(H)/N``, with a warning when the slice hides a saddle.  It is computed
    after the plane is drawn (cancelled like it by a newer change) and kept in ``w.trust`` and ``w.surface.trust``
    (``w.surface`` is then the same plane with its panel, a new Surface); the median of several seeds shows kappa
    as ranges over its seeds' planes and warns in how many of them a saddle hides.  It costs about 100
    Hessian-vector products (each two to three passes over the data; 1.3 s for the digits MLP, 5 s for the digits
    CNN on 2 CPU cores), plus two per extra seed: for a large model on a large data set pass ``trust=False`` and
    call ``ls.trust(w.surface)`` when wanted.  A panel that cannot be computed (a model without a double backward,
    such as SDPA attention on a CPU) leaves the plane as it is: the panel's place says why, and so do
    ``w.trust_error`` and ``w.surface.trust_error``.

    On a large data set the panel comes twice: first on a fixed random subset (``trust_samples``; "auto": sized
    so that the panel takes about ``preview_seconds`` from the time of one pass, used when that is less than half
    the data), labelled with the samples it used, then on all the data, which replaces it; ``w.trust["data"]``
    says which one is shown.  ``trust_samples=None`` computes it on all the data at once.

    ``send_interval``: the least seconds between two partial grids sent to the browser (0.15 by default).
    """

    _view = t.Unicode("surface").tag(sync=True)
    resolution = t.Int(21).tag(sync=True)
    span = t.Float(1.0).tag(sync=True)
    view = t.Unicode("contour").tag(sync=True)
    _losses = t.Bytes(b"").tag(sync=True)
    _alphas = t.Bytes(b"").tag(sync=True)
    _betas = t.Bytes(b"").tag(sync=True)
    _shape = t.List(t.Int(), [0, 0]).tag(sync=True)
    directions = t.Unicode("random").tag(sync=True)  # set once, from Python: not a browser control
    seeds = t.Int(1).tag(sync=True)  # > 1: the per-cell median of that many seeds, IQR on hover, sharpness per seed
    _iqr = t.Bytes(b"").tag(sync=True)
    _path = t.Bytes(b"").tag(sync=True)  # float32 [n, 2]: the trajectory projected on the plane ("pca")
    _path_steps = t.List(t.Int(), []).tag(sync=True)
    _path_losses = t.Bytes(b"").tag(sync=True)
    _marks = t.List(t.Dict(), []).tag(sync=True)  # models at their marks: [{label, alpha, beta, loss}]
    show = t.Unicode("loss").tag(sync=True)  # "loss", a metric's name or "curvature"
    _metrics = t.Dict().tag(sync=True)  # metric name -> float32 bytes shaped like _losses
    _curvature = t.Dict().tag(sync=True)  # the curvature map shown: {alphas, betas, shape, ratio, lambda_max, ...}
    _trust = t.Dict().tag(sync=True)  # the trust panel of the plane shown, {} while it is computed or off,
    # {"error": reason, "detail": whole message} when it could not be computed

    _compute_traits = ("resolution", "seed", "normalization", "span", "seeds")
    _display_traits = RandomDirectionWidget._display_traits + ("_alphas", "_betas", "_shape", "_losses", "_path",
                                                               "_path_steps", "_path_losses", "_iqr", "_trust",
                                                               "_marks", "show", "_metrics", "_curvature")

    def __init__(self, ls, *, resolution=21, seed=0, normalization=None, span=1.0, log_scale=True, view="contour",
                 title=None, compute=None, directions="random", trajectory=None, seeds=1, trust=True,
                 preview_samples="auto", show="loss", preview_seconds=None, jobs=None, send_interval=None,
                 trust_samples="auto"):
        self._models = None  # the other models of a plane through models
        if not isinstance(directions, str):
            if kind_of(directions) is not MODELS:
                raise ValueError(f"directions must be a kind name ({', '.join(map(repr, KINDS))}) or two other models "
                                 f"(model_b, model_c), got {type(directions).__name__}")
            self._models, directions = directions, MODELS.name
        elif directions not in KINDS:
            raise ValueError(f"directions={directions!r} is not known; pass one of {', '.join(map(repr, KINDS))} "
                             "or two other models (model_b, model_c)")
        kind = kind_named(directions)
        if ("trajectory" in kind.needs) != (trajectory is not None):
            users = [k.name for k in KINDS.values() if "trajectory" in k.needs]
            raise ValueError(f"directions={users[0]!r} needs trajectory=lw.Trajectory(...), and trajectory= is only "
                             f"used by the kinds that follow a path ({', '.join(map(repr, users))})")
        if not isinstance(trust, (bool, np.bool_)):
            raise TypeError(f"trust must be True or False, got {trust!r}")
        if preview_samples not in (None, "auto"):
            preview_samples = check_int(preview_samples, "preview_samples", low=1,
                                        hint=" (samples the coarse preview uses; 'auto' or None: all)")
        self._preview_samples = preview_samples
        if trust_samples not in (None, "auto"):
            trust_samples = check_int(trust_samples, "trust_samples", low=1,
                                      hint=" (samples of the first, quick trust panel; 'auto' or None: all at once)")
        self._trust_samples = trust_samples
        self._preview_seconds = PREVIEW_SECONDS if preview_seconds is None else _positive(preview_seconds,
                                                                                         "preview_seconds")
        self._ls = private_landscape(ls)
        if self._models is not None:  # bad models fail here, with the plane's own message, not in the worker
            make_directions(self._models, self._ls.problem.private(), 2, argname="directions")
        self._with_trust = bool(trust)
        self.trust = None  # the latest trust panel (dict), see Landscape.trust
        self.trust_error = None  # why the latest plane has no trust panel ("RuntimeError: ..."), else None
        self._compute_kw = check_compute(compute)
        self._kind_kw = {} if trajectory is None else {"trajectory": trajectory}
        self._span0 = _span(span)  # a kind that chooses its grid keeps it until the span is changed
        self._norm_given = normalization is not None
        self.spread = None  # the latest lw.SeedSpread when seeds > 1
        self.curvature_map = None  # the latest lw.CurvatureMap (show="curvature")
        self.curvature_error = None
        self._curvature_of = None  # the surface self.curvature_map belongs to
        self._panel_of = (None, None)  # (plane, the same plane with its trust panel) of the latest panel
        self._quantities = ("loss", *self._ls.objective.metric_names, CURVATURE)
        self._surface_params = None  # the settings of self.surface, so the curvature layer can reuse it
        self._mgrid = self._mfill = None
        self.surface = None
        self.preview = None
        self._grid = None
        self._fill = None
        self._last_send = 0.0
        super().__init__(resolution=resolution, seed=seed, normalization=check_normalization_choice(normalization),
                         span=_span(span), log_scale=log_scale, view=view, title="" if title is None else title,
                         directions=directions, seeds=seeds, show=show,
                         controls=surface_controls(kind, self._quantities), jobs=jobs, send_interval=send_interval)
        self.observe(self._on_show, names=["show"])
        self._schedule()

    # -- Python-side checks: ValueError naming the argument ---------------------------------------------------
    @t.validate("resolution")
    def _v_resolution(self, proposal):
        return check_int(proposal["value"], "resolution", low=RESOLUTION[0], high=RESOLUTION[1],
                         hint=" (grid points per axis)")

    @t.validate("seeds")
    def _v_seeds(self, proposal):
        return check_int(proposal["value"], "seeds", low=SEEDS[0], high=SEEDS[1],
                         hint=" (random planes whose per-cell median is drawn)")

    @t.validate("span")
    def _v_span(self, proposal):
        return _span(proposal["value"])

    @t.validate("show")
    def _v_show(self, proposal):
        quantities = getattr(self, "_quantities", ("loss",))
        if proposal["value"] not in quantities:
            raise ValueError(f"show={proposal['value']!r} is not known; pass one of {', '.join(map(repr, quantities))}"
                             " (metrics are those given to lw.Landscape(metrics=...))")
        return proposal["value"]

    def _on_show(self, change):
        """The curvature layer is computed when first shown (or shown again for a newer plane); the loss and the
        metrics are all in the browser already."""
        if change["new"] == CURVATURE and (self.curvature_map is None or self._curvature_of is not self.surface):
            self._schedule()

    @t.validate("view")
    def _v_view(self, proposal):
        if proposal["value"] not in VIEWS:
            raise ValueError(f"view={proposal['value']!r} is not known; pass one of {', '.join(map(repr, VIEWS))}")
        return proposal["value"]

    # -- computation -------------------------------------------------------------------------------------------
    def _params(self):
        kind = kind_named(self.directions)
        auto_span = kind.chooses_span and self.span == self._span0
        norm = self.normalization if ("normalization" in kind.controls or self._norm_given) else None
        return {"resolution": self.resolution, "seed": self.seed, "normalization": norm,
                "span": None if auto_span else self.span, "directions": kind.name,
                "seeds": self.seeds if "seeds" in kind.controls else 1, "curvature": self.show == CURVATURE}

    def _job(self, p, emit, cancel):
        kw = {"seed": p["seed"], "normalization": p["normalization"], "span": p["span"], "progress": False,
              "cancel": cancel, **self._kind_kw,
              "directions": p["directions"] if self._models is None else self._models}
        full = {"resolution": p["resolution"], "callback": lambda tile: emit(Tile(tile)), **self._compute_kw}
        if p["curvature"] and self.surface is not None and self._surface_params == _plane_params(p):
            # the curvature layer asked for on the plane shown: that plane, its panel, then the map
            surf, panel = self.surface, self.trust
            emit(Done(surf))
            if self._with_trust:
                emit(TrustPanel(panel) if panel is not None else self._trust_panel(surf, cancel, emit))
            self._curvature_layer(surf, emit, cancel)
            return
        if p["resolution"] <= PREVIEW and p["seeds"] == 1:
            self._done_with_trust(self._ls.plane(**kw, **full), emit, cancel)
            return
        preview = self._ls.plane(resolution=PREVIEW, samples=self._preview_size(), **kw)
        emit(Preview(preview))
        if p["seeds"] > 1:  # Böttcher & Wheeler's caveat made visible: K random planes, median and spread
            seeds = list(range(p["seed"], p["seed"] + p["seeds"]))
            spread = self._ls.seed_spread(
                seeds, resolution=p["resolution"], span=p["span"], normalization=p["normalization"], cancel=cancel,
                callback=lambda k, tile: emit(SeedTile(k, tile)), **self._compute_kw)
            emit(SeedSpread(spread))
            if self._with_trust:  # kappa along every seed's two directions: 2K more products than one plane's
                emit(self._trust_panel(spread, cancel, emit))
            return
        kind = kind_named(p["directions"])
        if kind.seeded or self._models is not None or "loss" in kind.needs:
            # made again: cheap (random, models), or of the loss on all the data (the preview's Hessian
            # eigenvectors are those of its subset's loss)
            self._done_with_trust(self._ls.plane(**kw, **full), emit, cancel)
            return
        # other kinds' directions (PCA components) are computed once, by the preview, and reused on the same grid
        surf = self._ls.plane(directions=preview, progress=False, cancel=cancel, **full)
        self._done_with_trust(surf, emit, cancel)

    def _pass_seconds(self):
        """One warm pass over all the data (the second of two: the first runs cold, and a ResNet-20's took 6x a
        warm one), measured once per widget."""
        if not hasattr(self, "_per_pass"):
            per_pass = float("inf")
            for _ in range(2):
                t0 = time.perf_counter()
                self._ls.loss()
                per_pass = max(min(per_pass, time.perf_counter() - t0), 1e-6)
            self._per_pass = per_pass
        return self._per_pass

    def _auto_size(self, passes):
        """A subset whose ``passes`` passes take about ``preview_seconds``; None when that is most of the data."""
        n = self._ls.data.num_samples or 0
        if n == 0:
            return None
        want = n * self._preview_seconds / (passes * self._pass_seconds())
        return None if want >= n else max(1, int(want))

    def _preview_size(self):
        """``preview_samples``; "auto": a subset whose 81 points take about ``preview_seconds``."""
        if self._preview_samples != "auto":
            return self._preview_samples
        return self._auto_size(PREVIEW * PREVIEW)

    def _trust_size(self):
        """``trust_samples``; "auto": a subset whose panel (about ``TRUST_PASSES`` passes) takes about
        ``preview_seconds``, at least ``TRUST_MIN_SAMPLES``, when that is less than half the data; else None."""
        if self._trust_samples != "auto":
            return self._trust_samples
        n = self._ls.data.num_samples or 0
        size = self._auto_size(TRUST_PASSES)
        if size is None:
            return None
        size = max(size, TRUST_MIN_SAMPLES)
        return size if 2 * size <= n else None

    def _done_with_trust(self, surf, emit, cancel):
        """The plane first (drawn at once), then its trust panel: curvatures by Hessian-vector products; then the
        curvature map when it is shown."""
        emit(Done(surf))
        if self._with_trust:
            emit(self._trust_panel(surf, cancel, emit))
        if self.show == CURVATURE:
            self._curvature_layer(surf, emit, cancel)

    def _curvature_layer(self, surf, emit, cancel):
        """Li et al.'s |lambda_min / lambda_max| on a coarse grid of the plane; like the trust panel, its failure
        leaves the plane as it is."""
        try:
            cmap = self._ls.curvature_map(surf, resolution=CURVATURE_RESOLUTION, progress=False, cancel=cancel,
                                          callback=lambda info: emit(CurvaturePoint(info)))
        except Cancelled:
            raise
        except Exception as exc:
            emit(CurvatureFailed(surf, failure_panel(exc)))
            return
        emit(CurvatureMap(surf, cmap))

    def _trust_panel(self, surf, cancel, emit=None):
        """TrustPanel(panel), or TrustFailed({error, detail}) when the Hessian-vector products fail: the panel
        is an addition to a plane already drawn, and its failure must not turn that plane into an error.  With a
        trust subset (:meth:`_trust_size`) its panel is emitted first (``refining``), then the full-data one is
        returned; a subset that fails leaves the full-data panel to say why."""
        partial = None if emit is None else (lambda part: emit(TrustPartial(part)))
        options = dict(cancel=cancel, trace_samples=TRUST_TRACE, tol=TRUST_TOL, progress=False)
        size = self._trust_size() if emit is not None else None
        try:
            if size is not None:
                try:
                    quick = self._ls.trust(surf, samples=size, callback=partial, **options)
                except Cancelled:
                    raise
                except Exception:
                    pass
                else:
                    if quick["data"].get("subset_of") is not None:  # else the subset was all the data
                        emit(TrustPanel(dict(quick, refining=True)))
                        partial = None  # the quick panel stays shown while the full one computes
            return TrustPanel(self._ls.trust(surf, callback=partial, **options))
        except Cancelled:
            raise
        except Exception as exc:
            return TrustFailed(failure_panel(exc))

    def _pending_status(self, p):
        stage = kind_named(p["directions"]).preparing
        grid = f"computing {p['resolution']}×{p['resolution']}…"
        return f"{stage}, then {grid}" if stage else grid

    def _reset_partial(self):
        self._grid = None
        self._fill = None

    def _describe(self, p, surf=None):
        meta = dict(surf.meta) if surf is not None else {}
        meta.setdefault("seed", p["seed"])
        meta.setdefault("normalization", p["normalization"])
        return kind_named(p["directions"]).describe(meta, span=p["span"])

    def _event_handlers(self):
        return {**super()._event_handlers(), Preview: self._on_preview, Tile: self._on_tile,
                SeedTile: self._on_seed_tile, SeedSpread: self._on_spread, Done: self._on_done,
                CurvaturePoint: self._on_curvature_point, CurvatureMap: self._on_curvature,
                CurvatureFailed: self._on_curvature_failed, TrustPartial: self._on_trust_partial,
                TrustPanel: self._on_trust, TrustFailed: self._on_trust_failed}

    def _on_preview(self, event, p, t0):
        n, payload = p["resolution"], event.result
        self.preview = payload
        with self.hold_sync():  # the arrays last: an observer of _losses sees the state that goes with them
            self._done, self._total = 0, n * n
            self._state = "preview"
            self._set_status(Status(f"coarse {PREVIEW}×{PREVIEW} preview{_on_subset(payload)}; computing {n}×{n}…",
                                    stage="preview"))
            self._show(payload.alphas, payload.betas, payload.losses, payload)
        self._grid = self._mgrid = None
        (a0, a1), (b0, b1) = payload.span
        self._axes = (np.linspace(a0, a1, n), np.linspace(b0, b1, n))
        self._fill = upsample(payload.losses, payload.alphas, payload.betas, *self._axes)
        self._mfill = {k: upsample(v, payload.alphas, payload.betas, *self._axes)
                       for k, v in payload.metrics.items()}

    def _on_tile(self, event, p, t0):
        n, tile = p["resolution"], event.tile
        if self._grid is None:
            # rows not computed yet keep showing the preview (hover says "pending"), not an empty plot
            self._grid = (np.full(n * n, np.nan, dtype=np.float32) if self._fill is None
                          else self._fill.astype(np.float32).ravel())
            if self._fill is None:
                s = p["span"] if p["span"] is not None else 1.0
                self._axes = (np.linspace(-s, s, n), np.linspace(-s, s, n))
        self._grid[tile.start:tile.stop] = tile.values
        if self._mgrid is None:
            fill = self._mfill or {}
            self._mgrid = {k: (fill[k].astype(np.float32).ravel() if k in fill
                               else np.full(n * n, np.nan, dtype=np.float32)) for k in tile.metrics}
        for k, v in tile.metrics.items():
            self._mgrid[k][tile.start:tile.stop] = v
        now = time.perf_counter()
        with self.hold_sync():
            self._done, self._total = tile.done, tile.total
            self._set_status(Status(f"computing {n}×{n}: {tile.done} of {tile.total} points"
                                    + ("; rows not computed yet show the preview" if self._fill is not None else ""),
                                    stage="grid"))
            if now - self._last_send >= self._send_interval and tile.done < tile.total:
                self._last_send = now
                self._state = "partial"
                self._show(self._axes[0], self._axes[1], self._grid.reshape(n, n),
                           metrics={k: v.reshape(n, n) for k, v in self._mgrid.items()})

    def _on_seed_tile(self, event, p, t0):
        k, tile = event.seed_index, event.tile
        with self.hold_sync():
            self._done, self._total = k * tile.total + tile.done, p["seeds"] * tile.total
            self._set_status(Status(f"seed spread: plane {k + 1} of {p['seeds']}, {tile.done} of {tile.total} points",
                                    stage="spread"))

    def _on_spread(self, event, p, t0):
        from ..results import Surface
        payload = self.spread = event.spread
        self.trust = self.trust_error = None
        self.surface = Surface(payload.alphas, payload.betas, payload.median, None, payload.meta, kind="seed_median")
        sharp = ", ".join(f"{v:.3g}" for v in payload.sharpness)
        status = Status(f"median of {p['seeds']} random planes (seeds {payload.seeds[0]}–{payload.seeds[-1]}, "
                        f"IQR on hover) in {time.perf_counter() - t0:.2f} s", stage="done")
        status = (status.note("sharpness", f"sharpness per seed (Keskar et al. Metric 2.1): {sharp}")
                  .note("gaps", gaps_text(payload.median))
                  .note("trust", "trust panel: computing…" if self._with_trust else None)
                  .note("curvature", "curvature map: drawn for a single plane (seeds = 1)" if p["curvature"] else None))
        with self.complete_sync():
            self._done = self._total = payload.losses.size
            self._state = "done"
            self._set_status(status)
            self._iqr = f32(payload.iqr)
            self._show(payload.alphas, payload.betas, payload.median,
                       metrics={k: _nanmedian(v) for k, v in payload.metrics.items()})

    def _on_done(self, event, p, t0):
        n, payload = p["resolution"], event.result
        self.surface = payload
        self._surface_params = _plane_params(p)
        self.trust = self.trust_error = None
        self._grid = self._mgrid = None
        status = Status(f"{n}×{n} in {time.perf_counter() - t0:.2f} s{engine_note(payload)}", stage="done")
        status = (status.note("directions", self._describe(p, payload))
                  .note("gaps", gaps_text(payload.losses))
                  .note("trust", "trust panel: computing…" if self._with_trust else None)
                  .note("curvature", "curvature map: computing…" if p["curvature"] else None))
        with self.complete_sync():
            self._done = self._total = payload.losses.size
            self._state = "done"
            self._set_status(status)
            self._show(payload.alphas, payload.betas, payload.losses, payload)

    def _on_curvature_point(self, event, p, t0):
        info = event.info
        with self.hold_sync():
            self._set_status(self.status_line.note("curvature",
                                                   f"curvature map: {info['done']} of {info['total']} points"))

    def _on_curvature(self, event, p, t0):
        surf, cmap = event.surface, event.cmap
        self.curvature_map, self._curvature_of, self.curvature_error = cmap, self._shown(surf), None
        with self.complete_sync():
            nx, ny = cmap.ratio.shape
            self._curvature = {"alphas": f32(cmap.alphas), "betas": f32(cmap.betas), "shape": [nx, ny],
                               "ratio": f32(cmap.ratio), "lambda_max": f32(cmap.lambda_max),
                               "lambda_min": f32(cmap.lambda_min)}
            span = (f"|λmin/λmax| {np.nanmin(cmap.ratio):.3g}–{np.nanmax(cmap.ratio):.3g}"
                    if np.isfinite(cmap.ratio).any() else "no finite values")
            self._set_status(self.status_line.note("curvature", f"curvature map {nx}×{ny}: {span}"))

    def _on_curvature_failed(self, event, p, t0):
        surf, panel = event.surface, event.panel
        self.curvature_map, self._curvature_of, self.curvature_error = None, self._shown(surf), panel["error"]
        with self.complete_sync():
            self._curvature = {}
            self._set_status(self.status_line.note("curvature", f"curvature map unavailable: {panel['error']}"))

    def _on_trust_partial(self, event, p, t0):  # the panel as it grows: the kappas, then the eigenvalues
        with self.hold_sync():
            self._trust = finite(event.panel)

    def _on_trust(self, event, p, t0):
        payload = event.panel
        self.trust, self.trust_error = payload, None
        if self.surface is not None and (self.surface.trust is not payload or self.surface.trust_error is not None):
            self._with_panel(self.surface.with_trust(payload))
        with self.complete_sync():
            self._trust = finite(payload)  # before the status: what reads the status sees the panel
            hiding = payload.get("hides_saddle_seeds")
            warning = (None if not payload.get("hides_saddle") else "⚠ this slice hides a saddle" if hiding is None
                       else f"⚠ the planes of {len(hiding)} of {len(payload['seeds'])} seeds hide a saddle")
            self._set_status(self.status_line.note("trust", warning))

    def _on_trust_failed(self, event, p, t0):
        payload = event.panel
        self.trust, self.trust_error = None, payload["error"]
        if self.surface is not None:
            self._with_panel(self.surface.with_trust(None, error=payload["error"]))
        with self.complete_sync():  # the plane stays "done": only its panel is missing
            self._set_status(self.status_line.note("trust", "trust panel unavailable"))
            self._trust = payload

    def _with_panel(self, surf):
        """``surf``, the plane shown with its trust panel (a new Surface), in place of ``self.surface``; what belonged
        to the plane (its curvature map) belongs to it."""
        self._panel_of = self.surface, surf
        if self._curvature_of is self.surface:
            self._curvature_of = surf
        self.surface = surf

    def _shown(self, surf):
        """``self.surface`` for the plane it shows without its trust panel (what the job computed on), else
        ``surf``."""
        before, after = self._panel_of
        return after if surf is before and after is self.surface else surf

    def _show(self, alphas, betas, losses, surf=None, metrics=None):
        self._trust = {}  # whatever is drawn now, the panel shown belonged to an earlier plane
        if surf is not None and surf is not getattr(self, "_curvature_of", None):
            self._curvature = {}  # the map belonged to an earlier plane
        if surf is not None:
            metrics = getattr(surf, "metrics", None) or {}
        self._metrics = {k: f32(v) for k, v in (metrics or {}).items()}
        if surf is not None:  # a single plane (preview or done): no seed spread to show
            self._iqr = b""
        path = getattr(surf, "path", None) if surf is not None else None
        if surf is not None:
            marks = surf.models
            self._marks = [] if marks is None else finite([
                {"label": str(label), "alpha": float(c[0]), "beta": float(c[1]), "loss": float(v) if v is not None else None}
                for label, c, v in zip(marks.labels, marks.coords, marks.losses or [])])
            if path is None:
                self._path, self._path_steps, self._path_losses = b"", [], b""
            else:
                steps = surf.path_steps or list(range(len(path)))
                losses_p = (np.full(len(path), np.nan) if surf.path_losses is None
                            else np.asarray(surf.path_losses, dtype=np.float64))
                self._path_steps = [int(v) for v in steps]
                self._path_losses = f32(losses_p)
                self._path = f32(np.asarray(path, dtype=np.float64))
        self._alphas, self._betas = f32(alphas), f32(betas)
        self._shape = [int(len(alphas)), int(len(betas))]
        self._losses = f32(losses)


REDRAW = ("_losses", "_shape", "_done", "_state", "log_scale", "view", "title", "_path", "_iqr", "_marks", "show",
          "_metrics", "_curvature")  # the traits whose change redraws the plot


def surface_controls(kind, quantities=("loss", CURVATURE)) -> ControlSpec:
    """The surface view's controls: the limits, the normalizations, the views and what the plot can show (the loss,
    the Landscape's metrics, the curvature map), with the kind's own declaration (which controls change its
    directions)."""
    controls = {**common_controls(seed=True, normalization=True), "resolution": IntRange(*RESOLUTION),
                "span": FloatRange(*SPAN), "seeds": IntRange(*SEEDS), "view": Choice.of(VIEWS, VIEW_LABELS),
                "show": Choice.of(quantities)}
    return ControlSpec(controls, redraw=REDRAW, kind=kind.spec(), normalizations=list(NORMALIZATIONS),
                       views=list(VIEWS), quantities=list(quantities))


def controls_spec(kind, quantities=("loss", CURVATURE)) -> dict:
    """:func:`surface_controls` as the front end receives it (the ``_controls`` trait)."""
    return surface_controls(kind, quantities).to_json()


def _plane_params(p) -> dict:
    """The settings that make the plane (all but the layers drawn on it)."""
    return {k: v for k, v in p.items() if k != "curvature"}


def _nanmedian(values):
    """Per-cell median over the seeds of a spread's metric (all-NaN cells stay NaN)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(values, axis=0)


def _on_subset(surf) -> str:
    """' on 512 of 60,000 samples' for a preview computed on a subset of the data, else ''."""
    data = surf.data or {}
    if data.get("subset_of") is None:
        return ""
    return f" on {data['num_samples']:,} of {data['subset_of']:,} samples"
