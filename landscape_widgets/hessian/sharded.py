"""Hessian-vector products on the workers of a Dask cluster, each worker on its shard of the data.

The loss is the sample-weighted mean over the data, so ``H v = sum_w (n_w / N) H_w v`` over any partition of the
samples into shards ``w`` of ``n_w`` samples (the same identity :mod:`~.hvp` sums batches with; Pearlmutter 1994,
eq. 4, per shard).  :func:`sharded_operator` cuts the data into one shard per worker, sends each worker its shard
once, and each worker builds its problem and its operator (``make_operator``: the curvature asked for) once per
operator and keeps them, with the first-order graph of an in-memory shard, in a process-level cache.  A block of
products then costs one model-sized vector per product each way: ``V`` goes to every worker once
(``client.scatter``), each worker returns ``H_w V`` (the mean over its shard), its sample count and its loss, and
the kernel sums them.

How the data are cut (decided in the kernel, applied where the data are):

- one in-memory batch: contiguous slices of samples, as equal as they can be, where the sample-weighted mean of the
  slices' losses equals the full batch's loss at the weights (checked once, by forward passes in the kernel); a
  loss or model that couples the samples of a batch (a weighted mean, a batch-level term) keeps the batch whole on
  one worker, with a warning: pass such data as a list of batches, each kept whole.
- a list or tuple of batches (in memory, :func:`~landscape_widgets.data.freeze`'s too): contiguous runs of batches
  with about equal sample counts; with fewer batches than workers, one batch per worker and no task for the others.
- any other iterable (a DataLoader): every worker reads the whole loader and keeps the batches ``i`` with
  ``i % shards == w`` (round-robin); each pass reads under the same random seed on every worker, so a shuffled
  loader gives every worker the same order and the shards partition the samples.  A worker whose turn never comes
  (fewer batches than workers) contributes nothing: it reports 0 samples, weight 0.
- ``factory`` (``lw.distributed.Workers(client, factory=f)``, for a DataLoader that cannot be pickled): each worker
  calls ``f()`` for ``(model, loss_fn, data)`` and takes its shard of that data as above (the factory must build
  the kernel's data: same samples, or same number of batches; its weights are checked by fingerprint).

Only the data of its own shard travels to a worker when the data are in memory.  The weights are the private
copy's (``problem.private()``), checked on the worker by fingerprint as every shipped problem is.  A shard whose
worker died is sent again, to a live worker, and its task submitted again (``retries`` times); the vectors are
broadcast to the workers the scheduler lists, so a block that starts before the scheduler has dropped a dead
worker may wait for it.  Each block costs a few scheduler round trips (40-50 ms on a loaded 2-core machine): the
workers pay off when a product takes seconds (benchmarks/dask_hessian.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
import uuid
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from .. import distributed as _dist
from ..accelerations import MICRO_RTOL
from ..data import DataSource, Frozen, _samples_in, index_batch, kept_rng, to_device
from ..driver import Cancelled, is_cancelled
from .hvp import BACKENDS, HessianOperator, NonFiniteHessian
from .operators import check_curvature, make_operator

_CACHE = OrderedDict()  # operator token -> {shard: _Entry}, on each worker process
_CACHE_SIZE = 2         # operators kept per worker: the current one and, briefly, the previous one
_CACHE_LOCK = threading.Lock()
POLL_S = 0.05           # how often a block checks ``cancel`` while the workers compute
RETRY_S = 0.5           # the wait before sending the vectors again after a worker was lost


@dataclass(frozen=True)
class ShardJob:
    """What a worker needs for the products of one shard (scattered once; one object, as Dask would scatter a
    tuple's items one by one).  ``take``: None (``problem`` holds the shard itself), ``("samples", a, b, n)``
    (samples ``[a, b)`` of one batch of ``n``), ``("batches", a, b, count)`` (batches ``[a, b)`` of a list of
    ``count``) or ``("every", w, k, seed)`` (batches ``i % k == w`` of an iterable, read under ``seed``)."""
    token: str
    shard: int
    problem: object  # engine.ShippedProblem
    take: tuple
    curvature: str
    backend: str


class _Every:
    """The batches ``i % k == w`` of ``data``, every pass read with the global RNGs seeded by ``seed`` (restored
    after): a DataLoader without a generator of its own then shuffles alike on every worker."""

    def __init__(self, data, w, k, seed):
        self.data, self.w, self.k, self.seed = data, w, k, seed

    def __iter__(self):
        with kept_rng(self.seed):
            for i, batch in enumerate(self.data):
                if i % self.k == self.w:
                    yield batch


class _Entry:
    def __init__(self):
        self.lock = threading.Lock()
        self.op = None
        self.empty = False
        self.data = None
        self.drop = False  # free the graph once the running product is done


def _take(data, take):
    """The shard ``take`` of the data a factory built on the worker, after checking they are the kernel's."""
    kind = take[0]
    if kind == "samples":
        _, a, b, n = take
        if data.single is None or data.num_samples != n:
            raise ValueError(f"the factory's data are not the kernel's: the kernel has one batch of {n} samples, the "
                             f"factory built {data.describe()}; make the factory build the same data")
        x, y = data.single
        idx = torch.arange(a, b)
        x = index_batch(x, idx, n)
        return DataSource(x if y is None else (x, index_batch(y, idx, n)), pairs=data.pairs)
    if kind == "batches":
        _, a, b, count = take
        if data.single is not None or not data.in_memory or len(data.iterable) != count:
            raise ValueError(f"the factory's data are not the kernel's: the kernel has a list of {count} batches, the "
                             f"factory built {data.describe()}; make the factory build the same data")
        return DataSource(list(data.iterable)[a:b], pairs=data.pairs)
    _, w, k, seed = take
    if data.single is not None:
        raise ValueError(f"the factory's data are not the kernel's: the kernel has an iterable of batches, the factory "
                         f"built one batch ({data.describe()}); make the factory build the same data")
    return DataSource(_Every(data.iterable, w, k, seed), pairs=data.pairs)


def _build(job, entry):
    problem = job.problem.build()  # refuses other weights (fingerprint)
    data = problem.data if job.take is None else _take(problem.data, job.take)
    if job.take is not None and job.take[0] == "every":
        with kept_rng():
            entry.empty = not any(True for _ in data.iterable)  # reads batches up to this worker's first only
    entry.data = data
    entry.op = None if entry.empty else make_operator(job.curvature, problem.private(), data, problem.objective,
                                                      backend=job.backend)


def _entry_for(job):
    with _CACHE_LOCK:
        shards = _CACHE.get(job.token)
        if shards is None:
            shards = _CACHE[job.token] = {}
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        else:
            _CACHE.move_to_end(job.token)
        return shards.setdefault(job.shard, _Entry())


def shard_products(job, V):
    """Task run on a worker: ``(H_w V^T as numpy [m, P], n_w, loss_w)`` of its shard (``(None, 0, None)`` for a
    shard without samples); the operator is built at the first call of the job in this process and kept."""
    entry = _entry_for(job)
    with entry.lock:  # one product at a time on an operator (and its graph)
        if entry.op is None and not entry.empty:
            _build(job, entry)
        if entry.empty:
            return None, 0, None
        try:
            out = entry.op.matmat_torch(torch.from_numpy(np.asarray(V)))
            return out.cpu().numpy(), int(entry.data.num_samples), entry.op.loss
        finally:
            if entry.drop:
                entry.op.release()
                entry.drop = False


def _release(token, forget=False):
    """On a worker (``client.run``): free the graphs of ``token``'s shards, or ``forget`` the shards altogether.
    Never waits for a running product (this runs on the worker's event loop): its graph is freed after it."""
    with _CACHE_LOCK:
        shards = _CACHE.pop(token, None) if forget else _CACHE.get(token)
    for entry in (shards or {}).values():
        if entry.lock.acquire(blocking=False):
            try:
                if entry.op is not None:
                    entry.op.release()
            finally:
                entry.lock.release()
        else:
            entry.drop = True


def _cut_samples(n, shards):
    edges = np.linspace(0, n, shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _cut_batches(counts, shards):
    """Contiguous runs of batches, one per shard, with sample sums as near ``N / shards`` as the batches allow."""
    cum = np.cumsum(counts)
    total, B = float(cum[-1]), len(counts)
    cuts, prev = [0], 0
    for j in range(1, shards):
        lo, hi = prev + 1, B - (shards - j)  # every shard keeps one batch at least
        c = lo + int(np.argmin(np.abs(cum[lo - 1:hi] - j * total / shards)))
        cuts.append(c)
        prev = c
    cuts.append(B)
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:])]


def _slices_exact(problem, private, x, y, n, cuts) -> bool:
    """Whether the slices' sample-weighted mean loss equals the full batch's (forward passes at the weights)."""
    objective, module = problem.objective, private.module
    try:
        with torch.inference_mode():
            def loss(a, b):
                idx = torch.arange(a, b)
                xs = to_device(index_batch(x, idx, n), private.device)
                ys = None if y is None else to_device(index_batch(y, idx, n), private.device)
                return float(objective(module, xs, ys))

            full = float(objective(module, to_device(x, private.device), None if y is None else
                                   to_device(y, private.device)))
            parts = sum(loss(a, b) * (b - a) for a, b in cuts) / n
    except Exception:  # noqa: BLE001 -- a model or loss that takes only the whole batch keeps it
        return False
    if not (np.isfinite(full) and np.isfinite(parts)):
        return np.isnan(full) and np.isnan(parts) or full == parts  # NonFiniteHessian comes from the products
    return bool(np.isclose(full, parts, rtol=MICRO_RTOL, atol=MICRO_RTOL * 1e-3))


class ShardedHessianOperator:
    """``H`` of the loss over all of ``problem``'s data at the private copy's weights, with the products computed on
    the workers of a Dask client, each on its shard (module docstring); :class:`~.hvp.HessianOperator`'s
    interface, so the solvers (Lanczos, SLQ, Hutch++) take it as they take a local one.  Made by
    :func:`sharded_operator`.

    ``shards``: ``[(worker address, samples or None, what it holds)]``, the kernel's record of the cut.  ``cancel``
    is checked before every block and while the workers compute it; a worker's exception is re-raised here with
    its type and message (and a note naming the worker and shard).  :meth:`release` frees the workers' graphs,
    :meth:`close` everything the workers keep for this operator.
    """

    def __init__(self, client, problem, *, curvature="hessian", backend="graph", cancel=None, factory=None,
                 device=None, retries=3, on_hvp=None):
        self.client, self.cancel, self.on_hvp, self.retries = client, cancel, on_hvp, retries
        self.curvature, self.backend = curvature, backend
        self.problem, self.factory, self.worker_device = problem, factory, device
        private = self.private = problem.private()
        self.names = list(private.names)
        self.shapes = [tuple(private.base[n].shape) for n in self.names]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.num_parameters = int(sum(self.sizes))
        self.dtype = private.base[self.names[0]].dtype
        self.out_dtype = torch.promote_types(self.dtype, torch.float32)  # as HessianOperator: sums in float32+
        self.device = private.device
        self.hvps = 0
        self.loss = None
        self.token = uuid.uuid4().hex
        self._shipped = problem.to_worker(factory=factory, device=device)  # checks nothing yet: the worker does
        if factory is None:
            self._shipped.data = None  # each shard ships its own data
        self._blocks = 0
        self._plan()
        self._futures = [None] * len(self._takes)
        weakref.finalize(self, _forget_on_workers, client, self.token).atexit = False

    # -- the cut ---------------------------------------------------------------------------------------------
    def _plan(self):
        workers = list(self.client.nthreads())
        if not workers:
            raise RuntimeError("the Dask client has no workers; start some, or wait for them with "
                               "client.wait_for_workers(n)")
        data, k = self.problem.data, len(workers)
        takes, samples = [], []
        if data.single is not None:
            n = data.num_samples
            cuts = _cut_samples(n, k)
            x, y = data.single
            if len(cuts) > 1 and not _slices_exact(self.problem, self.private, x, y, n, cuts):
                warnings.warn("the loss of a slice of the batch is not the batch's loss restricted to it (the "
                              "sample-weighted mean of the slices' losses differs from the batch's loss: a weighted "
                              "mean, a batch-level term, or samples coupled by the model), so the batch is kept whole "
                              "on one Dask worker; pass the data as a list of batches to spread them over the "
                              "workers (each batch is kept whole)", RuntimeWarning, stacklevel=4)
                cuts = [(0, n)]
            takes = [("samples", a, b, n) for a, b in cuts]
            samples = [b - a for a, b in cuts]
        elif data.in_memory:
            batches = list(data.iterable)
            counts = [_samples_in(b) for b in batches]
            cuts = [(a, b) for a, b in _cut_batches(counts, min(k, len(batches))) if sum(counts[a:b]) > 0]
            takes = [("batches", a, b, len(batches)) for a, b in cuts]
            samples = [sum(counts[a:b]) for a, b in cuts]
        else:
            count = data.num_batches  # len() of the loader, or the batches of the last pass; None: unknown
            shards = min(k, count) if count else k
            with kept_rng():
                seed = int(torch.randint(2 ** 62, ()))  # the same on every worker; the caller's RNGs untouched
            takes = [("every", w, shards, seed) for w in range(shards)]
            samples = [None] * shards
        self._takes = takes
        self.shards = [(workers[i % k], samples[i], t[:3]) for i, t in enumerate(takes)]

    def _job(self, i):
        take = self._takes[i]
        problem = self._shipped
        if self.factory is None:
            data = self.problem.data
            if take[0] == "samples":
                _, a, b, n = take
                x, y = data.single
                idx = torch.arange(a, b)  # an indexed copy: a sliced view would pickle the whole storage
                x = to_device(index_batch(x, idx, n), "cpu")
                part = x if y is None else (x, to_device(index_batch(y, idx, n), "cpu"))
            elif take[0] == "batches":
                part = Frozen(list(data.iterable)[take[1]:take[2]])
            else:
                part = data.raw
            problem, take = dataclasses.replace(self._shipped, data=part), (take if take[0] == "every" else None)
        return ShardJob(self.token, i, problem, take, self.curvature, self.backend)

    def _scatter(self, i, anywhere=False):
        try:
            job = self._job(i)
            where = None if anywhere else [self.shards[i][0]]
            self._futures[i] = self.client.scatter(job, workers=where, hash=False)
            if anywhere:  # where its products now run
                who = self.client.who_has(self._futures[i]).get(self._futures[i].key)
                if who:
                    self.shards[i] = (who[0],) + self.shards[i][1:]
        except OSError:  # a lost connection to the worker, not the objects: as it is
            raise
        except Exception as exc:  # noqa: BLE001 -- pickling errors come in many types
            raise TypeError(f"could not send the model, loss and data to the Dask workers ({exc}); pass "
                            "client=lw.distributed.Workers(client, factory=f) with f() -> (model, loss_fn, data) "
                            "built on the worker") from exc

    def _broadcast(self, Vn):
        """``Vn`` scattered to every worker; a worker that died since the scheduler last heard of it fails the
        scatter until it is removed, so that is tried again."""
        for attempt in range(self.retries + 1):
            try:
                return self.client.scatter(Vn, broadcast=True, hash=False)
            except OSError:  # distributed's CommClosedError: the connection to a dead worker
                if attempt == self.retries:
                    raise
                time.sleep(RETRY_S * (attempt + 1))

    # -- flat <-> dict, as HessianOperator -------------------------------------------------------------------
    flatten = HessianOperator.flatten
    unflatten = HessianOperator.unflatten

    @property
    def weights(self) -> dict:
        """The point ``H`` is taken at: the private copy's base weights (what the workers were sent)."""
        return self.private.base

    # -- products --------------------------------------------------------------------------------------------
    def matmat_torch(self, V: torch.Tensor) -> torch.Tensor:
        """``H V^T`` row by row: ``V[m, P]`` -> ``[m, P]`` in ``out_dtype``; one task per shard for the block, each
        worker one pass over its shard.  Raises :class:`~.hvp.NonFiniteHessian` when a shard's loss or the product
        is not finite, :class:`~landscape_widgets.Cancelled` when ``cancel`` is set."""
        from distributed import wait
        from distributed.scheduler import KilledWorker

        if V.ndim != 2 or V.shape[1] != self.num_parameters:
            raise ValueError(f"vectors must have shape [m, {self.num_parameters}], got {tuple(V.shape)}")
        if is_cancelled(self.cancel):
            raise Cancelled(f"cancelled after {self.hvps} Hessian-vector products")
        # the workers get the vectors in the products' summing dtype: their operators cast (and scale) them as a
        # local one casts the kernel's
        Vn = np.ascontiguousarray(V.detach().to(device="cpu", dtype=self.out_dtype).numpy())
        client, self._blocks = self.client, self._blocks + 1
        for i in range(len(self._futures)):
            if self._futures[i] is None:
                self._scatter(i)
        V_future = self._broadcast(Vn)
        tries = [0] * len(self._takes)

        def submit(i):
            tries[i] += 1
            return client.submit(shard_products, self._futures[i], V_future, pure=False,
                                 workers=[self.shards[i][0]], allow_other_workers=True,
                                 key=f"lw-hvp-{self.token}-{i}-{self._blocks}-{tries[i]}")

        futs = [submit(i) for i in range(len(self._takes))]
        results = [None] * len(futs)
        try:
            while any(r is None for r in results):
                todo = [f for f, r in zip(futs, results) if r is None]
                try:
                    wait(todo, timeout=POLL_S if self.cancel is not None else None, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    pass
                except _dist._cancelled_errors():  # a shard lost with its worker: handled below, per task
                    pass
                if is_cancelled(self.cancel):
                    raise Cancelled(f"cancelled after {self.hvps} Hessian-vector products")
                for i, fut in enumerate(futs):
                    if results[i] is not None or not fut.done():
                        continue
                    try:
                        results[i] = fut.result()
                    except (KilledWorker,) + _dist._cancelled_errors() as exc:
                        # the worker died on it, or its shard died with it: send the shard again, to any worker
                        if tries[i] > self.retries:
                            raise RuntimeError(f"the products of data shard {i + 1} of {len(futs)} failed "
                                               f"{tries[i]} times on the Dask workers: {exc!r}") from exc
                        if self._futures[i].status != "finished":
                            self._scatter(i, anywhere=True)
                        futs[i] = submit(i)
                    except Exception as exc:
                        exc.add_note(f"(raised on the Dask worker {self.shards[i][0]} computing the "
                                     f"Hessian-vector products of data shard {i + 1} of {len(futs)})")
                        raise
        finally:
            pending = [f for f, r in zip(futs, results) if r is None]
            if pending:
                client.cancel(pending)
            V_future.release()
        return self._sum(results, V.shape[0])

    def _sum(self, results, m):
        total = sum(n for _out, n, _loss in results)
        if total == 0:
            raise ValueError("the data yielded no samples on the Dask workers; pass a DataLoader or list with at "
                             "least one non-empty batch")
        out = torch.zeros((m, self.num_parameters), dtype=self.out_dtype)
        losses = []
        for hv, n, loss in results:  # H v = sum_w (n_w / N) H_w v; a shard without samples has weight 0
            if n:
                out += torch.from_numpy(hv).to(self.out_dtype) * (n / total)
                losses.append(None if loss is None else loss * n / total)
        self.loss = None if any(v is None for v in losses) else float(sum(losses))
        if self.loss is not None and not np.isfinite(self.loss):
            raise NonFiniteHessian(self._explain(f"the loss is {self.loss}"))
        if not bool(torch.isfinite(out).all()):
            raise NonFiniteHessian(self._explain(f"a Hessian-vector product is not finite (loss {self.loss})"))
        self.hvps += m
        if self.on_hvp is not None:
            self.on_hvp(self.hvps)
        return out.to(self.device)

    def _explain(self, what):
        return (f"{what} at the model's weights, so the Hessian is not defined there: check the data for NaN or inf "
                "(torch.isfinite on inputs and targets) and the model for overflow in its dtype. The loss surfaces "
                "(loss, plane, line) report such points as NaN; nothing was changed.")

    matvec_torch = HessianOperator.matvec_torch
    matvec = HessianOperator.matvec
    matmat = HessianOperator.matmat
    linear_operator = HessianOperator.linear_operator
    quadratic_form = HessianOperator.quadratic_form
    progress = HessianOperator.progress
    running = HessianOperator.running

    def release(self):
        """Free the workers' stored graphs (each holds the activations of its shard); the next product builds them
        again.  Never raises: a cluster that is gone holds nothing."""
        with contextlib.suppress(Exception):
            self.client.run(_release, self.token)

    def close(self):
        """Free everything the workers keep for this operator (problems, graphs, shards)."""
        for fut in self._futures:
            if fut is not None:
                fut.release()
        self._futures = [None] * len(self._takes)
        _forget_on_workers(self.client, self.token)

    def describe(self) -> dict:
        """What a result's ``meta`` says about the cut."""
        return {"workers": len({w for w, _s, _t in self.shards}), "shards": len(self.shards),
                "samples": [s for _w, s, _t in self.shards], "cut": self.shards[0][2][0] if self.shards else None,
                "factory": self.factory is not None}


def _forget_on_workers(client, token):
    try:
        asyncio.get_running_loop()
        return  # collected on an event loop's thread (Dask's own): a blocking call would deadlock; the LRU frees it
    except RuntimeError:
        pass
    with contextlib.suppress(Exception):  # after the cluster closed: nothing to free
        if getattr(client, "status", None) == "running":
            client.run(_release, token, True)


def sharded_operator(client, problem, *, curvature="hessian", cancel=None, backend="graph"):
    """The curvature operator of ``problem`` (an :class:`~landscape_widgets.engine.Problem`) over all its data, with
    the products computed on the workers of ``client``, one shard of the data per worker (module docstring).

    ``client``: a ``dask.distributed.Client``, or ``lw.distributed.Workers(client, factory=f, device=d,
    retries=r)`` for data built on the workers (``f() -> (model, loss_fn, data)``, e.g. a DataLoader over files
    that cannot be pickled), their device (None: CUDA where a worker has one) and how often a shard whose worker
    died is sent again.  Returns a :class:`ShardedHessianOperator`."""
    import importlib.util
    if importlib.util.find_spec("distributed") is None:  # optional dependency
        raise ImportError("client= needs dask.distributed: pip install 'dask[distributed]'")
    factory, device, retries = None, None, 3
    if isinstance(client, _dist.Workers):
        client, factory, device, retries = client.client, client.factory, client.device, client.retries
    elif not (hasattr(client, "submit") and hasattr(client, "scatter")):
        raise TypeError(f"client must be a dask.distributed.Client or lw.distributed.Workers, got "
                        f"{type(client).__name__}")
    check_curvature(curvature)
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not known; pass one of {', '.join(map(repr, BACKENDS))}")
    _dist._check_workers(client, device)
    return ShardedHessianOperator(client, problem, curvature=curvature, backend=backend, cancel=cancel,
                                  factory=factory, device=device, retries=retries)


__all__ = ["ShardJob", "ShardedHessianOperator", "shard_products", "sharded_operator"]
