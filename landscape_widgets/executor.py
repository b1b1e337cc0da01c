"""The executor interface: how a plan's points are evaluated.

An :class:`Executor` holds settings only (it is small and picklable); :meth:`Executor.start` binds it to one
:class:`~landscape_widgets.engine.Problem` and :class:`~landscape_widgets.engine.Plan` and returns the *run*, which
has

- ``tiles(coords, todo)``: a generator that gets the missing ``(start, stop)`` tiles and yields ``(start, stop,
  values)`` in any order, ``values`` ``[stop - start, objective.width]`` (:func:`~landscape_widgets.driver.run_tiles`
  owns the store, progress and cancellation);
- ``record()``: the :class:`~landscape_widgets.driver.Execution`.

The library's executors: the per-point loop (:class:`~landscape_widgets.loop.LoopExecutor`), vmap-batched points
(:class:`~landscape_widgets.batched.VmapExecutor`) and Dask workers (:class:`~landscape_widgets.distributed.Workers`);
:mod:`~landscape_widgets.chooser` turns ``evaluator=`` and ``client=`` into one.  Another executor is a subclass in
one file, passed as ``evaluator=`` (it runs in this process) or ``client=`` (it runs the plan elsewhere, with the
plan's own ``evaluator`` there).
"""
from __future__ import annotations


class Executor:
    """Evaluates a plan's points.  ``name``: what results record as ``evaluator`` (an executor passed as ``client=``
    records the plan's own); ``tile_points``: points per tile of a plane (about; whole rows); ``loop_arithmetic``: its
    values are the per-point loop's own arithmetic in this process (the first data check then compares them exactly)."""
    name = "custom"
    tile_points = 64
    loop_arithmetic = False

    def start(self, problem, plan):
        """The run of ``plan`` on ``problem``: ``tiles(coords, todo)`` and ``record()``."""
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r})"
