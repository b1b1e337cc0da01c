"""Evaluate the loss at many points ``theta + sum_k c_k * d_k`` of a private model copy.

The loop writes each point into the copy's own tensors in place (views of one flat buffer: K kernels a point) and runs
the forward pass under ``torch.inference_mode``: on a CPU this beats batching points with ``vmap``, whose batched
matmuls lose to one large GEMM per point (measured in ``benchmarks/plane.py``).  Two exact accelerations:

- *input-affine layers*: a Linear/Conv layer that receives the data itself is affine in its weights, so
  ``f(x; W0 + sum_k c_k D_k) = f(x; W0) + sum_k c_k f(x; D_k)`` is precomputed once per batch and each point costs
  an axpy instead of a GEMM (the first layer of an MLP is a third of its FLOPs);
- *memory layout*: convolutional models run channels-last on CPUs (oneDNN's channels-last kernels are ~1.8x
  faster for small images; a fixed rule rather than a timing keeps results bitwise reproducible);
- *micro-batches*: when one batch's activations outgrow the CPU's caches (the digits CNN: 15 MB), it is evaluated
  in chunks of a few MiB of activations and the chunk losses are averaged with their sample weights -- the
  library's own definition of the loss over batches.  Used only when that equals the full-batch loss at the
  model's weights (a model or loss that couples the samples of a batch keeps the full batch).

With a DataLoader the data are streamed once per tile of points, not once per point.  Points are grouped in tiles:
after each tile a callback receives the finished values and a cooperative cancel flag is checked, which is what
the widgets build on.  A tile's values are ``[points, objective.width]``: the loss and any metrics of the same
forward pass (:meth:`~landscape_widgets.objective.Objective.evaluate`), each a sample-weighted mean over batches.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .data import batch_tensors
from .driver import Execution, run_points
from .objective import as_objective, call_model

_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
WARM_BYTES = 30 * 2 ** 20  # below glibc's DEFAULT_MMAP_THRESHOLD_MAX (32 MiB on 64-bit)
_warmed = False
SHORTCUT_MIN_FAN_IN = 6  # per coordinate: measured on the digits MLP (64 inputs, a gain) and CNN (9, a loss)
MICRO_MIN_BYTES = 8 * 2 ** 20   # micro-batch only when the batch's largest activation is bigger than this ...
MICRO_BYTES = 4 * 2 ** 20       # ... into chunks whose largest activation is about this (caches: 2 MiB L2 per core)
MICRO_MIN_SAMPLES = 64          # and never into chunks smaller than this (per-call overheads)
MICRO_RTOL = 1e-5               # the chunked loss must equal the full-batch loss to float32 rounding


def warm_allocator(device) -> None:
    """Once per process, on CPUs with glibc: allocate and free one 30 MiB block.

    A per-point loop allocates and frees the same activations every point.  glibc serves blocks above its
    dynamic mmap threshold (128 KiB at start; raised to the size of the largest mmapped block freed so far, up to
    32 MiB) with mmap and returns them at free, so every point page-faults them in again: thousands of faults
    per point on the digits CNN (7 and 15 MB activations), 40-60 % of its time.  Freeing one mmapped 30 MiB block
    raises the threshold as glibc's own heuristic would after any such tensor (``mallopt`` would instead switch
    the heuristic off for good); nothing is set and nothing needs restoring.  Other allocators ignore it."""
    global _warmed
    if _warmed or torch.device(device).type != "cpu":
        return
    _warmed = True
    import platform
    if platform.libc_ver()[0] == "glibc":
        block = torch.empty(WARM_BYTES, dtype=torch.uint8)  # untouched: no page is faulted in
        del block


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


@dataclass
class Moving:
    """A tensor of the private copy that moves on the grid: ``target = base + sum_k c_k * dirs[k]``."""
    target: torch.Tensor
    base: torch.Tensor
    dirs: list  # one tensor or None (zero) per coordinate


class PointEvaluator:
    """Loss (and metrics: ``objective.width`` values a point) at points given by coordinates ``coords[P, K]``
    along ``K`` directions."""

    def __init__(self, private, data, objective, moving: list, *, point_hook=None, accelerate=True):
        self.private = private
        self.data = data
        self.objective = as_objective(objective)  # or a plain loss_fn(outputs, targets)
        self.moving = moving
        self.point_hook = point_hook  # e.g. BatchNorm re-estimation, run after the point is written
        self.accelerate = accelerate and point_hook is None
        self.coords = ()  # the point being evaluated, read by the input-affine shortcuts
        self._plan = None  # how a point is written (_FlatWrites), made on the first point of a run
        self._micro = None  # [(x, y, n)] chunks of the one batch while a run micro-batches
        self._probes = {}  # name -> (key, value): see _probe

    def _plan_writes(self):
        """The tensors a point writes, as views of one flat buffer per dtype and device, so that a point costs K + 1
        kernels however many tensors the model has (per-tensor writes were K + 1 kernels per tensor: 12 per
        digits-MLP point for its 4 tensors, 5 % of its time).  Every moving tensor is written, also those an
        input-affine shortcut stands in for: a tensor may have other users (tied weights, functional reuse)."""
        self._release_plan()
        self._plan = _FlatWrites(self.moving) if self.moving else None

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

    def _eval_tile(self, coords):
        """``[len(coords), objective.width]``: the loss and the metrics at each point."""
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
                        values = self._eval_tile(coords[start:stop])
                    yield start, stop, values
        finally:
            self.private.reset()

    def record(self, requested="loop") -> Execution:
        """What this executor did (the per-point loop)."""
        return Execution("loop", requested)

    def run(self, coords: np.ndarray, *, tile_size=None, on_tile=None, cancel=None, progress=False, desc="landscape"):
        """Losses at ``coords`` through the driver, in tiles of ``tile_size`` points (default: one tile); with
        metrics ``[points, 1 + M]`` (:func:`~landscape_widgets.driver.run_tiles`)."""
        return run_points(self, coords, tile_size=tile_size, on_tile=on_tile, cancel=cancel, progress=progress,
                          desc=desc, metrics=self.objective.metric_names)

    # -- exact accelerations ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _shortcuts(self, x):
        """Replace the forward of input-affine layers by precomputed responses for this batch ``x``."""
        if not self.accelerate or not self.moving or getattr(self, "_shortcut_x", None) is x:
            yield  # nothing to do, or already patched for this batch by run() (one probe per run, not per tile)
            return
        by_tensor = {id(m.target): m for m in self.moving}
        patched = []
        try:
            for module, inp in self._layers_taking(x):
                mw = by_tensor.get(id(module.weight))
                mb = by_tensor.get(id(module.bias)) if module.bias is not None else None
                if mw is None and mb is None:
                    continue
                # per output element the layer costs 2 * fan_in flops, the shortcut K + 2 passes over memory:
                # it only pays for wide inputs (an MLP's first layer, fan_in 64), not for a 1x3x3 conv
                fan_in = module.weight[0].numel()
                if fan_in < SHORTCUT_MIN_FAN_IN * (len((mw or mb).dirs) + 1):
                    continue
                module.forward = _AffineShortcut(self, module, inp, mw, mb)
                patched.append(module)
            yield
        finally:
            for module in patched:
                del module.forward

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
        """``_input_layers`` (one traced forward), once per evaluator for its one in-memory batch."""
        if self.data.single is None:
            return _input_layers(self.private.module, self.objective, x)
        return self._probe("input layers", x, lambda: _input_layers(self.private.module, self.objective, x))

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
        return plan_micro_batches(self.private.module, self.objective, self._layout_input(x), y, n, with_metrics=True)

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


def plan_micro_batches(module, objective, x, y, n, *, min_samples=None, with_metrics=False):
    """``[(x_i, y_i, n_i)]``: the one in-memory batch cut into chunks whose largest activation is about
    ``MICRO_BYTES``, or None where that does not pay (small activations) or is not exact.  Exact means: at the
    module's current weights the sample-weighted mean of the chunk losses equals the full-batch loss (a model or
    loss that couples the samples of a batch, or takes only the whole batch, keeps it); ``with_metrics``: the
    objective's metrics too (a metric that is no mean over samples keeps the batch whole).  Runs forward passes
    only; the caller's grad mode applies."""
    objective = as_objective(objective)
    if objective.mode != "loss_fn" or not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)
                                           and len(x) == len(y) == n):
        return None  # only (inputs, targets) tensors can be cut by sample; a batch_loss may couple its parts
    largest = _largest_output_bytes(module, x)
    if largest <= MICRO_MIN_BYTES:
        return None
    size = max(MICRO_MIN_SAMPLES if min_samples is None else min_samples, int(MICRO_BYTES * n // largest))
    if 2 * size > n:
        return None
    chunks = [(x[i:i + size], y[i:i + size], len(y[i:i + size])) for i in range(0, n, size)]

    def loss(a, b):
        return float(objective(module, a, b))

    def values(a, b):
        return objective.evaluate(module, a, b).double().reshape(-1).cpu().numpy()

    if with_metrics and objective.metrics:
        full = values(x, y)
        try:
            parts = sum(values(a, b) * m for a, b, m in chunks) / n
        except Exception:  # noqa: BLE001 -- a model, loss or metric that only takes the whole batch keeps it
            return None
        # the loss as below; a metric that is NaN on the whole batch and in the mean of the chunks is the same NaN
        if not math.isclose(full[0], parts[0], rel_tol=MICRO_RTOL, abs_tol=MICRO_RTOL * 1e-3) or not np.allclose(
                parts[1:], full[1:], rtol=MICRO_RTOL, atol=MICRO_RTOL * 1e-3, equal_nan=True):
            return None
        return chunks
    full = loss(x, y)
    try:
        parts = sum(loss(a, b) * m for a, b, m in chunks) / n
    except Exception:  # noqa: BLE001 -- a model or loss that only takes the whole batch keeps it
        return None
    if not math.isclose(full, parts, rel_tol=MICRO_RTOL, abs_tol=MICRO_RTOL * 1e-3):
        return None
    return chunks


def _write_tensor(m, c):
    """``m.target = m.base + sum_k c_k m.dirs[k]``, in place (the order of operations the flat writes keep)."""
    m.target.copy_(m.base)
    for ck, dk in zip(c, m.dirs):
        if dk is not None and ck != 0.0:
            m.target.add_(dk, alpha=float(ck))


class _FlatWrites:
    """Moving tensors re-pointed (``.data``) at views of one flat buffer per (dtype, device), with their base and
    directions flattened in the same memory order: a point is ``flat = base + c_0 d_0`` then ``flat += c_k d_k``,
    the same arithmetic, in the same order, as writing each tensor (bitwise the same values).  Tensors whose layout
    is not dense (no flat view can stand in for them) are written one by one.  ``release`` gives every tensor its
    own storage back (the values are the caller's to restore)."""

    def __init__(self, moving):
        self.groups, self.single, self.swapped = [], [], []
        by_key = {}
        for m in moving:
            t = m.target
            dense = t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))
            (by_key.setdefault((t.dtype, t.device), []) if dense else self.single).append(m)
        for (dtype, device), ms in by_key.items():
            # every view starts 64-byte aligned, like a tensor of its own: kernels (oneDNN, MKL) pick their code
            # path, and with it the rounding, by alignment too
            align = max(1, 64 // torch.empty((), dtype=dtype).element_size())
            starts, n = [], 0
            for m in ms:
                starts.append(n)
                n += -(-m.target.numel() // align) * align
            k = max(len(m.dirs) for m in ms)
            flat = torch.zeros(n, dtype=dtype, device=device)
            base = torch.zeros(n, dtype=dtype, device=device)
            dirs = [None] * k
            for m, offset in zip(ms, starts):
                t = m.target
                view = flat.as_strided(t.size(), t.stride(), offset)
                seg = slice(offset, offset + t.numel())
                view.copy_(m.base)  # lay the values out in t's own memory order, then read them back flat
                base[seg] = flat[seg]
                for j, d in enumerate(m.dirs):
                    if d is None:
                        continue
                    if dirs[j] is None:
                        dirs[j] = torch.zeros(n, dtype=dtype, device=device)
                    view.copy_(d)
                    dirs[j][seg] = flat[seg]
                self.swapped.append((t, t.data))
                t.data = view
            self.groups.append((flat, base, dirs))

    def write(self, c):
        for flat, base, dirs in self.groups:
            first = True
            for ck, dk in zip(c, dirs):
                if dk is None or ck == 0.0:
                    continue
                if first:
                    torch.add(base, dk, alpha=float(ck), out=flat)
                    first = False
                else:
                    flat.add_(dk, alpha=float(ck))
            if first:
                flat.copy_(base)
        for m in self.single:
            _write_tensor(m, c)

    def release(self):
        for t, own in self.swapped:
            t.data = own
        self.swapped = []


class _AffineShortcut:
    """Forward of a Linear/Conv layer fed the batch ``x`` itself: its output is affine in (weight, bias), so
    ``y(c) = y0 + sum_k c_k y_k`` with ``y0 = f(x; W0, b0)`` and ``y_k = f(x; D_k, e_k)`` computed once."""

    def __init__(self, evaluator, module, x, mw, mb):  # x: the batch tensor the layer takes
        self.ev = evaluator
        self.module = module
        self.x = x
        self.moving = [m for m in (mw, mb) if m is not None]
        fn = module._conv_forward if isinstance(module, nn.modules.conv._ConvNd) else \
            (lambda inp, w, b: nn.functional.linear(inp, w, b))
        self.fn = fn
        k = len((mw or mb).dirs)
        base_w = mw.base if mw is not None else module.weight
        base_b = (mb.base if mb is not None else module.bias) if module.bias is not None else None
        self.y0 = fn(x, base_w, base_b)
        self.ys = []
        for j in range(k):
            dw = mw.dirs[j] if mw is not None else None
            db = mb.dirs[j] if mb is not None else None
            if dw is None and db is None:
                self.ys.append(None)
                continue
            w = dw if dw is not None else torch.zeros_like(base_w)
            self.ys.append(fn(x, w, db))
        self.out = torch.empty_like(self.y0)

    def __call__(self, inp, *args, **kwargs):
        if inp is not self.x or args or kwargs:  # another input: the layer's own forward on its written weights
            return type(self.module).forward(self.module, inp, *args, **kwargs)
        out = self.out
        first = True
        for ck, yk in zip(self.ev.coords, self.ys):
            if yk is None:
                continue
            if first:
                torch.add(self.y0, yk, alpha=float(ck), out=out)
                first = False
            elif ck != 0.0:
                out.add_(yk, alpha=float(ck))
        if first:
            out.copy_(self.y0)
        return out


def _input_layers(module, objective, x):
    """``[(layer, tensor)]``: Linear/Conv layers called with a tensor of the batch ``x`` itself (found by one traced
    forward of the objective, so that a ``batch_loss``'s own calls count too)."""
    ids = {id(t): t for t in batch_tensors(x)}
    found = {}

    def pre_hook(mod, args):
        if args and id(args[0]) in ids and mod not in found:
            found[mod] = ids[id(args[0])]

    layers = [m for m in module.modules() if type(m) in _AFFINE]
    if not layers or not ids:
        return []
    handles = [m.register_forward_pre_hook(pre_hook) for m in layers]
    try:
        objective.forward(module, x)
    finally:
        for h in handles:
            h.remove()
    return [(m, t) for m, t in found.items() if m.weight is not None]


def _largest_output_bytes(module, x) -> int:
    """Bytes of the largest tensor any submodule returns for the batch ``x`` (one traced forward)."""
    largest = [0]

    def hook(_mod, _args, out):
        if isinstance(out, torch.Tensor):
            largest[0] = max(largest[0], out.numel() * out.element_size())

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    try:
        call_model(module, x)
    finally:
        for h in handles:
            h.remove()
    return largest[0]


def grid_tile_size(ny: int, total: int, target: int = 64) -> int:
    """One or more whole rows per tile, about ``target`` points: small enough to stream and cancel, large enough
    to amortize (64 for the per-point loop; the batched GPU evaluator asks for more, see ``batched.TILE_POINTS``)."""
    rows = max(1, math.ceil(target / max(ny, 1)))
    return min(total, rows * ny)


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self):
        return time.perf_counter() - self.t0
