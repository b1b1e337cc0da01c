"""The vmap executor: many grid points per forward pass with ``torch.func.vmap``.

A chunk of ``B`` points becomes one call of the model on stacked weights ``theta + C @ D`` of shape
``[B, *param.shape]`` through ``torch.func.functional_call`` (the private copy's own tensors are never written),
so small and medium models stop being bound by kernel launches.  The chunk size comes from the device's free
memory (``torch.cuda.mem_get_info``) and a probe of one point, and halves on out-of-memory.  Layers whose weights
move run through a rule of :mod:`~landscape_widgets.gpu` (``rule``; with ``autotune`` the measured rules that apply
are timed on the first large tile).  The per-point loop (:class:`~landscape_widgets.loop.PointEvaluator`) is its
sibling, held by composition: models vmap cannot batch, and the points "auto" times on the loop, run there.
"""
from __future__ import annotations

import contextlib
import functools
import time
import warnings

import numpy as np
import torch
from torch.func import vmap
from torch.utils._pytree import tree_map

from .driver import Execution
from .executor import Executor
from .gpu import MEASURED_RULES, RULES, default_rule, triton, tuned_rules
from .loop import PointEvaluator
from .runtime import is_oom
from .gpu.affine import AffinePoints
from .gpu.im2col import batched_convs

CPU_CHUNK = 16          # points per vmap call on a CPU: more only adds memory
MAX_CHUNK = 1024        # beyond this the stacked weights dominate and launches are long amortized
MEMORY_FRACTION = 0.5   # of the free device memory a chunk may use; the rest is headroom for the allocator
TILE_POINTS = 512       # points per tile of a plane with this evaluator: chunks of 64 left an H200 idle (RESULTS.md)
AUTO_PROBE = 8          # points timed on each path when "auto" chooses between vmap and the loop
# a smaller tile (a widget's 9x9 preview) runs on the device's default rule and leaves the choice to the first large
# one: timing four rules, each with its warm-up (Triton's compile and autotuning among them), costs a preview more
# than any rule saves it
AUTO_MIN_POINTS = 128
_VMAP_ERRORS = ("Batching rule not implemented", "vmap", "BatchedTensor")  # what torch.func says it cannot batch


class VmapExecutor(Executor):
    """vmap-batched points (``evaluator="vmap"`` or ``"vmap:<rule>"``; "auto" on CUDA, with ``autotune``): the
    settings of :class:`VmapEvaluator` (``rule``, ``chunk_size``, ``autotune``, ``measured_rules``: the rules
    ``autotune`` may time, ``auto_min_points``: the smallest tile it times on, ``kernels``: the Triton rule's
    :class:`~landscape_widgets.gpu.triton.KernelState` to start from)."""
    tile_points = TILE_POINTS

    def __init__(self, name="vmap", *, rule=None, chunk_size=None, autotune=False, measured_rules=MEASURED_RULES,
                 auto_min_points=AUTO_MIN_POINTS, kernels=None):
        self.name, self.rule, self.chunk_size, self.autotune = name, rule, chunk_size, autotune
        self.measured_rules, self.auto_min_points, self.kernels = tuple(measured_rules), auto_min_points, kernels

    def start(self, problem, plan):
        return VmapEvaluator(plan.private, problem.data, problem.objective, plan.moving(),
                             point_hook=plan.point_hook(problem), chunk_size=self.chunk_size, autotune=self.autotune,
                             rule=self.rule, tune_cache=problem.tune_cache, measured_rules=self.measured_rules,
                             auto_min_points=self.auto_min_points, kernels=self.kernels, requested=self.name)


class VmapEvaluator:
    """Same interface and values as :class:`PointEvaluator` (``tiles(coords, todo)``, which
    :func:`~landscape_widgets.driver.run_points` drives), evaluating each tile in chunks of points batched by
    ``torch.func.vmap``.

    ``chunk_size``: points per batched call; None chooses it from free device memory (CUDA) or ``CPU_CHUNK``.
    ``autotune``: time this path against the per-point loop on the first tile and keep the faster one (a model
    large enough to fill the device with one point per pass gains nothing from batching: ResNet-20 in RESULTS.md).
    ``rule``: how layers with moving weights are batched, one of ``gpu.RULES``; None: the device's default
    (``gpu.DEFAULT_RULES``), and with ``autotune`` every rule of ``measured_rules`` that applies to the model is timed
    on the first tile of at least ``auto_min_points`` points.  ``tune_cache``: a dict shared by the evaluators of one
    ``Landscape``, where ``autotune`` keeps its choice (mode, rule, chunk size) per set of moving tensors and device, so
    that the next call, a widget's next preview say, starts on it instead of timing every path again.  ``kernels``: the
    Triton rule's :class:`~landscape_widgets.gpu.triton.KernelState` (None: a fresh one); ``clock``: the seconds
    ``autotune`` times by.
    """

    def __init__(self, private, data, objective, moving: list, *, point_hook=None, chunk_size=None, autotune=False,
                 rule=None, tune_cache=None, measured_rules=MEASURED_RULES, auto_min_points=AUTO_MIN_POINTS,
                 kernels=None, clock=time.perf_counter, requested="vmap"):
        if point_hook is not None:
            raise ValueError("the vmap evaluator cannot run a per-point hook (buffers='recompute' re-estimates "
                             "BatchNorm statistics point by point); pass evaluator='loop'")
        if rule is not None and rule not in RULES:
            raise ValueError(f"rule={rule!r} is not known; pass None (automatic) or one of "
                             f"{', '.join(map(repr, RULES))}")
        if rule == "triton" and triton.why_unavailable(private.device):
            raise ValueError(f"rule='triton' cannot run here: {triton.why_unavailable(private.device)}")
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                       or chunk_size < 1):
            raise ValueError(f"chunk_size={chunk_size!r} must be None (automatic) or an int >= 1")
        self.private, self.data, self.moving = private, data, moving
        # the per-point loop beside it, for models vmap cannot batch and for the points "auto" times on it; its
        # CPU shortcuts patch module forwards, which this evaluator's functional_call bypasses
        self.loop = PointEvaluator(private, data, objective, moving)
        self.objective = self.loop.objective
        names = {id(t): n for n, t in private.params.items()}
        names.update({id(t): n for n, t in private.buffers.items()})
        self._moving = []  # (name, base, dirs); everything else stays the copy's own (unbatched) tensor
        for m in moving:
            if id(m.target) not in names:
                raise ValueError("a moving tensor is not a parameter or buffer of the private model")
            self._moving.append((names[id(m.target)], m.base, m.dirs))
        moved = {n for n, _b, _d in self._moving}
        self._fixed = {n: t for n, t in list(private.params.items()) + list(private.buffers.items())
                       if n not in moved}
        self.chunk_size = chunk_size
        self._loss_in_vmap = True  # switched off once if loss_fn cannot run under vmap (e.g. calls .item())
        self._chunks = []  # chunk sizes used (the record's)
        self._kernels = triton.KernelState() if kernels is None else kernels  # what the Triton rule learned here
        self.autotune = autotune
        self.auto_min_points = auto_min_points
        self._clock = clock  # what autotune times the paths by
        self.requested = requested  # the evaluator setting the record names
        self.mode = None if autotune else "vmap"  # "vmap" or "loop" once chosen
        self.timings = {}
        self.rule = rule or default_rule(private.device)
        self._points = None  # AffinePoints, made when the affine rule first runs (it stacks the directions)
        self._rules = [self.rule] if rule is not None else tuned_rules(private.module, private.device,
                                                                        measured_rules) or [self.rule]
        self._given_chunk = chunk_size
        self._tune_cache = tune_cache
        self._tune_key = (tuple(n for n, _b, _d in self._moving), len(self._moving[0][2]) if self._moving else 0,
                          str(private.device), rule, chunk_size)
        if autotune and tune_cache is not None and self._tune_key in tune_cache:
            self.mode, self.rule, self.chunk_size, timings = tune_cache[self._tune_key]
            self.timings = dict(timings, reused=True)

    # -- batched forward --------------------------------------------------------------------------------------
    def _stacked(self, c: torch.Tensor) -> dict:
        """theta_n + sum_k c[:, k] d_k[n] for each moving tensor, shape [B, *shape]."""
        out = {}
        for name, base, dirs in self._moving:
            t = None
            for k, d in enumerate(dirs):
                if d is None:
                    continue
                # c_k in the tensor's dtype before the product: the same rounding as the loop's add(alpha=c_k)
                term = c[:, k].to(d.dtype).reshape(-1, *([1] * d.dim())) * d.unsqueeze(0)
                t = base.unsqueeze(0) + term if t is None else t + term
            out[name] = t if t is not None else base.unsqueeze(0).expand(len(c), *base.shape)
        return out

    def _chunk_losses(self, c: torch.Tensor, x, y) -> torch.Tensor:
        """Mean loss (and metrics) over the batch ``(x, y)`` at each of the ``len(c)`` points: ``[len(c),
        objective.width]``, float64 on the device."""
        module, fixed, objective = self.private.module, self._fixed, self.objective

        def forward(moving):
            return objective.functional_forward(module, {**fixed, **moving}, x)

        stacked = self._stacked(c)
        if not stacked:  # nothing moves (e.g. the loss at the model itself)
            width = objective.width
            return objective.values(forward({}), x, y).double().reshape(1, width).expand(len(c), width)
        if self.rule in ("affine", "triton"):
            if self._points is None:
                self._points = AffinePoints(self._moving)
            points = self._points
            per_point = functools.partial(triton.conv2d_points, state=self._kernels) if self.rule == "triton" \
                else None

            def forward_at(moving, ci):  # ci: the point's coefficients, which the affine rules read
                with points.mode(moving, ci, per_point):
                    return forward(moving)

            return self._vmapped_losses(forward_at, stacked, c, x, y)
        with batched_convs(module) if self.rule == "im2col" else contextlib.nullcontext():
            return self._vmapped_losses(lambda mv, _ci: forward(mv), stacked, c, x, y)

    def _vmapped_losses(self, forward, stacked, c, x, y):
        """The loss (and the metrics, on the same outputs) under vmap too when they can run there (once they
        cannot, e.g. a metric that calls ``.item()``, per point on vmap's outputs): ``[len(c), width]``."""
        traced = False
        shape = (len(c), self.objective.width)
        if self._loss_in_vmap:
            try:
                return vmap(lambda mv, ci: self.objective.values(forward(mv, ci), x, y))(stacked, c).double() \
                    .reshape(shape)
            except Exception as exc:  # noqa: BLE001 -- any loss that vmap cannot trace falls back below
                if is_oom(exc) or not self.objective.splits:  # batch_loss is one call: nothing to take out
                    raise
                traced = True
        outputs = vmap(forward)(stacked, c)  # a forward that fails (a rule autotune then leaves out) raises here
        if traced:  # the forward ran: it was the loss that vmap could not trace
            self._loss_in_vmap = False
        return torch.stack([self.objective.values(tree_map(lambda t, i=i: t[i] if isinstance(t, torch.Tensor)
                                                           else t, outputs), x, y).double()
                            for i in range(len(c))]).reshape(shape)

    # -- chunk size -------------------------------------------------------------------------------------------
    def _auto_chunk(self, coords: torch.Tensor, x, y) -> int:
        device = self.private.device
        if device.type != "cuda":
            return CPU_CHUNK
        if self.rule == "triton":  # compile and autotune first: the autotuner's scratch buffers are no point's memory
            self._chunk_losses(coords[:1], x, y)
        free, _total = torch.cuda.mem_get_info(device)
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            self._chunk_losses(coords[:2], x, y)  # two points: the per-point cost, not the shared inputs'
        except Exception as exc:  # noqa: BLE001
            if not is_oom(exc):
                raise
            torch.cuda.empty_cache()
            return 1  # the halving loop raises if even one point does not fit
        torch.cuda.synchronize(device)
        per_two = max(torch.cuda.max_memory_allocated(device) - before, 1)
        return int(max(1, min(MAX_CHUNK, MEMORY_FRACTION * free / (per_two / 2))))

    def _losses(self, coords: torch.Tensor, x, y) -> torch.Tensor:
        """Losses at all ``coords`` on one batch, chunk by chunk, halving the chunk on out-of-memory."""
        if self.chunk_size is None:
            self.chunk_size = self._auto_chunk(coords, x, y)
        out, start = [], 0
        while start < len(coords):
            size = min(self.chunk_size, len(coords) - start)
            try:
                out.append(self._chunk_losses(coords[start:start + size], x, y))
            except Exception as exc:  # noqa: BLE001
                if not is_oom(exc) or size == 1:
                    raise
                if self.private.device.type == "cuda":
                    torch.cuda.empty_cache()
                self.chunk_size = max(1, size // 2)
                continue
            self._chunks.append(size)
            start += size
        return torch.cat(out)

    def tiles(self, coords, todo):
        """The executor interface (:func:`~landscape_widgets.driver.run_tiles`); once the loop is chosen, the
        remaining tiles run in the loop's own ``tiles``, with its exact accelerations."""
        coords = np.asarray(coords, dtype=np.float64)
        todo = list(todo)
        try:
            for i, (start, stop) in enumerate(todo):
                if self.mode == "loop":
                    yield from self.loop.tiles(coords, todo[i:])
                    return
                with torch.inference_mode():
                    values = self._eval_tile(coords[start:stop])
                yield start, stop, values
        finally:
            self.loop.release()
            self.private.reset()

    def record(self) -> Execution:
        """What this executor did: the path "auto" chose (with its timings), the rule, the chunk sizes, and the
        layer variants where the Triton kernel failed and cuDNN's form ran instead."""
        loop = self.mode == "loop"
        requested = f"auto: {self.mode or 'vmap'}" if self.autotune else self.requested
        return Execution("loop" if loop else "vmap", requested, rule=None if loop else self.rule,
                         timings=self.timings if self.autotune else None,
                         chunks=list(self._chunks), fallbacks=dict(self._kernels.failures) or None)

    def _eval_tile(self, coords):
        if self.mode is None:
            if len(coords) >= max(self.auto_min_points, 4 * AUTO_PROBE):
                return self._tune(coords)
            try:
                return self._vmap_tile(coords)  # on the default rule (self.rule until a tile is tuned)
            except Exception as exc:  # noqa: BLE001 -- a model vmap cannot batch runs in the loop
                if is_oom(exc):
                    raise
                return self._to_loop(coords, {self.rule: f"{type(exc).__name__}: {exc}"})
        if self.mode == "loop":
            return self.loop.evaluate(coords)
        try:
            return self._vmap_tile(coords)
        except Exception as exc:  # noqa: BLE001
            if is_oom(exc) or not any(k in str(exc) for k in _VMAP_ERRORS):
                raise
            raise RuntimeError(f"torch.func.vmap cannot batch this model's forward ({str(exc).splitlines()[0]}); "
                               "pass evaluator='loop' (the per-point loop runs any model) or 'auto'") from exc

    def _to_loop(self, coords, errors):
        """``"auto"`` when no vmap rule can run this model (an LSTM: vmap has no batching rule for it): the
        per-point loop from here on, the errors kept in ``timings``."""
        warnings.warn("torch.func.vmap cannot batch this model (" + "; ".join(f"{r}: {e.splitlines()[0][:200]}"
                      for r, e in errors.items()) + "); its points run in the per-point loop", RuntimeWarning,
                      stacklevel=3)
        self.mode = "loop"
        self.timings = {f"vmap_{r}_error": e for r, e in errors.items()}
        if self._tune_cache is not None:
            self._tune_cache[self._tune_key] = (self.mode, self.rule, self.chunk_size, dict(self.timings))
        return self.loop.evaluate(coords)

    def _tune(self, coords):
        """Evaluate the first tile batched, time the loop on a few of its points, and keep the faster path; for a
        model with convolutions or linear layers the tile is split between the rules that apply."""
        k = AUTO_PROBE
        out = np.empty((len(coords), self.objective.width))
        variants = self._rules
        per_point, chunks, failed, pending = {}, {}, {}, []
        start, share = k, (len(coords) - k) // len(variants)
        for i, variant in enumerate(variants):
            self.rule, self.chunk_size = variant, self._given_chunk
            stop = len(coords) if i == len(variants) - 1 else start + share
            try:
                out[:k] = self._vmap_tile(coords[:k])  # warm-up: kernels, cuDNN plans, this path's chunk size
                t0 = self._clock()
                out[start:stop] = self._vmap_tile(coords[start:stop])  # ends with a copy to the host: synchronized
            except Exception as exc:  # noqa: BLE001 -- a rule that fails here (a kernel that does not compile on
                if is_oom(exc):  # this device) is left out
                    raise
                failed[variant] = f"{type(exc).__name__}: {exc}"
                pending.append((start, stop))
                start = stop
                continue
            per_point[variant] = (self._clock() - t0) / (stop - start)
            chunks[variant] = self.chunk_size
            start = stop
        if not per_point:  # no rule batches this model: the loop does (and raises what the model itself raises)
            return self._to_loop(coords, failed)
        for variant, error in failed.items():
            warnings.warn(f"the vmap rule {variant!r} failed on this model and device and is left out: {error}",
                          RuntimeWarning, stacklevel=2)
        best = min(per_point, key=per_point.get)
        self.rule, self.chunk_size = best, chunks[best]
        for a, b in pending:  # the failed rules' share of the tile
            out[a:b] = self._vmap_tile(coords[a:b])
        t_vmap = per_point[best]
        self.loop.evaluate(coords[:1])
        t0 = self._clock()
        self.loop.evaluate(coords[1:1 + k])
        t_loop = (self._clock() - t0) / k
        self.mode = "loop" if t_loop < t_vmap else "vmap"
        self.timings = {"vmap_s_per_point": t_vmap, "loop_s_per_point": t_loop}
        if len(variants) > 1:
            self.timings.update({f"vmap_{r}_s_per_point": per_point[r] for r in per_point})
            self.timings.update({f"vmap_{r}_error": e for r, e in failed.items()})
        if self._tune_cache is not None:
            self._tune_cache[self._tune_key] = (self.mode, self.rule, self.chunk_size, dict(self.timings))
        return out

    def _vmap_tile(self, coords):
        c = torch.as_tensor(np.asarray(coords), dtype=torch.float64, device=self.private.device)
        acc = torch.zeros((len(coords), self.objective.width), dtype=torch.float64, device=self.private.device)
        total = 0
        # batches outside, points inside: a DataLoader is streamed once per tile, as in the loop
        for x, y, n in self.data.batches(self.private.device):
            acc += self._losses(c, x, y) * n
            total += n
        return (acc / total).cpu().numpy()
