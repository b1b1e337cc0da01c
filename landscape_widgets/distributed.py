"""Dask: the tiles of a grid evaluated on the workers of a ``dask.distributed`` cluster.

``ls.plane(..., client=client)`` sends one *job* to every worker (``client.scatter(..., broadcast=True)``): the
model, loss and data (or a user factory that builds them on the worker, for DataLoaders that cannot be pickled),
the directions and the evaluator setting.  Each worker builds its private model and evaluator once per job and
keeps it in a process-level cache; tiles are then small tasks (a block of coordinates in, losses and metrics out)
that stream back through ``as_completed``, so ``callback``, the progress bar, ``cancel`` and ``store`` work as
locally.  A tile is split into several tasks when there are fewer than ``TASKS_PER_WORKER`` per worker thread, so
that the last tasks do not leave workers idle (a 21x21 plane is 7 tiles: on 2 workers, 4 against 3); the tile, as
the store keeps it, is handed on when all its parts are back.

A worker that dies is replaced by its nanny and Dask reschedules its running tiles; a tile whose worker died
``distributed.scheduler.allowed-failures`` times (``KilledWorker``), or whose job copy was lost, is submitted
again by us up to ``retries`` times.  Finished tiles are already in the kernel (and in ``store``), so nothing
finished is lost.  Li et al.'s reference code does the same over MPI ranks (plot_surface.py, ``crunch``).
"""
from __future__ import annotations

import copy
import importlib.util
import os
import threading
import uuid
import warnings
import weakref
from collections import OrderedDict

import numpy as np
import torch

from ._model import check_model, resolve_device, unwrap
from .data import DataSource, to_device
from .driver import Execution
from .engine import Plan, Problem, local_executor
from .objective import Objective

_CACHE = OrderedDict()   # job token -> (lock, evaluator), on each worker process
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
                      RuntimeWarning, stacklevel=4)


class Workers:
    """A Dask client and how its workers get the model and data.

    ``factory``: a picklable callable returning ``(model, loss_fn, data)`` that each worker calls once per run
    instead of receiving the kernel's objects (for DataLoaders over files that cannot be pickled); the model it
    builds must have the same weights as the kernel's (checked by fingerprint).  ``device``: the workers'
    evaluation device (None: CUDA where the worker has one, else CPU).  ``retries``: resubmissions of a tile
    whose workers kept dying.
    """

    def __init__(self, client, *, factory=None, device=None, retries=3):
        if not (hasattr(client, "submit") and hasattr(client, "scatter")):
            raise TypeError(f"client must be a dask.distributed.Client, got {type(client).__name__}")
        if factory is not None and not callable(factory):
            raise TypeError(f"factory must be a callable returning (model, loss_fn, data), got "
                            f"{type(factory).__name__}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries={retries!r} must be an int >= 0")
        self.client, self.factory, self.device, self.retries = client, factory, device, retries


class _Job:
    """What a worker needs to evaluate tiles of one run; scattered once to every worker."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def _cpu(t):
    return t.detach().to("cpu") if isinstance(t, torch.Tensor) else t


def _build(job):
    """The worker's executor for ``job``, built from the shipped objects or the factory (once per job)."""
    if job.factory is not None:
        built = job.factory()
        if not (isinstance(built, (tuple, list)) and len(built) == 3):
            raise TypeError("the Dask factory must return (model, loss_fn, data)")
        model, loss_fn, data = built
    else:
        model, loss_fn, data = job.model, job.loss_fn, job.data
    check_model(model)
    objective = Objective(loss_fn, job.batch_loss, job.metrics)
    problem = Problem(model, objective, DataSource(data, pairs=objective.mode == "loss_fn"), job.params,
                      resolve_device(job.device))
    private = problem.private()
    if private.fingerprint() != job.fingerprint:
        raise ValueError("the model built on the Dask worker has other weights than the kernel's model (fingerprint "
                         "mismatch); make the factory load the same weights")
    dev = private.device
    dirs = [{n: t.to(dev) for n, t in d.items()} for d in job.dirs]
    bdirs = None if job.buffer_dirs is None else \
        {n: [None if t is None else t.to(dev) for t in ts] for n, ts in job.buffer_dirs.items()}
    return local_executor(problem, Plan(job.kind, private, dirs, np.zeros((0, len(dirs))), tile_size=1,
                                        buffer_dirs=bdirs, buffers=job.buffers, evaluator=job.evaluator))


def _evaluator_for(job):
    with _CACHE_LOCK:
        entry = _CACHE.get(job.token)
        if entry is None:
            entry = _CACHE[job.token] = [threading.Lock(), None]
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    built = False
    with entry[0]:  # one build per process, and one tile at a time on the private copy it writes into
        if entry[1] is None:
            entry[1] = _build(job)
            built = True
    return entry, built


def evaluate_tile(job, coords):
    """Task run on a worker: the losses at ``coords`` (one tile), and the worker's address when this task built
    the worker's executor for the job (the run's record counts the builds)."""
    entry, built = _evaluator_for(job)
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


class DaskExecutor:
    """The executor of a plan on Dask workers (``tiles(coords, todo)`` and ``record()``, as the local ones): the
    job is scattered once per run, tiles come back as they complete, in any order."""

    def __init__(self, client, problem, plan):
        self.workers = client if isinstance(client, Workers) else Workers(client)
        if importlib.util.find_spec("distributed") is None:  # optional dependency
            raise ImportError("client= needs dask.distributed: pip install 'dask[distributed]'")
        workers = self.workers
        if workers.factory is None:
            # workers may lack the kernel's device; a compiled wrapper does not travel, its original module does
            model = copy.deepcopy(unwrap(problem.model)).to("cpu")
            data = problem.data.raw
            if problem.data.single is not None:
                data = to_device(data, "cpu")
            shipped = {"model": model, "loss_fn": problem.loss_fn, "data": data}
        else:
            shipped = {"model": None, "loss_fn": None, "data": None}
        self.job = _Job(token=uuid.uuid4().hex, factory=workers.factory, device=workers.device,
                        batch_loss=problem.batch_loss, metrics=problem.objective.metrics, params=problem.params,
                        kind=plan.kind,
                        fingerprint=plan.private.fingerprint(), evaluator=plan.evaluator, buffers=plan.buffers,
                        dirs=[{n: _cpu(t) for n, t in d.items()} for d in plan.dirs],
                        buffer_dirs=None if plan.buffer_dirs is None else
                        {n: [_cpu(t) for t in ts] for n, ts in plan.buffer_dirs.items()}, **shipped)
        _check_workers(workers.client, workers.device)
        self._builds = {}  # worker address -> executors built there for this run

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

    def record(self, requested=None) -> Execution:
        client = self.workers.client
        return Execution("dask", self.job.evaluator,
                         dask={"scheduler": client.scheduler.address if client.scheduler else None,
                               "workers": len(client.nthreads()), "factory": self.workers.factory is not None,
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
