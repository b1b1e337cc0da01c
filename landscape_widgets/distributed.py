"""Dask: the tiles of a grid evaluated on the workers of a ``dask.distributed`` cluster.

``ls.plane(..., client=client)`` sends one *job* to every worker (``client.scatter(..., broadcast=True)``): the problem
and the plan as they travel (:meth:`~landscape_widgets.engine.Problem.to_worker`: the model, loss and data, or a user
factory that builds them on the worker, for DataLoaders that cannot be pickled;
:meth:`~landscape_widgets.engine.Plan.to_worker`: the directions and the evaluator setting).  Each worker rebuilds them
and starts the plan's executor once per job and keeps that run in a process-level cache; tiles are then small tasks (a
block of coordinates in, losses and metrics out) that stream back through ``as_completed``, so ``callback``, the
progress bar, ``cancel`` and ``store`` work as locally.  A tile is split into several tasks when there are fewer than
``TASKS_PER_WORKER`` per worker thread, so that the last tasks do not leave workers idle (a 21x21 plane is 7 tiles: on 2
workers, 4 against 3); the tile, as the store keeps it, is handed on when all its parts are back.

A worker that dies is replaced by its nanny and Dask reschedules its running tiles; a tile whose worker died
``distributed.scheduler.allowed-failures`` times (``KilledWorker``), or whose job copy was lost, is submitted
again by us up to ``retries`` times.  Finished tiles are already in the kernel (and in ``store``), so nothing
finished is lost.  Li et al.'s reference code does the same over MPI ranks (plot_surface.py, ``crunch``).
"""
from __future__ import annotations

import importlib.util
import os
import threading
import uuid
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from .driver import Execution
from .executor import Executor

_CACHE = OrderedDict()   # job token -> (lock, run), on each worker process
_CACHE_SIZE = 2          # jobs kept per worker: the current run and, briefly, the previous one
_CACHE_LOCK = threading.Lock()
TASKS_PER_WORKER = 4     # tasks per worker thread at least, when the tiles allow it
MIN_TASK_POINTS = 8      # points per task at least: a task costs a few milliseconds of scheduling
_CHECKED = weakref.WeakSet()  # clients whose workers' allocator settings were looked at


def worker_environ() -> dict:
    """Dask's ``distributed.nanny.pre-spawn-environ`` without ``MALLOC_TRIM_THRESHOLD_``, for CPU workers::

        with dask.config.set({"distributed.nanny.pre-spawn-environ": lwd.worker_environ()}):
            cluster = LocalCluster(n_workers=2, threads_per_worker=1)

    Dask sets ``MALLOC_TRIM_THRESHOLD_=65536`` in every worker (to hand freed memory back quickly).  Setting any
    glibc threshold switches off glibc's dynamic mmap threshold, so each activation above 128 KiB is mapped and
    unmapped at every grid point: the digits CNN ran 3x slower per worker (benchmarks/RESULTS.md).
    """
    import dask

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    return env


def _allocator_env():
    """On a worker: its glibc threshold variables, and whether it evaluates on CUDA."""
    return ({k: v for k, v in os.environ.items() if k.startswith("MALLOC_") and k.endswith("THRESHOLD_")},
            torch.cuda.is_available())


def _check_workers(client, device):
    """Warn once per client when CPU workers run under Dask's MALLOC_TRIM_THRESHOLD_ (see worker_environ)."""
    if client in _CHECKED or (device is not None and torch.device(device).type == "cuda"):
        return
    _CHECKED.add(client)
    try:
        report = client.run(_allocator_env)
    except Exception:  # noqa: BLE001 -- a check only: never fail a run for it
        return
    slow = sorted({k for env, cuda in report.values() if not cuda or device is not None for k in env})
    if slow:
        warnings.warn(f"the Dask workers run with {', '.join(slow)} set (Dask sets MALLOC_TRIM_THRESHOLD_=65536 by "
                      "default): glibc then maps and unmaps every large activation at every grid point, 3x slower "
                      "on the digits CNN. Start CPU workers inside dask.config.set({'distributed.nanny.pre-spawn-"
                      "environ': landscape_widgets.distributed.worker_environ()}) (docs/scaling.md)",
                      RuntimeWarning, stacklevel=7)  # the user's call: plane -> _run -> execute -> start


class Workers(Executor):
    """The executor of plans on the workers of a Dask client (``client=``; a plain ``dask.distributed.Client`` is
    wrapped in one with the defaults).

    ``factory``: a picklable callable returning ``(model, loss_fn, data)`` that each worker calls once per run
    instead of receiving the kernel's objects (for DataLoaders over files that cannot be pickled); the model it
    builds must have the same weights as the kernel's (checked by fingerprint).  ``device``: the workers'
    evaluation device (None: CUDA where the worker has one, else CPU).  ``retries``: resubmissions of a tile
    whose workers kept dying.
    """
    name = "dask"

    def __init__(self, client, *, factory=None, device=None, retries=3):
        if not (hasattr(client, "submit") and hasattr(client, "scatter")):
            raise TypeError(f"client must be a dask.distributed.Client, got {type(client).__name__}")
        if factory is not None and not callable(factory):
            raise TypeError(f"factory must be a callable returning (model, loss_fn, data), got "
                            f"{type(factory).__name__}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries={retries!r} must be an int >= 0")
        self.client, self.factory, self.device, self.retries = client, factory, device, retries

    def start(self, problem, plan):
        if importlib.util.find_spec("distributed") is None:  # optional dependency
            raise ImportError("client= needs dask.distributed: pip install 'dask[distributed]'")
        return DaskRun(self, problem, plan)


@dataclass(frozen=True)
class Job:
    """What a worker needs to evaluate tiles of one run; scattered once to every worker (one object: Dask would
    scatter a tuple's items one by one)."""
    token: str
    problem: object  # engine.ShippedProblem
    plan: object     # engine.ShippedPlan


def _start_run(job):
    """The worker's run of ``job`` (once per job): the problem and plan rebuilt here, on their executor here."""
    problem = job.problem.build()
    plan = job.plan.build(problem)
    return plan.executor.start(problem, plan)


def _run_for(job):
    with _CACHE_LOCK:
        entry = _CACHE.get(job.token)
        if entry is None:
            entry = _CACHE[job.token] = [threading.Lock(), None]
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    built = False
    with entry[0]:  # one build per process, and one tile at a time on the private copy it writes into
        if entry[1] is None:
            entry[1] = _start_run(job)
            built = True
    return entry, built


def evaluate_tile(job, coords):
    """Task run on a worker: the losses at ``coords`` (one tile), and the worker's address when this task built
    the worker's run for the job (the run's record counts the builds)."""
    entry, built = _run_for(job)
    with entry[0]:
        coords = np.asarray(coords, dtype=np.float64)
        (_start, _stop, values), = entry[1].tiles(coords, [(0, len(coords))])
    return values, _worker_address() if built else None


def _worker_address():
    try:
        from distributed import get_worker
        return get_worker().address
    except (ImportError, ValueError):  # called outside a worker
        return "local"


class DaskRun:
    """One plan on the Dask workers (``tiles(coords, todo)`` and ``record()``, as every run): the job is scattered
    once per run, tiles come back as they complete, in any order."""

    def __init__(self, workers: Workers, problem, plan):
        self.workers = workers
        self.evaluator = plan.evaluator if isinstance(plan.evaluator, str) else plan.evaluator.name
        self.job = Job(uuid.uuid4().hex, problem.to_worker(factory=workers.factory, device=workers.device),
                       plan.to_worker())
        _check_workers(workers.client, workers.device)
        self._builds = {}  # worker address -> runs built there for this run

    def _scatter(self):
        try:
            return self.workers.client.scatter(self.job, broadcast=True, hash=False)
        except Exception as exc:  # noqa: BLE001 -- pickling errors come in many types
            raise TypeError(f"could not send the model, loss and data to the Dask workers ({exc}); pass "
                            "client=lw.distributed.Workers(client, factory=f) with f() -> (model, loss_fn, data) "
                            "built on the worker") from exc

    def tiles(self, coords, todo):
        from distributed import as_completed
        from distributed.scheduler import KilledWorker

        client, job, retries = self.workers.client, self.job, self.workers.retries
        coords = np.asarray(coords, dtype=np.float64)
        job_future = [self._scatter()]
        pending, tries = {}, {}
        parts = _split(todo, sum(client.nthreads().values()))
        tile_of = {p: t for t, ps in parts.items() for p in ps}
        got = {t: {} for t in parts}

        def submit(start, stop):
            tries[start] = tries.get(start, 0) + 1
            fut = client.submit(evaluate_tile, job_future[0], coords[start:stop], pure=False,
                                key=f"lw-tile-{job.token}-{start}-{tries[start]}")
            pending[fut] = (start, stop)
            return fut

        ac = as_completed([submit(s, e) for ps in parts.values() for s, e in ps])
        try:
            for fut in ac:
                start, stop = pending.pop(fut)
                try:
                    values, built_on = fut.result()
                except (KilledWorker,) + _cancelled_errors() as exc:
                    # workers kept dying on this tile, or the scattered job was lost with them: try again
                    if tries[start] > retries:
                        raise RuntimeError(f"points [{start}, {stop}) failed {tries[start]} times on the Dask "
                                           f"workers: {exc!r}") from exc
                    if job_future[0].status != "finished":  # every copy of the job died with its workers
                        job_future[0] = self._scatter()
                    ac.add(submit(start, stop))
                    continue
                if built_on is not None:
                    self._builds[built_on] = self._builds.get(built_on, 0) + 1
                tile = tile_of[(start, stop)]
                got[tile][start] = np.asarray(values, dtype=np.float64)
                if len(got[tile]) == len(parts[tile]):
                    yield tile[0], tile[1], np.concatenate([got[tile][s] for s, _e in parts[tile]])
                    del got[tile]
        finally:
            if pending:
                client.cancel(list(pending))
            job_future[0].release()

    def record(self) -> Execution:
        client = self.workers.client
        n = len(client.nthreads())
        return Execution("dask", self.evaluator, where=f"{n} Dask worker{'s' if n != 1 else ''}",
                         facts={"scheduler": client.scheduler.address if client.scheduler else None,
                                "workers": n, "factory": self.workers.factory is not None,
                                "builds": dict(self._builds)})


def _split(todo, threads):
    """``{tile: [parts]}``: each tile cut into equal runs of points so that there are ``TASKS_PER_WORKER`` tasks
    per worker thread in all, none under ``MIN_TASK_POINTS`` points."""
    per_tile = max(1, -(-TASKS_PER_WORKER * max(1, threads) // max(1, len(todo))))
    out = {}
    for start, stop in todo:
        k = max(1, min(per_tile, (stop - start) // MIN_TASK_POINTS))
        edges = np.linspace(start, stop, k + 1).round().astype(int)
        out[(int(start), int(stop))] = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
    return out


def _cancelled_errors():
    from concurrent.futures import CancelledError
    try:
        from distributed.client import FutureCancelledError
        return (CancelledError, FutureCancelledError)
    except ImportError:
        return (CancelledError,)
