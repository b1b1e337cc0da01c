"""``TrajectoryWidget``: the optimization path embedded in 2-D or 3-D (PCA, UMAP or an autoencoder), live.

The browser receives ``_coords`` (row-major float32 bytes, ``_shape = [n, dims]``), the steps, losses and run index
of every snapshot, and the measures that say how far to trust the picture (trustworthiness, reconstruction error,
explained variance; see :mod:`landscape_widgets.embedding`).  Method, dims, UMAP's n_neighbors and the seed
recompute in the kernel; a non-PCA method shows the PCA embedding as its preview.
"""
from __future__ import annotations

import time

import numpy as np
import traitlets as t

from .._checks import check_int
from ..embedding import METHODS, check_trajectories, embed
from ._base import SeededWidget, f32
from .controls import Choice, ControlSpec, IntRange, common_controls
from .jobs import Done, Preview
from .status import Status

NEIGHBORS = (2, 200)
COLOR_BY = ("step", "loss")
DIMS = (2, 3)
METHOD_LABELS = {"pca": "PCA", "umap": "UMAP", "autoencoder": "autoencoder"}
AXIS_NAMES = {"pca": "PC", "umap": "UMAP", "autoencoder": "AE"}  # the plot's axis titles: "PC 1", "UMAP 2"
REDRAW = ("_coords", "_shape", "_state", "_measures", "color_by", "title")  # the traits whose change redraws the plot


def trajectory_controls() -> ControlSpec:
    """The trajectory view's controls: the embedding method, dims, UMAP's neighbours, seed and colouring."""
    controls = {**common_controls(seed=True), "method": Choice.of(METHODS, METHOD_LABELS),
                "dims": Choice.of(DIMS, {d: f"{d}-D" for d in DIMS}), "n_neighbors": IntRange(*NEIGHBORS),
                "color_by": Choice.of(COLOR_BY)}
    return ControlSpec(controls, redraw=REDRAW, axis_names={m: AXIS_NAMES.get(m, "dim") for m in METHODS})


def _finite_or_none(v):
    return None if v is None or not np.isfinite(v) else float(v)


class TrajectoryWidget(SeededWidget):
    """Live trajectory embedding of ``trajectory`` (an :class:`~landscape_widgets.Trajectory` or a list, embedded
    together to compare runs), coloured by step or loss, with trustworthiness and reconstruction error beside it.

    ``w.embedding`` is the latest :class:`~landscape_widgets.Embedding`; ``w.wait()`` blocks until it is there.
    Other keyword arguments (``epochs``, ``hidden``, ``trust_neighbors``, ``umap_inverse``) go to ``lw.embed``.
    """

    _view = t.Unicode("trajectory").tag(sync=True)
    method = t.Unicode("pca").tag(sync=True)
    dims = t.Int(2).tag(sync=True)
    n_neighbors = t.Int(15).tag(sync=True)
    color_by = t.Unicode("step").tag(sync=True)
    _coords = t.Bytes(b"").tag(sync=True)
    _shape = t.List(t.Int(), [0, 0]).tag(sync=True)
    _steps = t.Bytes(b"").tag(sync=True)
    _losses = t.Bytes(b"").tag(sync=True)
    _run_index = t.Bytes(b"").tag(sync=True)
    _labels = t.List(t.Unicode()).tag(sync=True)
    _measures = t.Dict().tag(sync=True)

    _compute_traits = ("method", "dims", "n_neighbors", "seed")

    def __init__(self, trajectory, *, method="pca", dims=2, n_neighbors=15, seed=0, color_by="step", labels=None,
                 title=None, jobs=None, **embed_options):
        self._trajs = check_trajectories(trajectory)
        if labels is not None and len(labels) != len(self._trajs):
            raise ValueError(f"labels has {len(labels)} entries for {len(self._trajs)} trajectories")
        self._labels_given = None if labels is None else [str(s) for s in labels]
        self._options = dict(embed_options)
        self.embedding = None
        self.preview = None
        super().__init__(method=method, dims=dims, n_neighbors=n_neighbors, seed=seed, color_by=color_by,
                         title="" if title is None else title, controls=trajectory_controls(), jobs=jobs)
        self._schedule()

    # -- Python-side checks --------------------------------------------------------------------------------------
    @t.validate("method")
    def _v_method(self, proposal):
        if proposal["value"] not in METHODS:
            raise ValueError(f"method={proposal['value']!r} is not known; pass one of {', '.join(map(repr, METHODS))}")
        return proposal["value"]

    @t.validate("dims")
    def _v_dims(self, proposal):
        return check_int(proposal["value"], "dims", low=DIMS[0], high=DIMS[-1], hint=" (2-D or 3-D picture)")

    @t.validate("n_neighbors")
    def _v_n_neighbors(self, proposal):
        return check_int(proposal["value"], "n_neighbors", low=NEIGHBORS[0], high=NEIGHBORS[1], hint=" (UMAP's)")

    @t.validate("color_by")
    def _v_color_by(self, proposal):
        if proposal["value"] not in COLOR_BY:
            raise ValueError(f"color_by={proposal['value']!r} is not known; pass 'step' or 'loss'")
        return proposal["value"]

    # -- computation -------------------------------------------------------------------------------------------
    def _params(self):
        return {"method": self.method, "dims": self.dims, "n_neighbors": self.n_neighbors, "seed": self.seed}

    def _embed(self, method, p):
        n = sum(len(tr) for tr in self._trajs)
        kw = dict(self._options)
        if method == "umap":
            kw["n_neighbors"] = max(2, min(p["n_neighbors"], n - 1))  # UMAP needs fewer neighbours than points
        return embed(self._trajs, method=method, dims=p["dims"], seed=p["seed"], labels=self._labels_given, **kw)

    def _job(self, p, emit, cancel):
        if p["method"] != "pca":
            emit(Preview(self._embed("pca", p)))
        if cancel.is_set():
            return
        emit(Done(self._embed(p["method"], p)))

    def _event_handlers(self):
        return {**super()._event_handlers(), Preview: self._on_preview, Done: self._on_done}

    def _on_preview(self, event, p, t0):
        emb = self.preview = event.result
        with self.hold_sync():
            self._done, self._total = 0, 1
            self._state = "preview"
            self._set_status(Status(f"PCA preview; computing {p['method']} in {p['dims']}-D…", stage="preview"))
            self._show(emb)

    def _on_done(self, event, p, t0):
        emb = self.embedding = event.result
        with self.hold_sync():
            self._done = self._total = 1
            self._state = "done"
            self._set_status(Status(f"{p['method']} in {p['dims']}-D of {len(emb.coords)} snapshots in "
                                    f"{time.perf_counter() - t0:.2f} s", stage="done"))
            self._show(emb)

    def _show(self, emb):
        self._measures = {
            "method": emb.method, "dims": emb.dims,
            "trustworthiness": float(emb.trustworthiness), "n_neighbors": emb.n_neighbors,
            "reconstruction_error": _finite_or_none(emb.reconstruction_error),
            "reconstruction_reason": emb.reconstruction_error_reason or "",
            "explained_variance": None if emb.explained_variance is None else [float(v) for v in
                                                                              emb.explained_variance],
            "umap_n_neighbors": emb.umap_n_neighbors, "strides": emb.strides}
        self._labels = list(emb.labels)
        self._steps, self._losses, self._run_index = f32(emb.steps), f32(emb.losses), f32(emb.run)
        self._shape = [int(emb.coords.shape[0]), int(emb.coords.shape[1])]
        self._coords = f32(emb.coords)
