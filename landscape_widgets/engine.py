"""The engine: a call becomes a :class:`Plan`, an executor evaluates its points, the driver runs its tiles.

    model, loss, data (:class:`Problem`) -> directions -> :class:`Plan` -> executor -> driver -> losses + record

With metrics (``Objective.metrics``) every executor computes ``[loss, m_1, ..., m_M]`` per point from one forward
pass and :func:`execute` returns ``[points, 1 + M]``; :func:`split_values` parts the losses from the metrics.

Executors (:mod:`~landscape_widgets.executor`): the per-point loop, vmap-batched points and Dask workers, chosen by
:mod:`~landscape_widgets.chooser`; an executor's run has ``tiles(coords, todo)`` and ``record()``, which returns a
:class:`~landscape_widgets.driver.Execution`.  The store, progress and cancellation live in the driver
(:func:`~landscape_widgets.driver.run_tiles`), once.  :meth:`Problem.to_worker` and :meth:`Plan.to_worker` are what
an executor sends to another process, and what is rebuilt there.
"""
from __future__ import annotations

import copy
import dataclasses
import platform
from dataclasses import dataclass, field

import numpy as np
import torch

from ._model import PrivateModel, check_model, resolve_device, select_params, unwrap
from ._version import __version__
from .chooser import choose, executor_for
from .data import (DataChangesWarning, DataSource, changes_message, kept_rng, repeat_tolerance, same_loss, to_device,
                   warn_user)
from .driver import run_tiles
from .loop import Moving, PointEvaluator
from .objective import Objective
from .store import open_store, run_settings


@dataclass
class Problem:
    """What every computation needs: the model, how a batch becomes a loss, the data, which parameters move and
    the device.  :meth:`private` is this problem's private copy of the model, refreshed from the user's weights."""
    model: torch.nn.Module
    objective: Objective
    data: DataSource
    params: object
    device: torch.device
    tune_cache: dict = field(default_factory=dict)  # evaluator="auto"'s choices, kept for the next call
    # the Hessian's extreme eigenvalues and trace, per weights fingerprint (hessian.api): a trust panel of the same
    # weights costs only its curvature products
    hessian_facts: dict = field(default_factory=dict)
    _copy: PrivateModel = field(default=None, repr=False)

    @property
    def loss_fn(self):
        return self.objective.loss_fn

    @property
    def batch_loss(self):
        return self.objective.batch_loss

    def private(self) -> PrivateModel:
        """The private copy, holding the user's current weights (made on first use, refreshed after)."""
        if self._copy is None:
            self._copy = PrivateModel(self.model, self.device, params=self.params)
        else:
            self._copy.refresh()
        return self._copy

    def copy(self) -> "Problem":
        """The same problem with a private copy of its own (a widget's worker thread never shares one)."""
        return Problem(self.model, self.objective, self.data, self.params, self.device, self.tune_cache,
                       self.hessian_facts)

    def on(self, data, hessian_facts=None) -> "Problem":
        """The same problem on other data (a subset for a preview): the private copy and the caches are shared,
        except the Hessian facts, which depend on the data (``hessian_facts``: those of that data, else none)."""
        return Problem(self.model, self.objective, data, self.params, self.device, self.tune_cache,
                       {} if hessian_facts is None else hessian_facts, self.private())

    def fingerprint(self) -> str:
        """SHA-256 of the moved weights as they are now."""
        return self.private().fingerprint()

    def to_worker(self, *, factory=None, device=None) -> "ShippedProblem":
        """This problem as it travels to another process (pickled): the model's original module on the CPU (a
        compiled wrapper does not travel, and the worker may lack this device), the loss, the metrics and the data
        (held in memory: on the CPU), or instead ``factory``, a picklable callable that builds ``(model, loss_fn,
        data)`` there; with the weights' fingerprint, which the rebuilt problem must match.  ``device``: the
        worker's (None: CUDA where it has one)."""
        shipped = ShippedProblem(factory=factory, device=device, batch_loss=self.batch_loss,
                                 metrics=self.objective.metrics, params=self.params,
                                 fingerprint=(self._copy or self.private()).fingerprint())  # the weights in use
        if factory is None:
            shipped.model = copy.deepcopy(unwrap(self.model)).to("cpu")
            shipped.loss_fn = self.loss_fn
            shipped.data = self.data.raw if self.data.single is None else to_device(self.data.raw, "cpu")
        return shipped

    def moved(self) -> list:
        return select_params(unwrap(self.model), self.params)[0]

    def first_checks(self, private, plan=None):
        """Once per data source, at its first evaluation: the batch-mean check of a plain loss callable
        (:meth:`~landscape_widgets.objective.Objective.check_mean`, on the first batch) and, for data not held in
        memory, the loss at one point of ``plan`` (the model's weights where it has them, else its first point; no
        plan: the model's weights) on one pass under other random seeds: a shuffle, an augmentation or worker seeds
        drawn from the global RNGs then differ.  :meth:`compare_passes` compares it with the plan's own value there
        (a pass under the caller's random state).  Returns that :class:`Pass` (None for data in memory)."""
        data = self.data
        if data.checked:
            return None
        data.checked = True  # a concurrent computation (a widget's thread) does not check again
        try:
            if data.in_memory:
                if not self.objective.known_mean:
                    check_first_batch(self, private)
                return None
            with kept_rng():  # the seeds drawn from the caller's state, which is then put back
                seed = int(torch.randint(2 ** 62, ()))
                with kept_rng(seed + 1):
                    return check_pass(self, private, plan, check_row(plan), check_mean=True)
        except BaseException:
            data.checked = False  # the data or the loss failed (the computation says why): the next one checks
            raise

    def compare_passes(self, private, first, plan=None, values=None, same_path=False) -> None:
        """Warn (:class:`~landscape_widgets.data.DataChangesWarning`) when the pass ``first`` and the plan's own
        value at the same point (``values``; None: one more pass) differ beyond rounding.  A value of another
        evaluator than this process's loop (``same_path`` False) may differ by its rounding alone (TF32 kernels),
        so a difference is confirmed by one more loop pass first."""
        known = None
        if values is not None and first.row is not None:
            v = np.asarray(values, dtype=np.float64)
            known = float(v[first.row, 0] if v.ndim == 2 else v[first.row])
            if same_loss(first.loss, known, first.rtol, first.scale):
                return
        if known is None or not same_path:
            known = check_pass(self, private, plan, first.row).loss
            if same_loss(first.loss, known, first.rtol, first.scale):
                return
        where = "at the model's weights" if first.at_model else "at the same point"
        warn_user(changes_message(known, first.loss, first.rtol, where), DataChangesWarning)

    def check_data(self) -> None:
        """:meth:`first_checks` and :meth:`compare_passes` for a computation without a plan (the Hessian's)."""
        if self.data.checked:
            return
        private = self.private()
        first = self.first_checks(private)
        if first is not None:
            self.compare_passes(private, first)

    def describe(self, private, **extra) -> dict:
        """The provenance every result carries in ``meta``."""
        meta = {"library": "landscape_widgets", "version": __version__, "torch": torch.__version__,
                "python": platform.python_version(), "device": str(self.device),
                "num_parameters": private.num_parameters, **private.describe_params(),
                "model_sha256": private.fingerprint(), "model_class": type(unwrap(self.model)).__name__,
                "loss": self.objective.mode, "metrics": list(self.objective.metric_names)}
        meta.update(extra)
        meta["data"] = self.data.describe()
        return meta


@dataclass
class Plan:
    """Points ``theta + sum_k coords[:, k] d_k`` of one call (``kind``: "plane", "line", "interpolation", ...).

    ``buffer_dirs`` move floating buffers along the same coordinates; ``buffers="recompute"`` re-estimates
    BatchNorm statistics at every point instead; ``evaluator`` is a name of ``chooser.EVALUATORS`` or an
    :class:`~landscape_widgets.executor.Executor`."""
    kind: str
    private: PrivateModel
    dirs: list
    coords: np.ndarray
    tile_size: int
    buffer_dirs: dict = None
    buffers: str = None
    evaluator: object = "auto"
    executor: object = field(init=False)  # what ``evaluator`` means on this device (chooser.choose), resolved once

    def __post_init__(self):
        self.coords = np.asarray(self.coords, dtype=np.float64)
        self.executor = choose(self.evaluator, self.private.device, buffers=self.buffers)

    def point_hook(self, problem):
        """What runs after each point is written (BatchNorm re-estimation with ``buffers="recompute"``), or None."""
        if self.buffers != "recompute":
            return None
        return bn_recompute_hook(self.private, problem.data, problem.objective)

    def to_worker(self) -> "ShippedPlan":
        """This plan as it travels to another process (pickled): its kind, its directions on the CPU, its buffer
        settings and its ``evaluator`` (chosen again there, on the worker's device); the points travel per tile."""
        def cpu(t):
            return t.detach().to("cpu") if isinstance(t, torch.Tensor) else t

        return ShippedPlan(self.kind, [{n: cpu(t) for n, t in d.items()} for d in self.dirs],
                           None if self.buffer_dirs is None else
                           {n: [cpu(t) for t in ts] for n, ts in self.buffer_dirs.items()},
                           self.buffers, self.evaluator)

    def moving(self) -> list:
        """The private copy's tensors that move, with their base values and one direction (or None) per axis."""
        private = self.private
        out = []
        for n in private.names:
            ds = [d[n] if d[n].count_nonzero() else None for d in self.dirs]
            if any(t is not None for t in ds):
                out.append(Moving(private.params[n], private.base[n], ds))
        for n, bd in (self.buffer_dirs or {}).items():
            out.append(Moving(private.buffers[n], private.base_buffers[n], bd))
        return out


@dataclass
class ShippedProblem:
    """A :class:`Problem` on its way to another process (:meth:`Problem.to_worker`); :meth:`build` makes it there."""
    factory: object
    device: object
    batch_loss: object
    metrics: dict
    params: object
    fingerprint: str
    model: object = None
    loss_fn: object = None
    data: object = None

    def build(self) -> Problem:
        """The problem in this process, from the shipped objects or the factory; refuses other weights."""
        model, loss_fn, data = self.model, self.loss_fn, self.data
        if self.factory is not None:
            built = self.factory()
            if not (isinstance(built, (tuple, list)) and len(built) == 3):
                raise TypeError("the worker factory must return (model, loss_fn, data)")
            model, loss_fn, data = built
        check_model(model)
        objective = Objective(loss_fn, self.batch_loss, self.metrics)
        problem = Problem(model, objective, DataSource(data, pairs=objective.mode == "loss_fn"), self.params,
                          resolve_device(self.device))
        if problem.fingerprint() != self.fingerprint:
            raise ValueError("the model built on the worker has other weights than the kernel's model (fingerprint "
                             "mismatch); make the factory load the same weights")
        return problem


@dataclass
class ShippedPlan:
    """A :class:`Plan` on its way to another process (:meth:`Plan.to_worker`); :meth:`build` makes it there."""
    kind: str
    dirs: list
    buffer_dirs: dict
    buffers: str
    evaluator: object

    def build(self, problem: Problem) -> Plan:
        """The plan on ``problem``'s private copy and device, without points (they come per tile)."""
        private = problem.private()
        dev = private.device
        dirs = [{n: t.to(dev) for n, t in d.items()} for d in self.dirs]
        bdirs = None if self.buffer_dirs is None else \
            {n: [None if t is None else t.to(dev) for t in ts] for n, ts in self.buffer_dirs.items()}
        return Plan(self.kind, private, dirs, np.zeros((0, len(dirs))), tile_size=1, buffer_dirs=bdirs,
                    buffers=self.buffers, evaluator=self.evaluator)


def execute(problem: Problem, plan: Plan, *, client=None, callback=None, cancel=None, progress=False, desc=None,
            store=None):
    """Run ``plan``'s tiles through its executor, or ``client``'s (:func:`~landscape_widgets.chooser.executor_for`),
    resumably through the store directory ``store``; returns the losses (flat, in ``plan.coords`` order; with
    metrics ``[points, 1 + M]``, see :func:`split_values`) and the :class:`~landscape_widgets.driver.Execution`."""
    first = problem.first_checks(plan.private, plan)
    tiles = None
    if store is not None:
        tiles = open_store(store, run_settings(plan.kind, plan.private, problem.data, problem.objective, plan.dirs,
                                               plan.coords, plan.tile_size, buffer_dirs=plan.buffer_dirs,
                                               buffers=plan.buffers))
    executor = executor_for(plan, client)
    same_path = tiles is None and executor.loop_arithmetic  # the check pass's own arithmetic
    try:
        run = executor.start(problem, plan)
        values = run_tiles(len(plan.coords), plan.tile_size, lambda todo: run.tiles(plan.coords, todo),
                           on_tile=callback, cancel=cancel, progress=progress, desc=desc or plan.kind, store=tiles,
                           metrics=problem.objective.metric_names)
    except BaseException:
        if first is not None:
            problem.data.checked = False  # cancelled or failed: the next computation checks
        raise
    if first is not None:
        problem.compare_passes(plan.private, first, plan, values, same_path)
    done = run.record()
    return values, (done if tiles is None else dataclasses.replace(done, store=tiles.info()))


@dataclass
class Pass:
    """The loss at one point by one pass over the data: ``row`` of the plan's coordinates (None: no plan, the
    model's weights), whether the point is the model's weights, the mean size of the batch losses (the scale of
    their rounding) and the relative tolerance of the dtypes (:func:`~landscape_widgets.data.repeat_tolerance`)."""
    loss: float
    row: int = None
    at_model: bool = True
    scale: float = 0.0
    rtol: float = 1e-4


def check_row(plan):
    """The point of ``plan`` that the data check evaluates: the model's weights (every coordinate 0, unless BatchNorm
    statistics are re-estimated there), else the first point; None without a plan or points."""
    if plan is None or not len(plan.coords):
        return None
    if plan.buffers != "recompute":
        rows = np.flatnonzero(~np.asarray(plan.coords).any(axis=1))
        if len(rows):
            return int(rows[0])
    return 0


def check_first_batch(problem: Problem, private) -> None:
    """The batch-mean check on the first batch, at the private copy's weights."""
    batches = problem.data.batches(private.device)
    try:
        x, y, n = next(batches)
    finally:
        batches.close()
    with torch.inference_mode():
        problem.objective.check_mean(private.module, x, y, n)


def check_pass(problem: Problem, private, plan, row, *, check_mean=False) -> Pass:
    """The loss at ``plan``'s point ``row`` (None: the model's weights) by one pass over the data with the per-point
    loop; ``check_mean``: the batch-mean check on the first batch too."""
    dtypes = {p.dtype for p in private.params.values()}
    at_model = row is None or (plan.buffers != "recompute" and not np.asarray(plan.coords)[row].any())
    if not at_model:
        if check_mean and not problem.objective.known_mean:
            check_first_batch(problem, private)
        ev = PointEvaluator(private, problem.data, problem.objective, plan.moving(),
                            point_hook=plan.point_hook(problem))
        (_start, _stop, values), = ev.tiles(plan.coords, [(row, row + 1)])
        return Pass(float(values[0, 0]), row, False, 0.0, repeat_tolerance(dtypes))
    # the model's weights: a plain pass, summed as the loop sums it (the sample-weighted mean of the batch losses in
    # float64), which also gives the batch losses' size and the first batch for the batch-mean check
    acc = scale = 0.0
    total = 0
    with torch.inference_mode():
        for k, (x, y, n) in enumerate(problem.data.batches(private.device)):
            if k == 0 and check_mean:
                problem.objective.check_mean(private.module, x, y, n)
            v = problem.objective(private.module, x, y).detach()
            dtypes.add(v.dtype)
            acc = acc + v.double() * n
            scale = scale + v.double().abs() * n
            total += n
    return Pass(float(acc / total), row, True, float(scale / total), repeat_tolerance(dtypes))


def split_values(values, names) -> tuple:
    """``(losses, {name: values})`` from what :func:`execute` returns: ``[points]`` losses without metrics,
    ``[points, 1 + M]`` with the metrics ``names`` after the loss."""
    values = np.asarray(values, dtype=np.float64)
    if not names:
        return values, {}
    return (np.ascontiguousarray(values[:, 0]),
            {n: np.ascontiguousarray(values[:, 1 + k]) for k, n in enumerate(names)})


def bn_recompute_hook(private, data, objective):
    """Re-estimate BatchNorm running statistics at the current point: cumulative averages over one train-mode
    pass (``torch.optim.swa_utils.update_bn``), because the interpolated weights never saw their own statistics."""
    bns = [m for m in private.module.modules()
           if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
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
