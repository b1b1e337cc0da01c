"""The one driver: a grid of points, tile by tile, through any executor.

An executor's run (:mod:`~landscape_widgets.executor`) has ``tiles(coords, todo)``: a generator that gets the missing
``(start, stop)`` tiles and yields ``(start, stop, values)`` in any order (the per-point loop, vmap-batched chunks, Dask
futures as they complete).  The driver loads finished tiles from a store, writes new ones to it as they arrive, reports
each tile to the callback and the progress bar, and checks the cancel flag between tiles; executors do none of that.

With metrics (``Landscape(metrics=...)``) a point's values are ``[loss, m_1, ..., m_M]``: the driver carries
``[points, 1 + M]``; without them the flat losses.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np


class Cancelled(Exception):
    """Raised between tiles when the ``cancel`` flag of a computation is set."""


@dataclass
class Tile:
    """A finished block of points: flat indices ``[start, stop)`` of the grid in C order, their losses
    (``values``) and their metrics (name -> values, in the order given; empty without metrics)."""
    start: int
    stop: int
    values: np.ndarray
    done: int
    total: int
    metrics: dict = field(default_factory=dict)


@dataclass
class Execution:
    """What an executor did: ``executor`` (its kind: "loop", "vmap", "dask", ...), ``evaluator`` (as requested,
    "auto: <path>" for what "auto" chose), the vmap ``rule``, the ``timings`` "auto" chose by, the vmap ``chunks``
    (points per batched call, in order), the layer variants whose Triton kernel failed (``fallbacks``: cuDNN's form
    ran), the store's facts (``store``), and for an executor that runs elsewhere its own facts (``facts``, kept in
    ``meta`` under the executor's kind) and where it ran in words (``where``: "2 Dask workers").  :meth:`meta` is
    the flat form results keep in ``meta``; :meth:`note` the few words a status line shows."""
    executor: str
    evaluator: str
    rule: str = None
    timings: dict = None
    chunks: list = None
    fallbacks: dict = None
    store: dict = None
    facts: dict = None
    where: str = None

    def meta(self) -> dict:
        out = {"evaluator": self.evaluator}
        for key, value in (("evaluator_timings", self.timings), ("vmap_rule", self.rule), (self.executor, self.facts),
                           ("store", self.store)):
            if value is not None:
                out[key] = value
        return out

    def note(self, device="cpu") -> str:
        """' on cuda:0, batched (triton)', ' on 4 Dask workers', ...: where and how the points ran (``device``: the
        result's), empty for the plain per-point loop on a CPU."""
        if self.where:
            return f" on {self.where}"
        device = str(device)
        how = f"batched ({self.rule})" if self.rule else "per-point loop" if self.executor == "loop" else ""
        if device == "cpu" and not self.rule:
            return ""
        return f" on {device}" + (f", {how}" if how else "")

    def as_dict(self) -> dict:
        return asdict(self)


def is_cancelled(cancel) -> bool:
    """``cancel`` is None, a ``threading.Event`` or a callable returning True once the work should stop."""
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


def tiles_of(total: int, tile_size: int) -> list:
    tile_size = max(1, int(tile_size))
    return [(s, min(total, s + tile_size)) for s in range(0, total, tile_size)]


def grid_tile_size(ny: int, total: int, target: int = 64) -> int:
    """One or more whole rows of ``ny`` points per tile, about ``target`` points: small enough to stream and cancel,
    large enough to amortize (an executor's ``tile_points``)."""
    rows = max(1, math.ceil(target / max(ny, 1)))
    return min(total, rows * ny)


def run_tiles(total, tile_size, compute, *, on_tile=None, cancel=None, progress=False, desc="landscape",
              store=None, metrics=()) -> np.ndarray:
    """Values at ``total`` points: finished tiles from ``store`` (a :class:`~landscape_widgets.store.TileStore`),
    the others from ``compute(todo)``, which yields ``(start, stop, values)`` for the missing tiles in any order.

    ``metrics``: the metric names; then a point's values are ``[loss, m_1, ..., m_M]`` and the result is
    ``[total, 1 + M]``, else the flat ``[total]`` losses.  Each new tile is saved before the callback sees it (a
    kill there loses nothing); ``cancel`` is checked before the first tile and after each one, and raises
    :class:`Cancelled`.
    """
    metrics = tuple(metrics)
    tail = (1 + len(metrics),) if metrics else ()
    values = np.full((total,) + tail, np.nan)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc=desc, unit="pt", leave=False)
    done = 0

    def finish(start, stop, vals):
        nonlocal done
        values[start:stop] = vals
        done += stop - start
        if bar is not None:
            bar.update(stop - start)
        if on_tile is not None:
            block = values[start:stop]
            if metrics:
                on_tile(Tile(start, stop, block[:, 0].copy(), done, total,
                             {name: block[:, 1 + k].copy() for k, name in enumerate(metrics)}))
            else:
                on_tile(Tile(start, stop, block.copy(), done, total))

    try:
        todo = []
        for start, stop in tiles_of(total, tile_size):
            cached = store.load(start, stop) if store is not None else None
            if cached is None:
                todo.append((start, stop))
            else:
                store.loaded.append((start, stop))
                finish(start, stop, cached)
        if todo:
            if is_cancelled(cancel):
                raise Cancelled(f"cancelled after {done} of {total} points")
            results = compute(todo)
            try:
                for start, stop, vals in results:
                    vals = np.reshape(np.asarray(vals, dtype=np.float64), (stop - start,) + tail)
                    if store is not None:
                        store.save(start, stop, vals)
                        store.computed.append((start, stop))
                    finish(start, stop, vals)
                    if done < total and is_cancelled(cancel):
                        raise Cancelled(f"cancelled after {done} of {total} points")
            finally:
                close = getattr(results, "close", None)
                if close is not None:
                    close()  # runs the executor's clean-up (a private copy reset, Dask futures cancelled)
    finally:
        if bar is not None:
            bar.close()
    return values


def run_points(executor, coords, *, tile_size=None, on_tile=None, cancel=None, progress=False, desc="landscape",
               metrics=()):
    """Losses at ``coords`` through ``executor.tiles``, in tiles of ``tile_size`` points (default: one tile); with
    ``metrics`` (names) ``[points, 1 + M]`` as :func:`run_tiles`."""
    coords = np.asarray(coords, dtype=np.float64)
    return run_tiles(len(coords), tile_size or max(1, len(coords)), lambda todo: executor.tiles(coords, todo),
                     on_tile=on_tile, cancel=cancel, progress=progress, desc=desc, metrics=metrics)
