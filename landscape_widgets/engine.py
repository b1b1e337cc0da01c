"""The engine: a call becomes a :class:`Plan`, an executor evaluates its points, the driver runs its tiles.

    model, loss, data (:class:`Problem`) -> directions -> :class:`Plan` -> executor -> driver -> losses + record

Executors: the per-point loop (:class:`~landscape_widgets.evaluator.PointEvaluator`), vmap-batched points
(:class:`~landscape_widgets.batched.VmapEvaluator`) and Dask workers
(:class:`~landscape_widgets.distributed.DaskExecutor`); each has ``tiles(coords, todo)`` and ``record()``.  The
store, progress and cancellation live in the driver (:func:`~landscape_widgets.driver.run_tiles`), once.
"""
from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ._model import PrivateModel, select_params, unwrap
from ._version import __version__
from .batched import VmapEvaluator, resolve_evaluator
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
        return Problem(self.model, self.objective, self.data, self.params, self.device, self.tune_cache)

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
                "loss": self.objective.mode}
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

    def __post_init__(self):
        self.coords = np.asarray(self.coords, dtype=np.float64)
        resolve_evaluator(self.evaluator, self.private.device, buffers=self.buffers)  # a bad name fails here

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
class Execution:
    """What an executor did: ``executor`` ("loop", "vmap" or "dask"), ``evaluator`` (the requested one, with the
    choice of "auto"), the vmap ``rule`` and the timings "auto" chose by, Dask's ``dask`` and the store's ``store``
    counts.  ``meta()`` is the flat form results keep in their ``meta`` (and files)."""
    executor: str
    evaluator: str
    rule: str = None
    timings: dict = None
    dask: dict = None
    store: dict = None

    def meta(self) -> dict:
        out = {"evaluator": self.evaluator}
        if self.timings is not None:
            out["evaluator_timings"] = self.timings
        if self.rule is not None:
            out["vmap_rule"] = self.rule
        if self.dask is not None:
            out["dask"] = self.dask
        if self.store is not None:
            out["store"] = self.store
        return out

    def as_dict(self) -> dict:
        return asdict(self)


def local_executor(problem: Problem, plan: Plan):
    """The loop or the vmap executor for ``plan`` in this process (``plan.evaluator``; "auto": vmap on CUDA)."""
    kind = resolve_evaluator(plan.evaluator, plan.private.device, buffers=plan.buffers)
    hook = bn_recompute_hook(plan.private, problem.data, problem.objective) if plan.buffers == "recompute" else None
    if kind == "vmap":
        return VmapEvaluator(plan.private, problem.data, problem.objective, plan.moving(), point_hook=hook,
                             autotune=(plan.evaluator == "auto"), tune_cache=problem.tune_cache)
    return PointEvaluator(plan.private, problem.data, problem.objective, plan.moving(), point_hook=hook)


def record(executor, plan: Plan) -> Execution:
    """The :class:`Execution` of a local executor after its run."""
    if isinstance(executor, VmapEvaluator):
        tuned = executor.autotune
        return Execution("loop" if executor.mode == "loop" else "vmap",
                         f"auto: {executor.mode or 'vmap'}" if tuned else "vmap",
                         rule=None if executor.mode == "loop" else executor.rule,
                         timings=executor.timings if tuned else None)
    return Execution("loop", "loop")


def execute(problem: Problem, plan: Plan, *, executor=None, callback=None, cancel=None, progress=False, desc=None,
            store=None):
    """Run ``plan``'s tiles through ``executor`` (default :func:`local_executor`), resumably through the store
    directory ``store``; returns the losses (flat, in ``plan.coords`` order) and the :class:`Execution`."""
    tiles = None
    if store is not None:
        tiles = open_store(store, run_settings(plan.kind, plan.private, problem.data, problem.objective, plan.dirs,
                                               plan.coords, plan.tile_size, buffer_dirs=plan.buffer_dirs,
                                               buffers=plan.buffers))
    local = executor is None
    if local:
        executor = local_executor(problem, plan)
    losses = run_tiles(len(plan.coords), plan.tile_size, lambda todo: executor.tiles(plan.coords, todo),
                       on_tile=callback, cancel=cancel, progress=progress, desc=desc or plan.kind, store=tiles)
    done = record(executor, plan) if local else executor.record()
    if tiles is not None:
        done.store = tiles.info()
    return losses, done


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
