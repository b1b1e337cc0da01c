"""``SurfaceWidget``: the loss on a random plane around the model (Li et al. 2018, arXiv 1712.09913, §4), live.

``losses[i, j] = L(theta + alphas[i] d1 + betas[j] d2)`` as in :meth:`Landscape.plane`; the browser receives
``losses`` as row-major float32 bytes with ``_shape = [len(alphas), len(betas)]``.
"""
from __future__ import annotations

import math
import numbers
import time

import numpy as np
import traitlets as t

from .._checks import check_int
from ._base import (check_compute, SEND_INTERVAL_S, RandomDirectionWidget, browser_choice, browser_float, browser_int,
                    check_normalization_choice, f32, gaps_note, private_landscape)

RESOLUTION = (5, 201)
SPAN = (1e-3, 1e3)
VIEWS = ("contour", "heatmap", "surface")
PREVIEW = 9  # coarse grid shown first: 81 points, a few ms on a small model


def _span(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"span must be a finite number (the plane covers -span..span on both axes), got {value!r}")
    s = float(value)
    if not SPAN[0] <= s <= SPAN[1]:
        raise ValueError(f"span={value!r} is out of range; pass a half-width between {SPAN[0]:g} and {SPAN[1]:g}")
    return float(s)


def upsample(losses, alphas, betas, axis):
    """Separable linear interpolation of a coarse grid onto ``axis`` x ``axis`` (NaN/inf spread as gaps)."""
    rows = np.stack([np.interp(axis, alphas, losses[:, j]) for j in range(losses.shape[1])], axis=1)
    return np.stack([np.interp(axis, betas, r) for r in rows], axis=0)


class SurfaceWidget(RandomDirectionWidget):
    """Live loss surface: resolution, seed, normalization, span, log scale and view (contour / heatmap / 3-D).

    Changing any compute control, in the browser or from Python (``w.resolution = 41``), recomputes in the kernel:
    a 9x9 preview first, then the full grid streamed row by row.  ``w.surface`` is the latest full
    :class:`~landscape_widgets.Surface`; ``w.wait()`` blocks until it is there.  ``compute={"client": client}``
    evaluates the full grids on Dask workers (docs/scaling.md); the previews stay in the kernel.
    """

    _view = t.Unicode("surface").tag(sync=True)
    resolution = t.Int(21).tag(sync=True)
    span = t.Float(1.0).tag(sync=True)
    view = t.Unicode("contour").tag(sync=True)
    _losses = t.Bytes(b"").tag(sync=True)
    _alphas = t.Bytes(b"").tag(sync=True)
    _betas = t.Bytes(b"").tag(sync=True)
    _shape = t.List(t.Int(), [0, 0]).tag(sync=True)

    _compute_traits = ("resolution", "seed", "normalization", "span")
    _display_traits = RandomDirectionWidget._display_traits + ("_alphas", "_betas", "_shape", "_losses")

    def __init__(self, ls, *, resolution=21, seed=0, normalization=None, span=1.0, log_scale=True, view="contour",
                 title=None, compute=None):
        self._ls = private_landscape(ls)
        self._compute_kw = check_compute(compute)
        self.surface = None
        self.preview = None
        self._grid = None
        self._fill = None
        self._last_send = 0.0
        super().__init__(resolution=resolution, seed=seed, normalization=check_normalization_choice(normalization),
                         span=_span(span), log_scale=log_scale, view=view, title="" if title is None else title)
        self._schedule()

    # -- Python-side checks: ValueError naming the argument ---------------------------------------------------
    @t.validate("resolution")
    def _v_resolution(self, proposal):
        return check_int(proposal["value"], "resolution", low=RESOLUTION[0], high=RESOLUTION[1],
                         hint=" (grid points per axis)")

    @t.validate("span")
    def _v_span(self, proposal):
        return _span(proposal["value"])

    @t.validate("view")
    def _v_view(self, proposal):
        if proposal["value"] not in VIEWS:
            raise ValueError(f"view={proposal['value']!r} is not known; pass one of {', '.join(map(repr, VIEWS))}")
        return proposal["value"]

    # -- browser-side checks: clamp or reject, the message goes to the widget's error box ----------------------
    def _browser_check(self, name, value):
        if name == "resolution":
            return browser_int(value, name, *RESOLUTION)
        if name == "span":
            return browser_float(value, name, *SPAN)
        if name == "view":
            return browser_choice(value, name, VIEWS)
        return super()._browser_check(name, value)

    # -- computation -------------------------------------------------------------------------------------------
    def _params(self):
        return {"resolution": self.resolution, "seed": self.seed, "normalization": self.normalization,
                "span": self.span}

    def _job(self, p, emit, cancel):
        kw = {"seed": p["seed"], "normalization": p["normalization"], "span": p["span"], "progress": False,
              "cancel": cancel}
        if p["resolution"] > PREVIEW:
            emit("preview", self._ls.plane(resolution=PREVIEW, **kw))
        emit("done", self._ls.plane(resolution=p["resolution"], callback=lambda tile: emit("tile", tile), **kw,
                                    **self._compute_kw))

    def _pending_status(self, p):
        return f"computing {p['resolution']}×{p['resolution']}…"

    def _reset_partial(self):
        self._grid = None
        self._fill = None

    def _describe(self, p):
        return f"{p['normalization']}-normalized random plane, seed {p['seed']}, span ±{p['span']:g}"

    def _apply(self, kind, payload, p, t0):
        n = p["resolution"]
        if kind == "preview":
            self.preview = payload
            with self.hold_sync():  # the arrays last: an observer of _losses sees the state that goes with them
                self._done, self._total = 0, n * n
                self._state = "preview"
                self._status = f"coarse {PREVIEW}×{PREVIEW} preview; computing {n}×{n}…"
                self._show(payload.alphas, payload.betas, payload.losses)
            self._grid = None
            self._fill = upsample(payload.losses, payload.alphas, payload.betas, np.linspace(-p["span"], p["span"], n))
        elif kind == "tile":
            if self._grid is None:
                # rows not computed yet keep showing the preview (hover says "pending"), not an empty plot
                self._grid = (np.full(n * n, np.nan, dtype=np.float32) if self._fill is None
                              else self._fill.astype(np.float32).ravel())
                self._axes = np.linspace(-p["span"], p["span"], n)
            self._grid[payload.start:payload.stop] = payload.values
            now = time.perf_counter()
            with self.hold_sync():
                self._done, self._total = payload.done, payload.total
                self._status = (f"computing {n}×{n}: {payload.done} of {payload.total} points"
                                + ("; rows not computed yet show the preview" if self._fill is not None else ""))
                if now - self._last_send >= SEND_INTERVAL_S and payload.done < payload.total:
                    self._last_send = now
                    self._state = "partial"
                    self._show(self._axes, self._axes, self._grid.reshape(n, n))
        elif kind == "done":
            self.surface = payload
            self._grid = None
            with self.complete_sync():
                self._done = self._total = payload.losses.size
                self._state = "done"
                self._status = (f"{n}×{n} in {time.perf_counter() - t0:.2f} s · {self._describe(p)}"
                                + gaps_note(payload.losses))
                self._show(payload.alphas, payload.betas, payload.losses)

    def _show(self, alphas, betas, losses):
        self._alphas, self._betas = f32(alphas), f32(betas)
        self._shape = [int(len(alphas)), int(len(betas))]
        self._losses = f32(losses)
