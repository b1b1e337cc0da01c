"""``Landscape``: the model, the loss and the data, bound together; the entry point of every computation.

Data flow: model -> directions -> evaluator -> result.  Each method makes a private, refreshed copy of the
user's weights, builds its directions, and hands the points to :class:`~landscape_widgets.evaluator.PointEvaluator`.
"""
from __future__ import annotations

import platform

import numpy as np
import torch
from torch import nn

from ._version import __version__
from ._checks import axis, check_int, check_range, check_resolution, check_span
from ._model import PrivateModel, check_model, resolve_device, select_params, state_from, unwrap
from .data import DataSource
from .objective import Objective
from .directions import cosine, make_directions
from .batched import TILE_POINTS, VmapEvaluator, resolve_evaluator
from .evaluator import Moving, PointEvaluator, Timer, grid_tile_size
from .results import Curve, Surface
from .hessian import Spectrum, api as hessian_api
from .hessian.trust import SeedSpread
from .store import local_compute, open_store, run_settings, run_tiles

BUFFER_MODES = ("interpolate", "model", "recompute")


class Landscape:
    """Loss of ``model`` on ``data``, explored around the model's weights.

    The loss of a batch is one of:

    - ``loss_fn(outputs, targets)`` with ``(inputs, targets)`` batches: inputs a tensor -> ``model(x)``, a tuple ->
      ``model(*x)``, a dict -> ``model(**x)``;
    - ``loss_fn=None``: the model's output carries it (HuggingFace): the batch is called as ``model(**batch)``
      (dict), ``model(*batch)`` (tuple/list) or ``model(batch)``, and the loss is ``out.loss``, ``out["loss"]`` or
      ``out`` itself when it is a scalar tensor;
    - ``batch_loss(model, batch) -> scalar tensor``: ``model`` carries the point's weights (its ``parameters()`` and
      every forward see them), for regularizers, several forwards and any batch structure.

    ``data`` is one batch or a re-iterable of batches (a DataLoader, a list); a dict, a tensor or a tuple of tensors
    with one first dimension is one batch.  The loss is the sample-weighted mean over all batches; a batch's sample
    count is the first dimension of its targets (with ``loss_fn``) or of its first tensor.  Computed in eval mode
    without gradients on ``device`` (None: CUDA when available, else CPU).

    ``params``: which parameters move: None (default) those with ``requires_grad=True``, ``"all"``, an iterable of
    names, or a callable ``(name, tensor) -> bool``; every direction, the interpolation and every Hessian use this
    set, the others keep the model's values.  A parameter shared by several modules (tied weights) moves once and
    every use sees it.  A ``torch.compile``'d or ``DataParallel`` model is evaluated through its original module.
    The model itself is never modified.
    """

    def __init__(self, model: nn.Module, loss_fn=None, data=None, *, batch_loss=None, params=None, device=None):
        check_model(model)
        self.objective = Objective(loss_fn, batch_loss)
        select_params(unwrap(model), params)  # a bad selection fails here, not at the first computation
        self.model = model
        self.loss_fn = loss_fn
        self.batch_loss = batch_loss
        self.params = params
        self.data = DataSource(data, pairs=self.objective.mode == "loss_fn")
        self.device = resolve_device(device)
        self._private = None
        self._tune_cache = {}  # evaluator="auto"'s choices (batched.VmapEvaluator), kept for the next call

    # -- internals --------------------------------------------------------------------------------------------
    def _fresh(self) -> PrivateModel:
        if self._private is None:
            self._private = PrivateModel(self.model, self.device, params=self.params)
        else:
            self._private.refresh()
        return self._private

    def _meta(self, private, **extra):
        meta = {"library": "landscape_widgets", "version": __version__, "torch": torch.__version__,
                "python": platform.python_version(), "device": str(self.device),
                "num_parameters": private.num_parameters, **private.describe_params(),
                "model_sha256": private.fingerprint(), "model_class": type(unwrap(self.model)).__name__,
                "loss": self.objective.mode}
        meta.update(extra)
        meta["data"] = self.data.describe()
        return meta

    def _evaluator(self, private, dirs, *, buffer_dirs=None, point_hook=None, kind="loop", autotune=False):
        moving = []
        for n in private.names:
            ds = [d[n] if d[n].count_nonzero() else None for d in dirs]
            if any(t is not None for t in ds):
                moving.append(Moving(private.params[n], private.base[n], ds))
        for n, bd in (buffer_dirs or {}).items():
            moving.append(Moving(private.buffers[n], private.base_buffers[n], bd))
        if kind == "vmap":
            return VmapEvaluator(private, self.data, self.objective, moving, point_hook=point_hook,
                                 autotune=autotune, tune_cache=self._tune_cache)
        return PointEvaluator(private, self.data, self.objective, moving, point_hook=point_hook)

    def _make_evaluator(self, private, dirs, *, buffer_dirs=None, buffers=None, evaluator="auto"):
        kind = resolve_evaluator(evaluator, private.device, buffers=buffers)
        hook = _bn_recompute_hook(private, self.data, self.objective) if buffers == "recompute" else None
        ev = self._evaluator(private, dirs, buffer_dirs=buffer_dirs, point_hook=hook, kind=kind,
                             autotune=(evaluator == "auto"))
        return ev, kind

    def _run(self, private, dirs, coords, *, kind, tile_size, callback, cancel, progress, desc, buffer_dirs=None,
             buffers=None, client=None, store=None, evaluator="auto"):
        """Evaluate ``coords`` here, resumably through ``store``, or on Dask workers (``client``); returns the
        losses and what to add to the meta (landscape_widgets.store / .distributed, issue 6)."""
        resolve_evaluator(evaluator, self.device, buffers=buffers)  # a bad name fails before any work
        tiles = None
        if store is not None:
            tiles = open_store(store, run_settings(kind, private, self.data, self.objective, dirs, coords, tile_size,
                                                   buffer_dirs=buffer_dirs, buffers=buffers))
        if client is not None:
            from .distributed import dask_compute
            compute, info = dask_compute(client, self, private, dirs, coords, buffer_dirs=buffer_dirs,
                                         buffers=buffers, evaluator=evaluator)
        else:
            ev, ev_kind = self._make_evaluator(private, dirs, buffer_dirs=buffer_dirs, buffers=buffers,
                                               evaluator=evaluator)
            info = {"evaluator": ev_kind}
            if tiles is None:
                losses = ev.run(coords, tile_size=tile_size, on_tile=callback, cancel=cancel, progress=progress,
                                desc=desc)
                if getattr(ev, "autotune", False):
                    info["evaluator"] = f"auto: {ev.mode or 'vmap'}"
                    info["evaluator_timings"] = ev.timings
                if isinstance(ev, VmapEvaluator) and ev.mode != "loop":
                    info["vmap_rule"] = ev.rule  # how its layers were batched (batched.RULES)
                return losses, info
            compute = local_compute(ev, coords)
        losses = run_tiles(len(coords), tile_size, compute, on_tile=callback, cancel=cancel, progress=progress,
                           desc=desc, store=tiles)
        if tiles is not None:
            info["store"] = tiles.info()
        return losses, info

    # -- public API -------------------------------------------------------------------------------------------
    def loss(self) -> float:
        """The loss at the model's own weights."""
        private = self._fresh()
        return float(self._evaluator(private, []).run(np.zeros((1, 0)))[0])

    def interpolate(self, start, *, steps=51, span=(-0.5, 1.5), buffers="interpolate", progress=True,
                    callback=None, cancel=None, client=None, store=None, evaluator="auto") -> Curve:
        """Loss along theta(a) = (1 - a) theta_start + a theta_model (Goodfellow et al. 2015; Li et al. 2018 §3).

        ``buffers``: "interpolate" moves floating buffers (BatchNorm statistics) along the same line (Li et al.'s
        "states"), "model" keeps the model's, "recompute" re-estimates BatchNorm statistics at every point with one
        train-mode pass over the data (as SWA's ``update_bn``).  ``client``, ``store`` and ``evaluator``: as in
        :meth:`plane`.
        """
        steps = check_int(steps, "steps", low=2)
        a0, a1 = check_range(span, "span")
        if buffers not in BUFFER_MODES:
            raise ValueError(f"buffers={buffers!r} is not known; pass one of {', '.join(map(repr, BUFFER_MODES))}")
        timer = Timer()
        private = self._fresh()
        start_state = state_from(start, private, need_buffers=(buffers == "interpolate"))
        # theta(a) = theta_model + (a - 1) (theta_model - theta_start): exact at a = 1, the model itself
        d = {n: private.base[n] - start_state[n] for n in private.names}
        buffer_dirs = None
        if buffers == "interpolate":
            buffer_dirs = {n: [private.base_buffers[n] - start_state[n]] for n in private.buffer_names}
        alphas = axis((a0, a1), steps)
        t_dir = timer()
        losses, run_info = self._run(private, [d], (alphas - 1.0)[:, None], kind="interpolation",
                                     tile_size=max(1, -(-steps // 8)), callback=callback, cancel=cancel,
                                     progress=progress, desc="interpolate", buffer_dirs=buffer_dirs, buffers=buffers,
                                     client=client, store=store, evaluator=evaluator)
        dist = float(sum((v.double() ** 2).sum() for v in d.values()) ** 0.5)
        meta = self._meta(private, kind="interpolation", buffers=buffers, distance=dist,
                          timings=_timings(t_dir, timer(), steps), **run_info)
        return Curve(alphas, losses, meta)

    def line(self, *, direction="random", normalization=None, ignore="biasbn", seed=0, steps=51, span=1.0,
             progress=True, callback=None, cancel=None, client=None, store=None, evaluator="auto") -> Curve:
        """Loss along theta + a d for one direction d (random Gaussian, filter-normalized by default).

        ``client``, ``store`` and ``evaluator``: as in :meth:`plane`."""
        steps = check_int(steps, "steps", low=2)
        (a0, a1), = check_span(span, "span", axes=1)
        timer = Timer()
        private = self._fresh()
        (d1,), dmeta = make_directions(direction, private, 1, argname="direction", seed=seed,
                                       normalization=normalization, ignore=ignore,
                                       **self._kind_options(direction, cancel))
        alphas = axis((a0, a1), steps)
        t_dir = timer()
        losses, run_info = self._run(private, [d1], alphas[:, None], kind="line", tile_size=max(1, -(-steps // 8)),
                                     callback=callback, cancel=cancel, progress=progress, desc="line",
                                     client=client, store=store, evaluator=evaluator)
        meta = self._meta(private, kind="line", **dmeta, timings=_timings(t_dir, timer(), steps), **run_info)
        curve = Curve(alphas, losses, meta)
        curve.direction = {n: t.detach().cpu() for n, t in d1.items()}
        return curve

    def plane(self, *, directions="random", normalization=None, ignore="biasbn", seed=0, resolution=41, span=None,
              progress=True, callback=None, cancel=None, client=None, store=None, evaluator="auto",
              trajectory=None, trust=False) -> Surface:
        """Loss on the plane theta + a d1 + b d2 (Li et al. 2018, arXiv 1712.09913, §4).

        ``losses[i, j] = L(theta + alphas[i] d1 + betas[j] d2)``.  ``callback(tile)`` receives every finished
        :class:`~landscape_widgets.evaluator.Tile` (whole rows of the grid); ``cancel`` (a ``threading.Event`` or a
        callable) is checked between tiles and raises :class:`~landscape_widgets.evaluator.Cancelled`.

        ``span=None`` is the direction kind's default: 1.0 for random and explicit directions; for
        ``directions="pca"`` (Li et al. §7, needs ``trajectory=lw.Trajectory``) a grid covering the projected path,
        which ``surf.path`` [n, 2] holds; for ``directions="hessian"`` (unit eigenvectors of lambda_max and of the
        most negative eigenvalue, Böttcher & Wheeler 2022; normalization "none") ``sqrt(2 max(L0, 0.1) / lambda_max)``
        on both axes, where the quadratic model doubles the loss (``.meta``: lambda_max, lambda_min, span_rule).
        ``trust=True`` adds the trust panel (:meth:`trust`) as ``surf.meta["trust"]``.

        Scale (docs/scaling.md): ``evaluator`` "auto" (vmap-batched points on CUDA, the per-point loop elsewhere),
        "loop" or "vmap"; ``client`` a ``dask.distributed.Client`` (or :class:`~landscape_widgets.distributed.Workers`)
        evaluates tiles on Dask workers; ``store`` a directory where finished tiles are kept, so a killed run
        resumes where it stopped.
        """
        nx, ny = check_resolution(resolution)
        spans = None if span is None else check_span(span, "span", axes=2)
        timer = Timer()
        private = self._fresh()
        if trajectory is not None and directions != "pca":
            raise ValueError("trajectory= is only used by directions='pca' (Li et al. §7); pass directions='pca' "
                             "or leave trajectory out")
        extra = {} if trajectory is None else {"trajectory": trajectory}
        extra.update(self._kind_options(directions, cancel))
        (d1, d2), dmeta = make_directions(directions, private, 2, argname="directions", seed=seed,
                                          normalization=normalization, ignore=ignore, **extra)
        path, kind_span = dmeta.pop("path", None), dmeta.pop("default_span", None)
        (a0, a1), (b0, b1) = spans or kind_span or check_span(1.0, "span", axes=2)
        alphas, betas = axis((a0, a1), nx), axis((b0, b1), ny)
        aa, bb = np.meshgrid(alphas, betas, indexing="ij")
        coords = np.stack([aa.ravel(), bb.ravel()], axis=1)
        t_dir = timer()
        target = TILE_POINTS if resolve_evaluator(evaluator, self.device) == "vmap" else 64
        losses, run_info = self._run(private, [d1, d2], coords, kind="plane",
                                     tile_size=grid_tile_size(ny, len(coords), target), callback=callback,
                                     cancel=cancel,
                                     progress=progress, desc="plane", client=client, store=store,
                                     evaluator=evaluator)
        losses = losses.reshape(nx, ny)
        meta = self._meta(private, kind="plane", **dmeta, cosine=cosine(d1, d2),
                          timings=_timings(t_dir, timer(), nx * ny), **run_info)
        dirs = tuple({n: t.detach().cpu() for n, t in d.items()} for d in (d1, d2))
        surface = Surface(alphas, betas, losses, dirs, meta, path=path)
        if trust:
            surface.meta["trust"] = self.trust(surface, cancel=cancel)
        return surface

    def spectrum(self, k=5, *, bottom=1, density=True, trace=True, seed=0, steps=90, runs=10, trace_samples=99,
                 trace_method="hutch++", tol=1e-6, backend="graph", callback=None, cancel=None) -> Spectrum:
        """Eigen-spectrum of the Hessian of the loss over all data (eval mode) at the model's weights.

        ``k`` largest and ``bottom`` smallest eigenvalues by Lanczos (ARPACK's convergence test, relative accuracy
        ``tol``), the trace by Hutch++ (``trace_method="hutchinson"`` for plain Rademacher) from ``trace_samples`` products
        (``trace=False`` skips it: ``trace`` is NaN then),
        and with ``density=True`` the spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019,
        arXiv 1901.10159) from ``runs`` runs of ``steps`` steps.  ``callback(dict(stage, done, total, hvps))``
        reports progress; ``cancel`` (Event or callable) is checked before every Hessian-vector product.
        """
        return hessian_api.spectrum(self, k, bottom=bottom, density=density, trace=trace, seed=seed, steps=steps,
                                    runs=runs, trace_samples=trace_samples, trace_method=trace_method, tol=tol,
                                    backend=backend, callback=callback, cancel=cancel)

    def trust(self, surface, *, spectrum=None, seed=0, trace_samples=99, tol=1e-6, cancel=None) -> dict:
        """The trust panel of ``surface``: ``kappa`` (``d^T H d / ||d||^2`` per direction), ``lambda_max``,
        ``lambda_min``, ``trace_over_n`` (``tr(H)/N``, with its stderr) and ``hides_saddle`` (``lambda_min < 0``
        while both kappas are > 0; Böttcher & Wheeler 2022).  Pass ``spectrum`` to reuse its eigenvalues and trace.
        ``surface`` may also be an :class:`~landscape_widgets.SeedSpread` of random planes: then the panel has
        ``kappa_per_seed`` [K][2] and ``kappa_range`` instead of ``kappa``, and ``hides_saddle_seeds``.
        """
        return hessian_api.trust(self, surface, spectrum=spectrum, seed=seed, trace_samples=trace_samples, tol=tol,
                                 cancel=cancel)

    def seed_spread(self, seeds=5, *, directions="random", callback=None, cancel=None, **plane_options) -> SeedSpread:
        """The same plane for ``seeds`` (a count or a list): per-cell ``median`` and ``iqr`` and one ``sharpness``
        per seed (Keskar et al. 2017 Metric 2.1 on the grid), to see whether the picture depends on the seed.
        ``callback(k, tile)`` gets the tiles of the k-th seed; other options go to :meth:`plane`.
        """
        return hessian_api.seed_spread(self, seeds, directions=directions, callback=callback, cancel=cancel,
                                       **plane_options)

    @property
    def moved(self) -> list:
        """Names of the parameters that move (``params``), in ``named_parameters()`` order."""
        return select_params(unwrap(self.model), self.params)[0]

    @property
    def num_parameters(self) -> int:
        """How many scalars move: the dimension of every direction and of the Hessian."""
        named = dict(unwrap(self.model).named_parameters())
        return sum(named[n].numel() for n in self.moved)

    def _kind_options(self, spec, cancel):
        # the Hessian kind needs what the others do not: the loss, the data, and the cancel flag of the caller
        return {"objective": self.objective, "data": self.data, "cancel": cancel} if spec == "hessian" else {}

    def __repr__(self):
        return (f"Landscape(model={type(self.model).__name__}, device={self.device}, "
                f"data={self.data.describe()})")


def _timings(t_setup, t_total, points):
    t_eval = max(t_total - t_setup, 1e-12)
    return {"setup_s": round(t_setup, 6), "evaluate_s": round(t_eval, 6), "total_s": round(t_total, 6),
            "points": int(points), "points_per_s": round(points / t_eval, 3)}


def _bn_recompute_hook(private, data, objective):
    """Re-estimate BatchNorm running statistics at the current point: cumulative averages over one train-mode
    pass (``torch.optim.swa_utils.update_bn``), because the interpolated weights never saw their own statistics."""
    bns = [m for m in private.module.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return None

    def hook():
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        private.module.train()
        try:
            with torch.no_grad():
                for x, _y, _n in data.batches(private.device):
                    objective.forward(private.module, x)
        finally:
            private.module.eval()
            for m, mo in zip(bns, momenta):
                m.momentum = mo
    return hook
