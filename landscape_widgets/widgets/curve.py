"""``CurveWidget``: 1-D loss profiles, live: the interpolation theta(a) = (1 - a) theta_start + a theta_model
(Goodfellow et al. 2015, arXiv 1412.6544; Li et al. 2018 §3), or a filter-normalized random line when
``start=None``.  Several curves overlay with a legend (``w.add``): another start, other data, another model.
"""
from __future__ import annotations

import time

import numpy as np
import traitlets as t

from .._checks import check_int, check_range
from ._base import (check_compute, RandomDirectionWidget, check_normalization_choice, engine_note, f32,
                    private_landscape)
from .controls import Choice, ControlSpec, IntRange, Pair, common_controls
from .jobs import Done, Part, Preview, Tile
from .status import Status, gaps_text

STEPS = (3, 401)
SPAN_LIMIT = 1e3
PREVIEW = 11
REDRAW = ("_curves", "_state", "log_scale", "title", "show")  # the traits whose change redraws the plot


def _span_pair(value, name="span"):
    a, b = check_range(value, name)
    if max(abs(a), abs(b)) > SPAN_LIMIT:
        raise ValueError(f"{name}=({a:g}, {b:g}) is out of range; pass values within ±{SPAN_LIMIT:g}")
    return [a, b]


class CurveWidget(RandomDirectionWidget):
    """Live loss curves.  ``start`` (a state_dict or a model) gives the interpolation from ``start`` to the model;
    ``None`` a random line through the model (seed and normalization controls appear).  ``w.curve`` is the
    latest full :class:`~landscape_widgets.Curve` of the first curve, ``w.curves`` all of them.  ``show``: "loss" or
    the name of a metric of the Landscape (``Landscape(metrics=...)``, computed in the same passes), drawn for every
    curve whose Landscape has it.  ``send_interval``: the least seconds between two partial curves sent to the
    browser (0.15 by default)."""

    _view = t.Unicode("curve").tag(sync=True)
    steps = t.Int(51).tag(sync=True)
    span = t.List(t.Float(), [-0.5, 1.5], minlen=2, maxlen=2).tag(sync=True)
    _random = t.Bool(False).tag(sync=True)
    _curves = t.List().tag(sync=True)  # [{label, kind, alphas: f32 bytes, losses: f32 bytes, metrics: {name: bytes}}]
    show = t.Unicode("loss").tag(sync=True)  # "loss" or a metric's name
    _quantities = t.List(t.Unicode(), ["loss"]).tag(sync=True)

    _compute_traits = ("steps", "span", "seed", "normalization")
    _display_traits = RandomDirectionWidget._display_traits + ("_curves", "show")

    def __init__(self, ls, start=None, *, steps=51, span=(-0.5, 1.5), title=None, label=None, seed=0,
                 normalization=None, compute=None, show="loss", jobs=None, send_interval=None):
        self._compute_kw = check_compute(compute)
        self._specs = []
        self.curves = []
        self._partial = None
        self._grid = None
        self._grid_k = None
        self._mgrid = None
        self._last_send = 0.0
        super().__init__(steps=steps, span=list(span) if isinstance(span, (tuple, list)) else span, seed=seed,
                         normalization=check_normalization_choice(normalization), title="" if title is None else title,
                         controls=curve_controls(["loss"]), jobs=jobs, send_interval=send_interval)
        self._add_spec(ls, start, label)
        self.show = show
        self._schedule()

    @property
    def curve(self):
        return self.curves[0] if self.curves else None

    def add(self, start=None, *, landscape=None, label=None) -> "CurveWidget":
        """Overlay another curve: another ``start``, or another ``landscape`` (a test split, another model)."""
        self._add_spec(landscape if landscape is not None else self._specs[0]["ls"], start, label)
        self._schedule()
        return self

    def connect(self, model_b, *, bend=None, label=None, **options) -> "CurveWidget":
        """Overlay Garipov et al.'s Bézier curve from the model (t = 0) to ``model_b`` (t = 1) and the straight line
        beside it (:meth:`Landscape.connect`; ``options`` go there, e.g. ``epochs=``, ``seed=``).  The bend is
        trained once (``bend=None``) and kept: the steps control then only evaluates; the curves always cover
        t in [0, 1], whatever the span control says.  The legend gives both barriers."""
        if label is not None and not isinstance(label, str):
            raise TypeError(f"label must be a string or None, got {type(label).__name__}")
        for name in ("steps", "progress", "cancel", "callback"):
            if name in options:
                raise TypeError(f"connect() sets {name!r} itself (steps: the widget's steps control)")
        ls = self._specs[0]["ls"]
        # trained here, in the caller's thread, on a copy of its own: the worker thread may be computing a curve on
        # the widget's private copy meanwhile (the layers' patched forwards of two runs on one module collide)
        here = ls.copy()
        if bend is None:  # bad models fail here, with connect's own message, and the bend is trained once
            bend = here.connect(model_b, steps=2, progress=False, **options).bend
        else:
            here.connect(model_b, bend=bend, steps=2, progress=False, **options)
        self._specs.append({"ls": ls, "start": None, "label": label or "Bézier curve",
                            "connect": {"model_b": model_b, "bend": bend, "options": options}})
        self._schedule()
        return self

    def _add_spec(self, ls, start, label):
        if label is not None and not isinstance(label, str):
            raise TypeError(f"label must be a string or None, got {type(label).__name__}")
        k = len(self._specs) + 1
        if label is None:
            label = ("random line" if start is None else "interpolation") + ("" if k == 1 else f" {k}")
        spec = {"ls": private_landscape(ls), "start": start, "label": label}
        self._specs.append(spec)
        self._random = self._random or start is None
        names = list(self._quantities) + [n for n in spec["ls"].objective.metric_names if n not in self._quantities]
        self._quantities = names
        self._spec = curve_controls(names)
        self._controls = self._spec.to_json()

    # -- checks ------------------------------------------------------------------------------------------------
    @t.validate("steps")
    def _v_steps(self, proposal):
        return check_int(proposal["value"], "steps", low=STEPS[0], high=STEPS[1])

    @t.validate("span")
    def _v_span(self, proposal):
        return _span_pair(proposal["value"])

    @t.validate("show")
    def _v_show(self, proposal):
        if proposal["value"] not in self._quantities:
            raise ValueError(f"show={proposal['value']!r} is not known; pass one of "
                             f"{', '.join(map(repr, self._quantities))} (metrics are those given to "
                             "lw.Landscape(metrics=...))")
        return proposal["value"]

    # -- computation -------------------------------------------------------------------------------------------
    def _params(self):
        return {"steps": self.steps, "span": tuple(self.span), "seed": self.seed,
                "normalization": self.normalization, "specs": list(self._specs)}

    def _reset_partial(self):
        self._partial = None
        self._grid = None

    @staticmethod
    def _one(spec, p, steps, cancel, callback=None, compute=None):
        if "connect" in spec:
            c = spec["connect"]
            return spec["ls"].connect(c["model_b"], bend=c["bend"], steps=steps, progress=False, cancel=cancel,
                                      **c["options"])
        kw = {"steps": steps, "span": p["span"], "progress": False, "cancel": cancel, "callback": callback,
              **(compute or {})}
        if spec["start"] is None:
            return spec["ls"].line(seed=p["seed"], normalization=p["normalization"], **kw)
        return spec["ls"].interpolate(spec["start"], **kw)

    def _job(self, p, emit, cancel):
        if p["steps"] > PREVIEW:
            emit(Preview([self._one(s, p, PREVIEW, cancel) for s in p["specs"]]))
        done = []
        for k, spec in enumerate(p["specs"]):
            done.append(self._one(spec, p, p["steps"], cancel, lambda tile, k=k: emit(Tile(tile, k)),
                                  self._compute_kw))
            emit(Part(k, done[-1]))
        emit(Done(done))

    def _entry(self, spec, curve_alphas, losses, kind, metrics=None):
        return {"label": spec["label"], "kind": kind, "alphas": f32(curve_alphas), "losses": f32(losses),
                "metrics": {k: f32(v) for k, v in (metrics or {}).items()}}

    def _entries(self, spec, curve) -> list:
        """What a curve draws: its own entry; a Bézier curve with its straight line beside it, barriers in the
        legend."""
        if curve.kind != "connect":
            return [self._entry(spec, curve.alphas, curve.losses, curve.kind, curve.metrics)]
        bezier = dict(self._entry(spec, curve.alphas, curve.losses, "connect"),
                      label=f"{spec['label']} (barrier {curve.barrier:.3g})")
        line = dict(self._entry(spec, curve.alphas, curve.line_losses, "connect"),
                    label=f"straight line (barrier {curve.line_barrier:.3g})")
        return [bezier, line]

    def _event_handlers(self):
        return {**super()._event_handlers(), Preview: self._on_preview, Tile: self._on_tile, Part: self._on_part,
                Done: self._on_done}

    def _on_preview(self, event, p, t0):
        specs, steps = p["specs"], p["steps"]
        self._partial = [self._entries(s, c) for s, c in zip(specs, event.result)]
        with self.hold_sync():  # the arrays last: an observer of _curves sees the state that goes with them
            self._done, self._total = 0, steps * len(specs)
            self._state = "preview"
            self._set_status(Status(f"coarse {PREVIEW}-point preview; computing {steps} points per curve…",
                                    stage="preview"))
            self._curves = [e for entries in self._partial for e in entries]

    def _on_tile(self, event, p, t0):
        specs, steps = p["specs"], p["steps"]
        total = steps * len(specs)
        k, tile = event.part, event.tile
        if self._partial is None:
            self._partial = [None] * len(specs)
        if self._grid is None or self._grid_k != k:
            self._grid_k, self._grid = k, np.full(steps, np.nan, dtype=np.float32)
            self._mgrid = {n: np.full(steps, np.nan, dtype=np.float32) for n in tile.metrics}
        self._grid[tile.start:tile.stop] = tile.values
        for n, v in tile.metrics.items():
            self._mgrid[n][tile.start:tile.stop] = v
        done = k * steps + tile.done
        now = time.perf_counter()
        with self.hold_sync():
            self._done, self._total = done, total
            self._set_status(Status(f"computing: {done} of {total} points", stage="points"))
            if now - self._last_send >= self._send_interval and done < total:
                self._last_send = now
                a0, a1 = p["span"]
                kind_k = "line" if specs[k]["start"] is None else "interpolation"
                self._partial[k] = [self._entry(specs[k], np.linspace(a0, a1, steps), self._grid, kind_k,
                                                self._mgrid)]
                self._state = "partial"
                self._curves = [e for entries in self._partial if entries is not None for e in entries]

    def _on_part(self, event, p, t0):
        specs = p["specs"]
        if self._partial is None:
            self._partial = [None] * len(specs)
        self._partial[event.part] = self._entries(specs[event.part], event.result)
        self._grid = None

    def _on_done(self, event, p, t0):
        specs, steps, payload = p["specs"], p["steps"], event.result
        self.curves = payload
        self._grid = None
        n = len(specs)
        status = Status(f"{n} curve{'s' if n > 1 else ''} × {steps} points in {time.perf_counter() - t0:.2f} s"
                        + engine_note(payload[0]), stage="done")
        status = status.note("gaps", gaps_text(np.concatenate([c.losses for c in payload])))
        with self.complete_sync():
            self._done = self._total = steps * n
            self._state = "done"
            self._set_status(status)
            self._curves = [e for s, c in zip(specs, payload) for e in self._entries(s, c)]


def curve_controls(quantities) -> ControlSpec:
    """The curve view's controls: steps, the span's two ends, the random line's seed and normalization, and what
    it can show (the loss and the Landscapes' metrics)."""
    controls = {**common_controls(seed=True, normalization=True), "steps": IntRange(*STEPS),
                "span": Pair(SPAN_LIMIT, _span_pair), "show": Choice.of(list(quantities))}
    return ControlSpec(controls, redraw=REDRAW)
