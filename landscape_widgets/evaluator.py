"""Evaluate the loss at many points ``theta + sum_k c_k * d_k`` of a private model copy.

The loop writes each point into the copy's own tensors in place (two fused adds per perturbed tensor) and runs
the forward pass under ``torch.inference_mode``: on a CPU this beats batching points with ``vmap``, whose batched
matmuls lose to one large GEMM per point (measured in ``benchmarks/plane.py``).  With a DataLoader the data are
streamed once per tile of points, not once per point.  Points are grouped in tiles: after each tile a callback
receives the finished values and a cooperative cancel flag is checked, which is what the widgets build on.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .data import call_model


class Cancelled(Exception):
    """Raised between tiles when the ``cancel`` flag of a computation is set."""


@dataclass
class Tile:
    """A finished block of points: flat indices ``[start, stop)`` of the grid in C order, and their losses."""
    start: int
    stop: int
    values: np.ndarray
    done: int
    total: int


@dataclass
class Moving:
    """A tensor of the private copy that moves on the grid: ``target = base + sum_k c_k * dirs[k]``."""
    target: torch.Tensor
    base: torch.Tensor
    dirs: list  # one tensor or None (zero) per coordinate


def _is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


def check_loss(value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        if isinstance(value, (int, float)):
            return torch.tensor(float(value), dtype=torch.float64)
        raise TypeError(f"loss_fn must return a scalar tensor (the mean over the batch), got {type(value).__name__}")
    if value.numel() != 1:
        raise ValueError(f"loss_fn must return a scalar (the mean over the batch), got a tensor of shape "
                         f"{tuple(value.shape)}; reduce it, e.g. with reduction='mean'")
    return value.reshape(())


class PointEvaluator:
    """Loss at points given by coordinates ``coords[P, K]`` along ``K`` directions."""

    def __init__(self, private, data, loss_fn, moving: list, *, point_hook=None):
        self.private = private
        self.data = data
        self.loss_fn = loss_fn
        self.moving = moving
        self.point_hook = point_hook  # e.g. BatchNorm re-estimation, run after the point is written

    def _write(self, c):
        for m in self.moving:
            first = True
            for ck, dk in zip(c, m.dirs):
                if dk is None:
                    continue
                if first:
                    torch.add(m.base, dk, alpha=float(ck), out=m.target)
                    first = False
                elif ck != 0.0:
                    m.target.add_(dk, alpha=float(ck))
            if first:
                m.target.copy_(m.base)
        if self.point_hook is not None:
            self.point_hook()

    def _loss_once(self, x, y):
        return check_loss(self.loss_fn(call_model(self.private.module, x), y))

    def _eval_tile(self, coords):
        module = self.private.module
        out = np.empty(len(coords), dtype=np.float64)
        if self.data.single is not None:
            (x, y, _n), = self.data.batches(self.private.device)
            vals = []
            for c in coords:
                self._write(c)
                vals.append(self._loss_once(x, y).detach().double())
            out[:] = torch.stack(vals).cpu().numpy()
            return out
        if self.point_hook is not None:  # the hook needs the whole data per point: no interleaving
            for p, c in enumerate(coords):
                self._write(c)
                acc, total = 0.0, 0
                for x, y, n in self.data.batches(self.private.device):
                    acc = acc + self._loss_once(x, y).detach().double() * n
                    total += n
                out[p] = float(acc / total)
            return out
        acc = torch.zeros(len(coords), dtype=torch.float64, device=self.private.device)
        total = 0
        for x, y, n in self.data.batches(self.private.device):
            for p, c in enumerate(coords):
                self._write(c)
                acc[p] += self._loss_once(x, y).detach().double() * n
            total += n
        del module
        out[:] = (acc / total).cpu().numpy()
        return out

    def run(self, coords: np.ndarray, *, tile_size=None, on_tile=None, cancel=None, progress=False, desc="landscape"):
        coords = np.asarray(coords, dtype=np.float64)
        total = len(coords)
        tile_size = max(1, int(tile_size or total))
        values = np.full(total, np.nan)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=total, desc=desc, unit="pt", leave=False)
        try:
            with torch.inference_mode():
                for start in range(0, total, tile_size):
                    if _is_cancelled(cancel):
                        raise Cancelled(f"cancelled after {start} of {total} points")
                    stop = min(total, start + tile_size)
                    values[start:stop] = self._eval_tile(coords[start:stop])
                    if bar is not None:
                        bar.update(stop - start)
                    if on_tile is not None:
                        on_tile(Tile(start, stop, values[start:stop].copy(), stop, total))
        finally:
            if bar is not None:
                bar.close()
            self.private.reset()
        return values


def grid_tile_size(ny: int, total: int) -> int:
    """One or more whole rows per tile, about 64 points: small enough to stream, large enough to amortize."""
    rows = max(1, math.ceil(64 / max(ny, 1)))
    return min(total, rows * ny)


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self):
        return time.perf_counter() - self.t0
