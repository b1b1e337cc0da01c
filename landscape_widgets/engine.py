"""The engine: a call becomes a :class:`Plan`, an executor evaluates its points, the driver runs its tiles.

    model, loss, data (:class:`Problem`) -> directions -> :class:`Plan` -> executor -> driver -> losses + record

With metrics (``Objective.metrics``) every executor computes ``[loss, m_1, ..., m_M]`` per point from one forward
pass and :func:`execute` returns ``[points, 1 + M]``; :func:`split_values` parts the losses from the metrics.

Executors: the per-point loop (:class:`~landscape_widgets.evaluator.PointEvaluator`), vmap-batched points
(:class:`~landscape_widgets.batched.VmapEvaluator`) and Dask workers
(:class:`~landscape_widgets.distributed.DaskExecutor`); each has ``tiles(coords, todo)`` and ``record()``, which
returns a :class:`~landscape_widgets.driver.Execution`.  The
store, progress and cancellation live in the driver (:func:`~landscape_widgets.driver.run_tiles`), once.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, field

import numpy as np
import torch

from ._model import PrivateModel, select_params, unwrap
from ._version import __version__
from .batched import VmapEvaluator
from .chooser import requested_rule, resolve_evaluator
from .data import DataSource
from .driver import run_tiles
from .evaluator import Moving, PointEvaluator
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

    def on(self, data) -> "Problem":
        """The same problem on other data (a subset for a preview): the private copy and the caches are shared,
        except the Hessian facts, which depend on the data."""
        return Problem(self.model, self.objective, data, self.params, self.device, self.tune_cache, {}, self._copy)

    def fingerprint(self) -> str:
        """SHA-256 of the moved weights as they are now."""
        return self.private().fingerprint()

    def moved(self) -> list:
        return select_params(unwrap(self.model), self.params)[0]

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
    BatchNorm statistics at every point instead; ``evaluator`` is "auto", "loop" or "vmap"."""
    kind: str
    private: PrivateModel
    dirs: list
    coords: np.ndarray
    tile_size: int
    buffer_dirs: dict = None
    buffers: str = None
    evaluator: str = "auto"
    executor: str = field(init=False)  # "loop" or "vmap": what ``evaluator`` means on this device, resolved once

    def __post_init__(self):
        self.coords = np.asarray(self.coords, dtype=np.float64)
        self.executor = resolve_evaluator(self.evaluator, self.private.device, buffers=self.buffers)

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


def local_executor(problem: Problem, plan: Plan):
    """The loop or the vmap executor for ``plan`` in this process (``plan.evaluator``; "auto": vmap on CUDA)."""
    kind = plan.executor
    hook = bn_recompute_hook(plan.private, problem.data, problem.objective) if plan.buffers == "recompute" else None
    if kind == "vmap":
        return VmapEvaluator(plan.private, problem.data, problem.objective, plan.moving(), point_hook=hook,
                             autotune=(plan.evaluator == "auto"), tune_cache=problem.tune_cache,
                             rule=requested_rule(plan.evaluator))
    return PointEvaluator(plan.private, problem.data, problem.objective, plan.moving(), point_hook=hook)


def execute(problem: Problem, plan: Plan, *, executor=None, callback=None, cancel=None, progress=False, desc=None,
            store=None):
    """Run ``plan``'s tiles through ``executor`` (default :func:`local_executor`), resumably through the store
    directory ``store``; returns the losses (flat, in ``plan.coords`` order; with metrics ``[points, 1 + M]``, see
    :func:`split_values`) and the :class:`~landscape_widgets.driver.Execution`."""
    tiles = None
    if store is not None:
        tiles = open_store(store, run_settings(plan.kind, plan.private, problem.data, problem.objective, plan.dirs,
                                               plan.coords, plan.tile_size, buffer_dirs=plan.buffer_dirs,
                                               buffers=plan.buffers))
    if executor is None:
        executor = local_executor(problem, plan)
    values = run_tiles(len(plan.coords), plan.tile_size, lambda todo: executor.tiles(plan.coords, todo),
                       on_tile=callback, cancel=cancel, progress=progress, desc=desc or plan.kind, store=tiles,
                       metrics=problem.objective.metric_names)
    done = executor.record(plan.evaluator if plan.evaluator != "auto" else plan.executor)
    if tiles is not None:
        done.store = tiles.info()
    return values, done


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
