"""The per-point loop: the loss at many points ``theta + sum_k c_k * d_k`` of a private model copy, one point at a
time.

The loop writes each point into the copy's own tensors in place and runs the forward pass under
``torch.inference_mode``: on a CPU this beats batching points with ``vmap``, whose batched matmuls lose to one large
GEMM per point (measured in ``benchmarks/plane.py``).  Its exact accelerations (flat writes, input-affine shortcuts,
micro-batches) are :mod:`~landscape_widgets.accelerations`; convolutional models also run channels-last on CPUs
(oneDNN's channels-last kernels are ~1.8x faster for small images; a fixed rule rather than a timing keeps results
bitwise reproducible).

With a DataLoader the data are streamed once per tile of points, not once per point.  A tile's values are
``[points, objective.width]``: the loss and any metrics of the same forward pass
(:meth:`~landscape_widgets.objective.Objective.evaluate`), each a sample-weighted mean over batches.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import accelerations
from .driver import Execution
from .executor import Executor
from .objective import as_objective
from .runtime import warm_allocator


class LoopExecutor(Executor):
    """The per-point loop (``evaluator="loop"``; "auto" off CUDA).  ``tuning``: where its accelerations start to
    pay (:class:`~landscape_widgets.accelerations.Tuning`; default: the measured constants); ``accelerate=False``
    runs the plain loop."""
    tile_points = 64
    loop_arithmetic = True

    def __init__(self, name="loop", *, tuning=None, accelerate=True):
        self.name, self.tuning, self.accelerate = name, tuning or accelerations.DEFAULT_TUNING, accelerate
        # other settings round differently from the loop the first data check runs
        self.loop_arithmetic = accelerate and self.tuning == accelerations.DEFAULT_TUNING

    def start(self, problem, plan):
        return PointEvaluator(plan.private, problem.data, problem.objective, plan.moving(),
                              point_hook=plan.point_hook(problem), accelerate=self.accelerate, tuning=self.tuning,
                              requested=self.name)


@dataclass
class Moving:
    """A tensor of the private copy that moves on the grid: ``target = base + sum_k c_k * dirs[k]``."""
    target: torch.Tensor
    base: torch.Tensor
    dirs: list  # one tensor or None (zero) per coordinate


class PointEvaluator:
    """Loss (and metrics: ``objective.width`` values a point) at points given by coordinates ``coords[P, K]``
    along ``K`` directions."""

    def __init__(self, private, data, objective, moving: list, *, point_hook=None, accelerate=True, tuning=None,
                 requested="loop"):
        self.private = private
        self.data = data
        self.objective = as_objective(objective)  # or a plain loss_fn(outputs, targets)
        self.moving = moving
        self.point_hook = point_hook  # e.g. BatchNorm re-estimation, run after the point is written
        self.accelerate = accelerate and point_hook is None
        self.tuning = tuning or accelerations.DEFAULT_TUNING
        self.requested = requested  # the evaluator setting the record names
        self.coords = ()  # the point being evaluated, read by the input-affine shortcuts
        self._plan = None  # how a point is written (FlatWrites), made on the first point of a run
        self._micro = None  # [(x, y, n)] chunks of the one batch while a run micro-batches
        self._probes = {}  # name -> (key, value): see _probe

    def _plan_writes(self):
        """The tensors a point writes, as views of one flat buffer per dtype and device, so that a point costs K + 1
        kernels however many tensors the model has (per-tensor writes were K + 1 kernels per tensor: 12 per
        digits-MLP point for its 4 tensors, 5 % of its time).  Every moving tensor is written, also those an
        input-affine shortcut stands in for: a tensor may have other users (tied weights, functional reuse)."""
        self._release_plan()
        self._plan = accelerations.FlatWrites(self.moving) if self.moving else None

    def release(self):
        """Give the private copy its own tensors back (after points evaluated outside :meth:`tiles`)."""
        self._release_plan()

    def _release_plan(self):
        plan, self._plan = self._plan, None
        if plan is not None:
            plan.release()

    @contextlib.contextmanager
    def _releasing_plan(self):
        try:
            yield
        finally:
            self._release_plan()  # the model's own tensors back (the caller then resets their values)

    def _write(self, c):
        self.coords = c
        if self._plan is None and self.moving:
            self._plan_writes()
        if self._plan is not None:
            self._plan.write(c)
        if self.point_hook is not None:
            self.point_hook()

    def _values_once(self, x, y):
        return self.objective.evaluate(self.private.module, x, y)

    def evaluate(self, coords):
        """``[len(coords), objective.width]``: the loss and the metrics at each point, in the run's accelerations
        (inside :meth:`tiles`) or plainly (grad mode is the caller's)."""
        width = self.objective.width
        out = np.empty((len(coords), width), dtype=np.float64)
        if self._micro is not None:  # chunks outside, points inside: each chunk's data stays in the cache
            parts = torch.empty((len(self._micro), len(coords), width), dtype=torch.float64,
                                device=self.private.device)
            for k, (x, y, _n) in enumerate(self._micro):
                for p, c in enumerate(coords):
                    self._write(c)
                    parts[k, p] = self._values_once(x, y)
            weights = torch.tensor([n for _x, _y, n in self._micro], dtype=torch.float64, device=parts.device)
            out[:] = ((parts * weights[:, None, None]).sum(0) / weights.sum()).cpu().numpy()
            return out
        if self.data.single is not None:
            (x, y, _n), = self.data.batches(self.private.device)
            x = self._layout_input(x)
            # copied into one preallocated tensor, not kept as one small tensor per point: those stayed alive
            # inside the heap's freed activation blocks, glibc could no longer reuse them and grew the heap by one
            # activation per point (page faults: 1240 instead of 1800 points/s on the digits MLP)
            vals = torch.empty((len(coords), width), dtype=torch.float64, device=self.private.device)
            with self._shortcuts(x):
                for p, c in enumerate(coords):
                    self._write(c)
                    vals[p] = self._values_once(x, y)
            out[:] = vals.cpu().numpy()
            return out
        if self.point_hook is not None:  # the hook needs the whole data per point: no interleaving
            for p, c in enumerate(coords):
                self._write(c)
                acc, total = 0.0, 0
                for x, y, n in self.data.batches(self.private.device):
                    acc = acc + self._values_once(x, y).detach().double() * n
                    total += n
                out[p] = (acc / total).cpu().numpy()
            return out
        acc = torch.zeros((len(coords), width), dtype=torch.float64, device=self.private.device)
        total = 0
        for x, y, n in self.data.batches(self.private.device):
            x = self._layout_input(x)
            with self._shortcuts(x):
                for p, c in enumerate(coords):
                    self._write(c)
                    acc[p] += self._values_once(x, y).detach().double() * n
            total += n
        out[:] = (acc / total).cpu().numpy()
        return out

    def tiles(self, coords: np.ndarray, todo):
        """The executor interface of :func:`~landscape_widgets.driver.run_tiles`: yields ``(start, stop, values)``
        for each ``(start, stop)`` of ``todo``.  The run's accelerations are set up once, around all tiles; the
        private copy gets its base weights back when the generator ends or is closed."""
        coords = np.asarray(coords, dtype=np.float64)
        warm_allocator(self.private.device)
        self.release()  # a plan made outside a run (points timed by "auto") predates this run's layout
        try:
            # layout outermost (its tensors are no inference tensors); the flat write views are released before it
            # is undone.  Grad mode is thread-local: it is switched per tile, never held across a yield
            with self._layout(), self._releasing_plan(), self._micro_batching(), self._run_shortcuts():
                for start, stop in todo:
                    with torch.inference_mode():
                        values = self.evaluate(coords[start:stop])
                    yield start, stop, values
        finally:
            self.private.reset()

    def record(self) -> Execution:
        """What this executor did (the per-point loop)."""
        return Execution("loop", self.requested)

    # -- exact accelerations ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _shortcuts(self, x):
        """Replace the forward of input-affine layers by precomputed responses for this batch ``x``."""
        if not self.accelerate or not self.moving or getattr(self, "_shortcut_x", None) is x:
            yield  # nothing to do, or already patched for this batch by tiles() (one probe per run, not per tile)
            return
        with accelerations.affine_shortcuts(self, self._layers_taking(x), self.moving, self.tuning):
            yield

    def _probe(self, name, x, make):
        """``make()``, once per evaluator for its one in-memory batch ``x`` (the weights at a run's start, the data
        and the loss are fixed for an evaluator, and a Dask worker runs one evaluator per tile): the probes a run
        would otherwise redo per tile or per run.  Keyed by the batch tensor itself, whose id alone may be reused."""
        key = (id(x), x.data_ptr() if isinstance(x, torch.Tensor) else None)
        hit = self._probes.get(name)
        if hit is None or hit[0] != key:
            hit = self._probes[name] = (key, make())
        return hit[1]

    def _layers_taking(self, x):
        """``input_layers`` (one traced forward), once per evaluator for its one in-memory batch."""
        if self.data.single is None:
            return accelerations.input_layers(self.private.module, self.objective, x)
        return self._probe("input layers", x,
                           lambda: accelerations.input_layers(self.private.module, self.objective, x))

    @contextlib.contextmanager
    def _run_shortcuts(self):
        """With one in-memory batch, patch the input-affine layers once for the whole run."""
        if self.data.single is None or not self.accelerate or self._micro is not None:
            yield
            return
        (x, _y, _n), = self.data.batches(self.private.device)
        with torch.inference_mode():
            x = self._layout_input(x)
            patching = self._shortcuts(x)
            patching.__enter__()  # the responses f(x; D_k) are computed here, once per run
        with contextlib.ExitStack() as stack:
            stack.push(patching)
            self._shortcut_x = x
            try:
                yield
            finally:
                self._shortcut_x = None

    @contextlib.contextmanager
    def _micro_batching(self):
        """Split the one in-memory batch into cache-sized chunks for this run, when that pays and is exact."""
        eligible = self.accelerate and self.private.device.type == "cpu" and self.data.single is not None
        self._micro = None
        if eligible:  # three forward passes, once per evaluator (_probe)
            (x, _y, _n), = self.data.batches(self.private.device)
            with torch.inference_mode():
                self._micro = self._probe("micro-batches", x, self._plan_micro_batches)
        try:
            yield
        finally:
            self._micro = None

    def _plan_micro_batches(self):
        (x, y, n), = self.data.batches(self.private.device)
        return accelerations.plan_micro_batches(self.private.module, self.objective, self._layout_input(x), y, n,
                                                with_metrics=True, tuning=self.tuning)

    @contextlib.contextmanager
    def _layout(self):
        """Run convolutional models in channels-last on CPUs."""
        self._channels_last = False
        module = self.private.module
        if not self.accelerate or self.private.device.type != "cpu" or self.data.single is None \
                or not any(isinstance(m, nn.Conv2d) for m in module.modules()):
            yield
            return
        x = self.data.single[0]
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            yield
            return
        # Always channels-last for a conv net on a CPU: a fixed rule, not a timing, so that the same call gives
        # bitwise the same values in every run and in every widget (oneDNN's channels-last kernels were 1.8x
        # faster on the digits CNN; benchmarks/RESULTS.md)
        module.to(memory_format=torch.channels_last)
        self._channels_last = True
        try:
            yield
        finally:
            module.to(memory_format=torch.contiguous_format)
            self._channels_last = False

    def _layout_input(self, x):
        if getattr(self, "_channels_last", False) and isinstance(x, torch.Tensor) and x.dim() == 4:
            return self._probe("channels-last input", x, lambda: x.contiguous(memory_format=torch.channels_last))
        return x
