"""``Landscape``: the model, the loss and the data, bound together; the entry point of every computation.

Data flow: model -> directions -> plan -> executor -> result.  Each method takes the private, refreshed copy of the
user's weights (:meth:`~landscape_widgets.engine.Problem.private`), builds its directions, and hands a
:class:`~landscape_widgets.engine.Plan` to :func:`~landscape_widgets.engine.execute`.
"""
from __future__ import annotations

import copy as _copy
import numbers

import numpy as np
from torch import nn

from ._checks import axis, check_int, check_range, check_resolution, check_span
from ._model import check_model, resolve_device, select_params, state_from, unwrap
from .chooser import check_evaluator
from .data import DataSource
from .connect import connect as connect_models, loss_barrier, segment_ends
from .directions import KINDS, cosine, kind_of, line_axis, make_directions
from .engine import Plan, Problem, execute, split_values
from .driver import grid_tile_size
from .runtime import Timer
from .hessian import Spectrum, api as hessian_api
from .hessian.curvature_map import curvature_map as compute_curvature_map
from .hessian.operators import check_curvature
from .objective import Objective
from .results import Curve, CurvatureMap, Marks, SeedSpread, Surface

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

    ``metrics``: name -> callable, computed in the same forward passes as the loss and averaged over batches with
    the same sample weights (Li et al. 2018 record the accuracy beside the loss at every point): ``fn(outputs,
    targets) -> scalar`` with ``loss_fn``, ``fn(outputs, batch) -> scalar`` with the model's own loss (e.g.
    ``(out.logits.argmax(-1) == batch["labels"]).float().mean()``); not with ``batch_loss``, which keeps the outputs
    to itself.  Results carry them as ``.metrics`` (name -> array shaped like ``.losses``, in the order given).

    ``params``: which parameters move: None (default) those with ``requires_grad=True``, ``"all"``, an iterable of
    names, or a callable ``(name, tensor) -> bool``; every direction, the interpolation and every Hessian use this
    set, the others keep the model's values.  A parameter shared by several modules (tied weights) moves once and
    every use sees it.  A ``torch.compile``'d or ``DataParallel`` model is evaluated through its original module.
    The model itself is never modified.
    """

    def __init__(self, model: nn.Module, loss_fn=None, data=None, *, batch_loss=None, params=None, device=None,
                 metrics=None):
        check_model(model)
        self.objective = Objective(loss_fn, batch_loss, metrics)
        self.metrics = dict(self.objective.metrics)
        select_params(unwrap(model), params)  # a bad selection fails here, not at the first computation
        self.model = model
        self.loss_fn = loss_fn
        self.batch_loss = batch_loss
        self.params = params
        self.data = DataSource(data, pairs=self.objective.mode == "loss_fn")
        self.device = resolve_device(device)
        self.problem = Problem(model, self.objective, self.data, params, self.device)

    def _run(self, plan, *, callback, cancel, progress, desc, client=None, store=None, problem=None):
        """Evaluate ``plan`` here or on Dask workers (``client``), resumably through ``store``: the losses, the
        metrics (name -> values) and the executor's record."""
        problem = problem or self.problem
        values, done = execute(problem, plan, client=client, callback=callback, cancel=cancel, progress=progress,
                               desc=desc, store=store)
        losses, metrics = split_values(values, problem.objective.metric_names)
        return losses, metrics, done

    def _on_samples(self, samples, spread=None):
        """The problem on a fixed subset of ``samples`` samples (made once per size), or on all the data; with
        ``spread`` (a count >= 2) a list of the problems on that many disjoint subsets of that size instead, the
        first of them the one ``samples`` alone gives.  Each subset keeps its Hessian facts across calls."""
        if spread is not None:
            spread = check_int(spread, "spread", low=2, hint=" (how many disjoint subsets of `samples` samples)")
            if samples is None:
                raise ValueError("spread= needs samples=: pass the size of each subset, e.g. samples=256, spread=4 "
                                 "(the estimate on 4 disjoint subsets of 256 samples)")
        if samples is None:
            return self.problem
        samples = check_int(samples, "samples", low=1, hint=" (samples of a fixed random subset, or None for all)")
        subsets = self.__dict__.setdefault("_subsets", {})  # (samples, count) -> DataSources; shared by copies
        facts = self.__dict__.setdefault("_subset_facts", {})  # (samples, index) -> Hessian facts
        if spread is None:
            if (samples, None) not in subsets:
                subsets[samples, None] = [self.data.subset(samples)]
            data, = subsets[samples, None]
            if data is self.data:
                return self.problem
            return self.problem.on(data, hessian_facts=facts.setdefault((samples, 0), {}))
        if (samples, spread) not in subsets:
            subsets[samples, spread] = self.data.subsets(samples, spread)
        return [self.problem.on(d, hessian_facts=facts.setdefault((samples, k), {}))
                for k, d in enumerate(subsets[samples, spread])]

    # -- public API -------------------------------------------------------------------------------------------
    def copy(self) -> "Landscape":
        """The same model, loss, data and caches, with a private copy of the weights of its own: computations on
        the two (a widget's worker thread, the notebook) never share one."""
        clone = _copy.copy(self)
        clone.problem = self.problem.copy()
        return clone

    def loss(self) -> float:
        """The loss at the model's own weights."""
        plan = Plan("loss", self.problem.private(), [], np.zeros((1, 0)), tile_size=1, evaluator="loop")
        losses, _metrics = split_values(execute(self.problem, plan)[0], self.objective.metric_names)
        return float(losses[0])

    def interpolate(self, start, *, steps=51, span=(-0.5, 1.5), buffers="interpolate", progress=True,
                    callback=None, cancel=None, client=None, store=None, evaluator="auto") -> Curve:
        """Loss along theta(a) = (1 - a) theta_start + a theta_model (Goodfellow et al. 2015; Li et al. 2018 §3).

        ``buffers``: "interpolate" moves floating buffers (BatchNorm statistics) along the same line (Li et al.'s
        "states"), "model" keeps the model's, "recompute" re-estimates BatchNorm statistics at every point with one
        train-mode pass over the data (as SWA's ``update_bn``).  ``client``, ``store`` and ``evaluator``: as in
        :meth:`plane`.
        """
        steps = check_int(steps, "steps", low=2)
        check_evaluator(evaluator)
        a0, a1 = check_range(span, "span")
        if buffers not in BUFFER_MODES:
            raise ValueError(f"buffers={buffers!r} is not known; pass one of {', '.join(map(repr, BUFFER_MODES))}")
        timer = Timer()
        private = self.problem.private()
        start_state = state_from(start, private, need_buffers=(buffers == "interpolate"))
        # theta(a) = theta_model + (a - 1) (theta_model - theta_start): exact at a = 1, the model itself
        d = {n: private.base[n] - start_state[n] for n in private.names}
        buffer_dirs = None
        if buffers == "interpolate":
            buffer_dirs = {n: [private.base_buffers[n] - start_state[n]] for n in private.buffer_names}
        alphas = axis((a0, a1), steps)
        dist = float(sum((v.double() ** 2).sum() for v in d.values()) ** 0.5)
        losses, metrics, meta, done = self._evaluate(
            "interpolation", private, [d], (alphas - 1.0)[:, None], timer=timer, desc="interpolate",
            tile_size=max(1, -(-steps // 8)), buffer_dirs=buffer_dirs, buffers=buffers, evaluator=evaluator,
            run=dict(callback=callback, cancel=cancel, progress=progress, client=client, store=store),
            record=dict(buffers=buffers, distance=dist))
        # the loss barrier between the two models (a = 0 and a = 1), with the ends evaluated where the grid lacks them
        ends = segment_ends(alphas, losses, lambda at: self._points(private, [d], [[a - 1.0] for a in at],
                                                                    buffer_dirs, buffers))
        meta.update(loss_barrier(alphas, losses, ends))
        return Curve(alphas, losses, meta, execution=done, metrics=metrics,
                     models=Marks(["start", "model"], [0.0, 1.0], ends))

    def line(self, *, direction="random", normalization=None, ignore="biasbn", seed=0, steps=51, span=None,
             buffers=None, progress=True, callback=None, cancel=None, client=None, store=None,
             evaluator="auto") -> Curve:
        """Loss along theta + a d for one direction d (random Gaussian, filter-normalized by default; ``span=None``:
        -1..1).

        ``direction`` may be another model (a module or its ``state_dict()``): the line theta + a (theta_b - theta)
        in raw units (:mod:`~landscape_widgets.directions.models`), by default on ``steps`` points from about -0.25
        to 1.25 that include a = 0 (the model) and a = 1 (theta_b) exactly.  ``curve.models`` (also ``meta["models"]``)
        marks both with their losses, and ``curve.barrier`` (``meta["barrier"]``) is the loss barrier between them
        (:func:`~landscape_widgets.connect.loss_barrier`: the largest loss on the segment minus the mean of its
        ends; ``meta["barrier_alphas"]`` the points used).  ``buffers``: as in :meth:`plane`.
        ``client``, ``store`` and ``evaluator``: as in :meth:`plane`."""
        steps = check_int(steps, "steps", low=2)
        check_evaluator(evaluator)
        spans = None if span is None else check_span(span, "span", axes=1)
        timer = Timer()
        private = self.problem.private()
        kind = kind_of(direction, "direction")
        buffers, plan_buffers = _buffer_mode(buffers, kind)
        made = make_directions(direction, private, 1, argname="direction", seed=seed, normalization=normalization,
                               ignore=ignore, **self._needs(kind, None, cancel, progress),
                               **({"buffers": buffers} if kind.moves_buffers else {}))
        (d1,), dmeta = made.dirs, made.meta
        marks = made.kind.marks(dmeta)
        if spans is None and marks is not None:
            alphas = line_axis(steps)  # a = 0 and a = 1, the two models, are grid points
        else:
            (a0, a1), = spans or check_span(1.0, "span", axes=1)
            alphas = axis((a0, a1), steps)
        bdirs = made.buffer_dirs if buffers == "interpolate" else None
        losses, metrics, meta, done = self._evaluate(
            "line", private, [d1], alphas[:, None], timer=timer, desc="line", tile_size=max(1, -(-steps // 8)),
            buffer_dirs=bdirs, buffers=plan_buffers, evaluator=evaluator,
            run=dict(callback=callback, cancel=cancel, progress=progress, client=client, store=store),
            record=dmeta, after={} if buffers is None else {"buffers": buffers})
        if marks is not None:
            ends = segment_ends(alphas, losses, lambda at: self._points(private, [d1], [[a] for a in at], bdirs,
                                                                        plan_buffers))
            marks = marks.with_losses(ends)
            meta.update(loss_barrier(alphas, losses, ends))
        return Curve(alphas, losses, meta, execution=done, metrics=metrics, direction=d1, models=marks)

    def plane(self, *, directions="random", normalization=None, ignore="biasbn", seed=0, resolution=41, span=None,
              progress=True, callback=None, cancel=None, client=None, store=None, evaluator="auto",
              trajectory=None, trust=False, samples=None, buffers=None, curvature="hessian") -> Surface:
        """Loss on the plane theta + a d1 + b d2 (Li et al. 2018, arXiv 1712.09913, §4).

        ``losses[i, j] = L(theta + alphas[i] d1 + betas[j] d2)``.  ``callback(tile)`` receives every finished
        :class:`~landscape_widgets.driver.Tile` (whole rows of the grid); ``cancel`` (a ``threading.Event`` or a
        callable) is checked between tiles and raises :class:`~landscape_widgets.driver.Cancelled`.

        ``span=None`` is the direction kind's default: 1.0 for random and explicit directions; for
        ``directions="pca"`` (Li et al. §7, needs ``trajectory=lw.Trajectory``) a grid covering the projected path,
        which ``surf.path`` [n, 2] holds; for ``directions="hessian"`` (unit eigenvectors of lambda_max and of the
        most negative eigenvalue, Böttcher & Wheeler 2022; normalization "none") ``sqrt(2 max(L0, 0.1) / lambda_max)``
        on both axes, where the quadratic model doubles the loss (``surf.lambda_max``, ``surf.lambda_min``,
        ``surf.span_rule``, also in ``.meta``).
        ``directions`` may also be an earlier :class:`~landscape_widgets.Surface`: its directions, their kind's
        record, its grid (unless ``span`` is given) and its path, reused as they are (no eigen-solve or PCA again).
        ``trust=True`` adds the trust panel (:meth:`trust`) as ``surf.trust`` (also ``surf.meta["trust"]``).

        ``directions=(model_b, model_c)`` (modules or their ``state_dict()``) is the plane through the model and
        two others, in raw units (:mod:`~landscape_widgets.directions.models`: d1 = theta_b - theta, d2 the part of
        theta_c - theta orthogonal to d1): the model at (0, 0), theta_b at (1, 0), theta_c at (a_c, 1).
        ``surf.models`` (also ``surf.meta["models"]``) holds their ``labels``, ``coords`` and ``losses`` (each
        evaluated at its mark); ``span=None`` covers the three with a margin of a quarter of their extent.
        ``buffers`` says where BatchNorm statistics come from: "interpolate" (the default for planes through models)
        moves floating buffers with the same combination of the three models as the weights, so each model has its
        own at its mark; "model" keeps the model's (the default of every other kind, which has no buffer directions,
        so "interpolate" is an error there); "recompute" re-estimates them at every point with a train-mode pass over
        the data (as ``interpolate``).

        ``samples``: the loss on a fixed random subset of that many samples instead of all the data (a quick
        preview of a large data set; the same subset at every point and every call, drawn by a private generator;
        a DataLoader gives its first batches).  ``surf.data`` (``meta["data"]``) then says ``num_samples`` and
        ``subset_of``.  Hessian directions and the trust panel are then those of the loss on the same subset.
        ``curvature`` ("hessian", "ggn", "fisher"; :meth:`spectrum`): whose eigenvectors ``directions="hessian"``
        takes.

        Scale (docs/scaling.md): ``evaluator`` "auto" (vmap-batched points on CUDA, the per-point loop elsewhere),
        "loop", "vmap" or "vmap:<rule>" (a layer rule of :mod:`landscape_widgets.gpu` by name); ``client`` a
        ``dask.distributed.Client`` (or :class:`~landscape_widgets.distributed.Workers`)
        evaluates tiles on Dask workers; ``store`` a directory where finished tiles are kept, so a killed run
        resumes where it stopped.
        """
        nx, ny = check_resolution(resolution)
        check_evaluator(evaluator)
        problem = self._on_samples(samples)
        spans = None if span is None else check_span(span, "span", axes=2)
        timer = Timer()
        private = self.problem.private()
        kind = kind_of(directions)
        buffers, plan_buffers = _buffer_mode(buffers, kind)
        if trajectory is not None and "trajectory" not in kind.needs:
            users = [k.name for k in KINDS.values() if "trajectory" in k.needs]
            raise ValueError(f"trajectory= is only used by direction kinds that follow a path ({', '.join(users)}); "
                             f"pass directions={users[0]!r} or leave trajectory out")
        if curvature != "hessian":
            check_curvature(curvature)
            if kind.name != "hessian":
                raise ValueError(f"curvature={curvature!r} chooses whose eigenvectors directions='hessian' takes; "
                                 f"the {kind.name!r} directions have none: leave curvature out")
        made = make_directions(directions, private, 2, argname="directions", seed=seed, normalization=normalization,
                               ignore=ignore, **self._needs(kind, trajectory, cancel, progress, problem),
                               **({"curvature": curvature} if kind.name == "hessian" else {}),
                               **({"buffers": buffers} if kind.moves_buffers else {}))
        (d1, d2), dmeta = made.dirs, made.meta
        bdirs = made.buffer_dirs if buffers == "interpolate" else None
        (a0, a1), (b0, b1) = spans or made.span or check_span(1.0, "span", axes=2)
        alphas, betas = axis((a0, a1), nx), axis((b0, b1), ny)
        aa, bb = np.meshgrid(alphas, betas, indexing="ij")
        coords = np.stack([aa.ravel(), bb.ravel()], axis=1)

        def tiles(plan):  # whole rows per tile, sized for the executor the plan chose
            plan.tile_size = grid_tile_size(ny, len(coords), plan.executor.tile_points)

        marks = made.kind.marks(dmeta)
        losses, metrics, meta, done = self._evaluate(
            "plane", private, [d1, d2], coords, timer=timer, desc="plane", tile_size=tiles, buffer_dirs=bdirs,
            buffers=plan_buffers, evaluator=evaluator, problem=problem,
            run=dict(callback=callback, cancel=cancel, progress=progress, client=client, store=store),
            record=dict(dmeta, cosine=cosine(d1, d2)),
            # (a models surface reused: its marks, "model")
            after={"buffers": buffers or "model"} if buffers is not None or marks is not None else {})
        losses = losses.reshape(nx, ny)
        metrics = {n: v.reshape(nx, ny) for n, v in metrics.items()}
        if marks is not None:  # the loss at each model's mark, which the grid need not contain
            marks = marks.with_losses(self._points(private, [d1, d2], marks.coords, bdirs, plan_buffers,
                                                   problem=problem))
        dirs = tuple({n: t.detach().cpu() for n, t in d.items()} for d in (d1, d2))
        surface = Surface(alphas, betas, losses, dirs, meta, path=made.path, execution=done,
                          direction_meta=made.meta, metrics=metrics, models=marks,
                          curvatures=made.kind.curvatures(dmeta))
        if trust:  # the panel is computed from the surface's directions: the same plane, with it
            surface = surface.with_trust(self.trust(surface, cancel=cancel, progress=progress, samples=samples,
                                                    curvature=curvature))
        return surface

    def connect(self, model_b, *, bend=None, steps=31, buffers=None, epochs=10, lr=0.05, optimizer="sgd",
                momentum=0.9, batch_size=64, seed=0, progress=True, cancel=None, evaluator="auto", client=None,
                store=None) -> Curve:
        """The loss along Garipov et al.'s quadratic Bézier curve (arXiv 1802.10026, Eq. 2) from the model (t = 0)
        to ``model_b`` (t = 1), beside the straight line, with both loss barriers; ``bend=None`` trains the bend on
        this Landscape's data (Eq. 3).  ``curve.bend`` is the bend; ``evaluator``, ``client`` and ``store`` as in
        :meth:`plane` (the curve's points run on any executor, Dask workers included); see
        :func:`landscape_widgets.connect.connect` for every option."""
        return connect_models(self.problem, model_b, bend=bend, steps=steps, buffers=buffers, epochs=epochs, lr=lr,
                              optimizer=optimizer, momentum=momentum, batch_size=batch_size, seed=seed,
                              progress=progress, cancel=cancel, evaluator=evaluator, client=client, store=store)

    def _evaluate(self, kind, private, dirs, coords, *, timer, desc, tile_size, evaluator, run, record,
                  buffer_dirs=None, buffers=None, problem=None, after=None):
        """The one pipeline of every grid: directions -> plan -> executor -> values and provenance.

        ``tile_size``: points per tile, or a callable that sizes the plan's tiles once it has chosen its executor;
        ``run``: the caller's callback, cancel, progress, client and store; ``record``: what the result's ``meta``
        says of the directions (before the timings and the execution record), ``after``: what it says after them.
        Returns ``(losses, metrics, meta, execution)``."""
        problem = problem or self.problem
        t_dir = timer()
        plan = Plan(kind, private, dirs, coords, tile_size=1 if callable(tile_size) else tile_size,
                    buffer_dirs=buffer_dirs, buffers=buffers, evaluator=evaluator)
        if callable(tile_size):
            tile_size(plan)
        losses, metrics, done = self._run(plan, desc=desc, problem=problem, **run)
        meta = problem.describe(private, kind=kind, **record, timings=_timings(t_dir, timer(), len(coords)),
                                **done.meta())
        meta.update(after or {})
        return losses, metrics, meta, done

    def _points(self, private, dirs, coords, buffer_dirs=None, buffers=None, problem=None):
        """The losses at a few ``coords`` on ``dirs`` (the marks of models, a segment's ends), by the per-point loop."""
        problem = problem or self.problem
        plan = Plan("points", private, dirs, coords, tile_size=len(coords), buffer_dirs=buffer_dirs, buffers=buffers,
                    evaluator="loop")
        return [float(v) for v in split_values(execute(problem, plan)[0], problem.objective.metric_names)[0]]

    def spectrum(self, k=5, *, bottom=1, density=True, trace=True, seed=0, steps=90, runs=10, trace_samples=99,
                 trace_method="hutch++", tol=1e-6, backend="graph", callback=None, cancel=None,
                 progress=True, samples=None, spread=None, curvature="hessian", client=None) -> Spectrum:
        """Eigen-spectrum of the Hessian of the loss over all data (eval mode) at the model's weights.

        ``k`` largest and ``bottom`` smallest eigenvalues by Lanczos (ARPACK's convergence test, relative accuracy
        ``tol``), the trace by Hutch++ (``trace_method="hutchinson"`` for plain Rademacher) from ``trace_samples`` products
        (``trace=False`` skips it: ``trace`` is NaN then),
        and with ``density=True`` the spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019,
        arXiv 1901.10159) from ``runs`` runs of ``steps`` steps.  ``callback(dict(stage, done, total, hvps))``
        reports progress; ``cancel`` (Event or callable) is checked before every Hessian-vector product;
        ``progress`` shows a ``tqdm`` bar of the products with the current stage.

        ``samples``: the Hessian of the loss on a fixed random subset of that many samples (drawn as
        :meth:`plane` draws it; ``spec.data`` records it), which costs that fraction of a full-data product.
        ``spread`` (a count >= 2, with ``samples``): the eigenvalues and trace also on that many disjoint subsets of
        ``samples`` each (the density only on the first), in ``spec.spread`` with their mean and standard deviation
        (:meth:`Spectrum.describe_spread`: "λmax 0.92 ± 0.03 over 4 subsets of 256"), so a subset too small to trust
        shows itself; the other values are the first subset's.
        ``curvature``: "hessian" (default), "ggn" (the generalized Gauss-Newton ``J^T H_out J``, positive
        semi-definite for convex losses) or "fisher" (the empirical Fisher ``mean_i g_i g_i^T``); see
        :mod:`landscape_widgets.hessian.operators`.  ``client``: a ``dask.distributed.Client``; each worker computes
        the products on its shard of the data (:mod:`landscape_widgets.hessian.sharded`).
        """
        problems = self._on_samples(samples, spread)
        problem = problems[0] if isinstance(problems, list) else problems
        problem.check_data()
        return hessian_api.spectrum(problem, k, bottom=bottom, density=density, trace=trace, seed=seed, steps=steps,
                                    runs=runs, trace_samples=trace_samples, trace_method=trace_method, tol=tol,
                                    backend=backend, callback=callback, cancel=cancel, progress=progress,
                                    curvature=curvature, client=client,
                                    spread=problems if isinstance(problems, list) else None)

    def trust(self, surface, *, spectrum=None, seed=0, trace_samples=99, tol=1e-6, cancel=None,
              progress=True, callback=None, samples=None, spread=None, curvature="hessian", client=None) -> dict:
        """The trust panel of ``surface``: ``kappa`` (``d^T H d / ||d||^2`` per direction), ``lambda_max``,
        ``lambda_min``, ``trace_over_n`` (``tr(H)/N``, with its stderr) and ``eig_ratio``
        (``|lambda_min / lambda_max|``, Li et al. 2018 §6) and ``hides_saddle``: ``|lambda_min| >=
        saddle_threshold * lambda_max`` beyond both eigenvalues' error bounds while both kappas are > 0 (Böttcher &
        Wheeler 2022; :mod:`~landscape_widgets.hessian.trust` says why the threshold is 5 %).  Pass ``spectrum`` to reuse its eigenvalues and trace.
        ``callback(partial)`` receives the panel as it grows (``partial: True``): the kappas first, then with the
        eigenvalues.  ``surface`` may also be an :class:`~landscape_widgets.SeedSpread` of random planes: then the panel has
        ``kappa_per_seed`` [K][2] and ``kappa_range`` instead of ``kappa``, and ``hides_saddle_seeds``.
        ``samples``, ``spread``, ``curvature`` and ``client`` as in :meth:`spectrum`; the panel's ``data`` says what
        it was computed on and ``spread`` (with ``spread=``) holds lambda_max, lambda_min, the kappas and tr(H)/N on
        every subset.
        """
        spread_dirs = (lambda private: _spread_directions(surface, private)) if isinstance(surface, SeedSpread) \
            else None
        problems = self._on_samples(samples, spread)
        problem = problems[0] if isinstance(problems, list) else problems
        return hessian_api.trust(problem, surface, spread_directions=spread_dirs, spectrum=spectrum, seed=seed,
                                 trace_samples=trace_samples, tol=tol, cancel=cancel, progress=progress,
                                 callback=callback, curvature=curvature, client=client,
                                 spread=problems if isinstance(problems, list) else None)

    def curvature_map(self, surface, *, resolution=None, tol=1e-2, seed=0, progress=True, callback=None,
                      cancel=None, samples=None) -> CurvatureMap:
        """``|lambda_min / lambda_max|`` of the Hessian at every point of ``surface``'s plane (Li et al. 2018,
        arXiv 1712.09913, §6; their ``plot_hessian_eigen.py``): near 0 the landscape is locally convex.

        At ``theta + alphas[i] d1 + betas[j] d2`` (``surface``'s directions around the model's current weights, on
        the rectangle ``surface.span``) the largest and the smallest eigenvalue of the Hessian of the loss over all
        the data (eval mode, the moved parameters), each to relative accuracy ``tol`` (1e-2 as Li et al.;
        ``lambda_min`` relative to ``lambda_max - lambda_min``, see :mod:`landscape_widgets.hessian.curvature_map`).
        ``resolution``: points per axis, an int or ``(nx, ny)`` (None: the surface's, at most 11; each point costs
        one Lanczos run for both ends).  ``seed`` draws the start vectors; ``callback(dict(i, j, alpha, beta,
        lambda_max, lambda_min, ratio, loss, hvps, done, total))`` follows every finished point; ``cancel`` (Event or callable)
        is checked before every Hessian-vector product and raises :class:`~landscape_widgets.Cancelled`;
        ``progress`` shows a ``tqdm`` bar of the points.  A point whose loss or Hessian is not finite is NaN.
        ``samples``: the Hessians (and losses) on a fixed random subset of that many samples, as :meth:`spectrum`;
        ``cmap.data`` records it.
        """
        return compute_curvature_map(self._on_samples(samples), surface, resolution=resolution, tol=tol, seed=seed,
                                     progress=progress, callback=callback, cancel=cancel)

    def seed_spread(self, seeds=5, *, directions="random", callback=None, cancel=None, **plane_options) -> SeedSpread:
        """The same plane for ``seeds`` (a count or a list): per-cell ``median`` and ``iqr`` and one ``sharpness``
        per seed (Keskar et al. 2017 Metric 2.1 on the grid), to see whether the picture depends on the seed.
        ``callback(k, tile)`` gets the tiles of the k-th seed; other options go to :meth:`plane`.
        """
        if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
            seeds = list(range(check_int(seeds, "seeds", low=2, hint=" (how many seeds, or a list of seeds)")))
        elif isinstance(seeds, (list, tuple, range, np.ndarray)) and len(seeds) >= 2:
            seeds = [int(s) for s in seeds]
        else:
            raise ValueError(f"seeds must be a count >= 2 or a list of at least 2 seeds, got {seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds {seeds} repeat; pass distinct seeds")
        plane_options.setdefault("progress", False)
        timer = Timer()
        center = self.loss()
        surfaces = []
        for k, s in enumerate(seeds):
            tile_cb = None if callback is None else (lambda tile, k=k: callback(k, tile))
            surfaces.append(self.plane(directions=directions, seed=s, callback=tile_cb, cancel=cancel,
                                       **plane_options))
        first = surfaces[0]
        for s in surfaces[1:]:
            if not (np.array_equal(s.alphas, first.alphas) and np.array_equal(s.betas, first.betas)):
                raise ValueError("the seeds' planes have different grids (a span that depends on the seed); pass an "
                                 "explicit span so that cells compare")
        meta = {k: v for k, v in first.meta.items() if k not in ("seed", "timings", "cosine")}
        meta.update(kind="seed_spread", seeds=seeds, center_loss=center,
                    cosines=[s.cosine for s in surfaces],
                    sharpness_definition="100 * (max over the grid of L - L0) / (1 + L0) (Keskar et al. 2017, "
                                         "arXiv 1609.04836, Metric 2.1, box replaced by the plotted grid)",
                    total_s=round(timer(), 6))
        metrics = {n: np.stack([s.metrics[n] for s in surfaces]) for n in self.objective.metric_names}
        return SeedSpread(first.alphas, first.betas, seeds, np.stack([s.losses for s in surfaces]), meta,
                          metrics=metrics)

    @property
    def moved(self) -> list:
        """Names of the parameters that move (``params``), in ``named_parameters()`` order."""
        return self.problem.moved()

    @property
    def num_parameters(self) -> int:
        """How many scalars move: the dimension of every direction and of the Hessian."""
        named = dict(unwrap(self.model).named_parameters())
        return sum(named[n].numel() for n in self.moved)

    def _needs(self, kind, trajectory, cancel, progress=False, problem=None) -> dict:
        """What ``kind`` declares it needs (``DirectionKind.needs``), from this Landscape (or the ``problem`` on a
        subset of its data) and the call."""
        out = {}
        if "loss" in kind.needs:
            out.update(objective=self.objective, data=(problem or self.problem).data, cancel=cancel,
                       progress=progress)
        if "trajectory" in kind.needs:
            out["trajectory"] = trajectory
        return out

    def __repr__(self):
        return (f"Landscape(model={type(self.model).__name__}, device={self.device}, "
                f"data={self.data.describe()})")


def _spread_directions(spread, private):
    """d1, d2 of every seed's plane in turn, made again from the seed and the spread's settings as ``plane`` made
    them (a spread keeps no directions: K pairs of model-sized tensors)."""
    kind = KINDS.get(spread.direction_kind)
    if kind is None or not kind.seeded or spread.normalization is None:
        seeded = [k.name for k in KINDS.values() if k.seeded]
        raise ValueError(f"the trust panel of a seed spread needs directions made from the seed alone ({seeded}; "
                         f"this one has {spread.direction_kind!r}); pass a spread from Landscape.seed_spread("
                         f"directions={seeded[0]!r})")
    dirs = []
    for s in spread.seeds:
        made = make_directions(kind.name, private, 2, argname="directions", seed=int(s),
                               normalization=spread.normalization, ignore=spread.ignore)
        dirs += list(made.dirs)
    return dirs


def _buffer_mode(buffers, kind):
    """``buffers=`` for a direction kind: the mode (None: "interpolate" for kinds with buffer directions, else
    nothing recorded) and what the :class:`~landscape_widgets.engine.Plan` gets ("model" is the plan's default)."""
    if buffers is None:
        buffers = "interpolate" if kind.moves_buffers else None
    elif buffers not in BUFFER_MODES:
        raise ValueError(f"buffers={buffers!r} is not known; pass one of {', '.join(map(repr, BUFFER_MODES))}")
    elif buffers == "interpolate" and not kind.moves_buffers:
        raise ValueError(f"buffers='interpolate' needs buffer directions, which only lines and planes through other "
                         f"models have (directions=(model_b, model_c)); {kind.name!r} directions (and an earlier "
                         "surface's, reused) move no buffers: pass buffers='model' (their default) or 'recompute', or "
                         "the models themselves")
    return buffers, (None if buffers in (None, "model") else buffers)


def _timings(t_setup, t_total, points):
    t_eval = max(t_total - t_setup, 1e-12)
    return {"setup_s": round(t_setup, 6), "evaluate_s": round(t_eval, 6), "total_s": round(t_total, 6),
            "points": int(points), "points_per_s": round(points / t_eval, 3)}
