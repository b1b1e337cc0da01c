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
from ._base import SEED_MAX, Rejected, SeededWidget, browser_choice, browser_int, f32

NEIGHBORS = (2, 200)
COLOR_BY = ("step", "loss")


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
                 title=None, **embed_options):
        self._trajs = check_trajectories(trajectory)
        if labels is not None and len(labels) != len(self._trajs):
            raise ValueError(f"labels has {len(labels)} entries for {len(self._trajs)} trajectories")
        self._labels_given = None if labels is None else [str(s) for s in labels]
        self._options = dict(embed_options)
        self.embedding = None
        self.preview = None
        super().__init__(method=method, dims=dims, n_neighbors=n_neighbors, seed=seed, color_by=color_by,
                         title="" if title is None else title)
        self._schedule()

    # -- Python-side checks --------------------------------------------------------------------------------------
    @t.validate("method")
    def _v_method(self, proposal):
        if proposal["value"] not in METHODS:
            raise ValueError(f"method={proposal['value']!r} is not known; pass one of {', '.join(map(repr, METHODS))}")
        return proposal["value"]

    @t.validate("dims")
    def _v_dims(self, proposal):
        return check_int(proposal["value"], "dims", low=2, high=3, hint=" (2-D or 3-D picture)")

    @t.validate("n_neighbors")
    def _v_n_neighbors(self, proposal):
        return check_int(proposal["value"], "n_neighbors", low=NEIGHBORS[0], high=NEIGHBORS[1], hint=" (UMAP's)")

    @t.validate("color_by")
    def _v_color_by(self, proposal):
        if proposal["value"] not in COLOR_BY:
            raise ValueError(f"color_by={proposal['value']!r} is not known; pass 'step' or 'loss'")
        return proposal["value"]

    def _browser_check(self, name, value):
        if name == "method":
            return browser_choice(value, name, METHODS)
        if name == "dims":  # a <select> sends text
            if value in (2, 3, "2", "3"):
                return int(value), None
            raise Rejected(f"dims must be 2 or 3, got {value!r}")
        if name == "n_neighbors":
            return browser_int(value, name, *NEIGHBORS)
        if name == "seed":
            return browser_int(value, name, 0, SEED_MAX)
        if name == "color_by":
            return browser_choice(value, name, COLOR_BY)
        return super()._browser_check(name, value)

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
            emit("preview", self._embed("pca", p))
        if cancel.is_set():
            return
        emit("done", self._embed(p["method"], p))

    def _apply(self, kind, emb, p, t0):
        with self.hold_sync():
            if kind == "preview":
                self.preview = emb
                self._done, self._total = 0, 1
                self._state = "preview"
                self._status = f"PCA preview; computing {p['method']} in {p['dims']}-D…"
            else:
                self.embedding = emb
                self._done = self._total = 1
                self._state = "done"
                self._status = (f"{p['method']} in {p['dims']}-D of {len(emb.coords)} snapshots in "
                                f"{time.perf_counter() - t0:.2f} s")
            self._show(emb)

    def _show(self, emb):
        meta = emb.meta
        self._measures = {
            "method": meta["method"], "dims": meta["dims"],
            "trustworthiness": float(emb.trustworthiness), "n_neighbors": meta["n_neighbors"],
            "reconstruction_error": _finite_or_none(emb.reconstruction_error),
            "reconstruction_reason": meta.get("reconstruction_error_reason", ""),
            "explained_variance": None if emb.explained_variance is None else [float(v) for v in
                                                                              emb.explained_variance],
            "umap_n_neighbors": meta.get("umap_n_neighbors"), "strides": meta["strides"]}
        self._labels = list(meta["labels"])
        self._steps, self._losses, self._run_index = f32(emb.steps), f32(emb.losses), f32(emb.run)
        self._shape = [int(emb.coords.shape[0]), int(emb.coords.shape[1])]
        self._coords = f32(emb.coords)
