"""Hessian-vector products on 2 Dask worker processes, each on its shard of the data, against the dense float64
Hessian (torch.autograd.functional.hessian through functional_call) and the local HessianOperator; compute_spectrum
through it against the local spectrum; cancel, a worker that raises, a non-finite shard, a factory's data."""
import copy
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import landscape_widgets as lw
from landscape_widgets import distributed as lwd
from landscape_widgets.hessian import sharded
from landscape_widgets.hessian.hvp import HessianOperator, NonFiniteHessian
from landscape_widgets.hessian.operators import CURVATURES, make_operator
from landscape_widgets.hessian.spectrum import compute_spectrum

from _hessian_cases import classification_data, dense_hessian, small_cnn, small_mlp
from helpers import assert_same, snapshot
from zoo import models as Z

distributed = pytest.importorskip("distributed")
import dask  # noqa: E402 -- installed with distributed
pytestmark = pytest.mark.slow

RTOL = 1e-10


@pytest.fixture(scope="module")
def client():
    with dask.config.set({"distributed.nanny.pre-spawn-environ": lwd.worker_environ()}):  # docs/scaling.md
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    cl = distributed.Client(cluster)
    yield cl
    cl.close()
    cluster.close()


def _vectors(P, m=3, seed=5):
    return torch.randn(m, P, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rel(got, want):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


def _local(ls, backend="graph"):
    p = ls.problem
    return HessianOperator(p.private(), p.data, p.objective, backend=backend)


def _full_loss(model, x, y):
    m = copy.deepcopy(model).eval()
    params = {n: t.detach() for n, t in m.named_parameters()}
    return float(F.cross_entropy(functional_call(m, params, (x,)), y))


def _check_products(client, model, data, x, y, **kw):
    """The sharded products equal V H (dense, all samples) and the local operator's; the model untouched."""
    H = dense_hessian(model, nn.CrossEntropyLoss(), x, y)
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    snap, rng = snapshot(model), torch.get_rng_state()
    op = sharded.sharded_operator(client, ls.problem, **kw)
    V = _vectors(op.num_parameters)
    got = op.matmat_torch(V)
    assert got.dtype == torch.float64 and got.shape == V.shape
    assert _rel(got, V.numpy() @ H) < RTOL
    local = _local(ls, kw.get("backend", "graph"))
    assert _rel(got, local.matmat_torch(V)) < RTOL
    assert _rel(op.matmat_torch(V), got) < 1e-14  # the kept graphs give the same products again
    if kw.get("backend", "graph") == "graph":
        assert op.loss == pytest.approx(_full_loss(model, x, y), rel=RTOL)
    assert op.hvps == 2 * len(V)
    assert_same(model, snap)
    assert torch.equal(rng, torch.get_rng_state())
    return op


@pytest.mark.parametrize("build", [small_mlp, small_cnn])
@pytest.mark.parametrize("backend", ["graph", "func"])
def test_single_batch_uneven_slices_equal_dense_hessian(client, build, backend):
    """51 samples on 2 workers: contiguous slices of 26 and 25."""
    model = build().train()  # left in train mode by the user: neither used nor changed
    x, y = classification_data(model, n=51)
    op = _check_products(client, model, (x, y), x, y, backend=backend)
    assert [(s, t) for _w, s, t in op.shards] == [(26, ("samples", 0, 26)), (25, ("samples", 26, 51))]
    assert len({w for w, _s, _t in op.shards}) == 2
    # the whole interface, as the solvers use it
    v = V0 = _vectors(op.num_parameters, 1)[0]
    H = dense_hessian(model, nn.CrossEntropyLoss(), x, y)
    assert _rel(op.matvec(v.numpy()), H @ v.numpy()) < RTOL
    assert _rel(op.matmat(np.stack([v.numpy(), 2 * v.numpy()], 1)), H @ np.stack([v.numpy(), 2 * v.numpy()], 1)) < RTOL
    assert _rel(op.linear_operator() @ v.numpy(), H @ v.numpy()) < RTOL
    d = op.unflatten(V0)
    assert op.quadratic_form(d) == pytest.approx(float(v.numpy() @ H @ v.numpy()), rel=RTOL)
    assert torch.equal(op.flatten(d), V0)
    ticks = []
    op.on_hvp = ticks.append
    with op.progress("spectrum", enabled=True) as stage:  # the local operator's tqdm bar, counting products
        stage("top")
        op.matvec_torch(V0)
    assert ticks == [op.hvps] and op.on_hvp == ticks.append
    assert op.names == [n for n, _ in model.named_parameters()] and sum(op.sizes) == op.num_parameters == len(H)
    assert op.dtype == op.out_dtype == torch.float64 and op.device == torch.device("cpu") and op.backend == backend
    assert all(torch.equal(op.weights[n], p.detach()) for n, p in model.named_parameters())


def test_list_of_uneven_batches_is_cut_by_samples(client):
    """Batches of 20, 7, 24 samples: contiguous runs [20] and [7, 24] (27 + 24 against 20 + 31)."""
    model = small_mlp()
    x, y = classification_data(model, n=51)
    batches = [(x[:20], y[:20]), (x[20:27], y[20:27]), (x[27:], y[27:])]
    op = _check_products(client, model, batches, x, y)
    assert [(s, t) for _w, s, t in op.shards] == [(27, ("batches", 0, 2)), (24, ("batches", 2, 3))]


def test_more_workers_than_batches(client):
    """One batch in a list on 2 workers: one shard, no task for the other worker (it contributes nothing)."""
    model = small_mlp()
    x, y = classification_data(model, n=30)
    op = _check_products(client, model, [(x, y)], x, y)
    assert [(s, t) for _w, s, t in op.shards] == [(30, ("batches", 0, 1))]


def test_dataloader_is_read_round_robin_under_one_seed(client):
    """A shuffled DataLoader without a generator of its own: every worker reads it under the same seed, keeps every
    second batch, and the two shards partition the 51 samples (5 batches of 12, 12, 12, 12, 3)."""
    model = small_mlp()
    x, y = classification_data(model, n=51)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=12, shuffle=True)
    op = _check_products(client, model, loader, x, y)
    assert [t for _w, _s, t in op.shards] == [("every", 0, 2), ("every", 1, 2)]


def test_zoo_batchnorm_model_in_float64(client):
    """The zoo's BatchNorm CNN (eval-mode statistics; left in train mode) in float64 on its 24 images."""
    case = Z.build("batchnorm")
    model = case.model.double()
    x, y = case.data[0].double(), case.data[1]
    assert model.training
    _check_products(client, model, (x, y), x, y)
    assert model.training


def test_compute_spectrum_equals_local(client):
    """Lanczos (top 3, bottom 2), Hutch++ (3P + 3 products: exact) and SLQ through the sharded operator give the
    local operator's values to 1e-10, and the dense Hessian's eigenvalues and trace."""
    model = small_mlp()
    x, y = classification_data(model, n=51)
    H = dense_hessian(model, nn.CrossEntropyLoss(), x, y)
    ev = np.linalg.eigvalsh(H)
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), [(x[:20], y[:20]), (x[20:], y[20:])], device="cpu")
    kw = dict(density=True, trace=True, steps=12, runs=2, trace_samples=3 * len(H) + 3, tol=1e-10)
    op = sharded.sharded_operator(client, ls.problem)
    with op.running():
        remote, rmeta = compute_spectrum(op, 3, 2, **kw)
    local, lmeta = compute_spectrum(_local(ls), 3, 2, **kw)
    scale = np.abs(ev).max()
    for key in ("top_eigenvalues", "bottom_eigenvalues", "trace"):
        np.testing.assert_allclose(remote[key], local[key], rtol=RTOL, atol=RTOL * scale, err_msg=key)
    np.testing.assert_allclose(remote["top_eigenvalues"], ev[::-1][:3], rtol=1e-9, atol=1e-9 * scale)
    np.testing.assert_allclose(remote["bottom_eigenvalues"], ev[:2], rtol=1e-9, atol=1e-9 * scale)
    assert remote["trace"] == pytest.approx(np.trace(H), rel=1e-9)
    np.testing.assert_allclose(remote["slq_nodes"], local["slq_nodes"], rtol=1e-8, atol=1e-8 * scale)
    np.testing.assert_allclose(remote["slq_weights"], local["slq_weights"], rtol=1e-8, atol=1e-8)
    assert rmeta["hvps"] == lmeta["hvps"] and rmeta["loss"] == pytest.approx(lmeta["loss"], rel=RTOL)


@pytest.mark.parametrize("curvature", [c for c in CURVATURES if c != "hessian"])
def test_other_curvatures_equal_their_local_operators(client, curvature):
    """Every curvature of operators.make_operator is a sample-weighted mean over the data: its sharded products
    equal the local operator's (list of uneven batches: contiguous runs, one per worker)."""
    model = small_mlp()
    x, y = classification_data(model, n=51)
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), [(x[:20], y[:20]), (x[20:27], y[20:27]), (x[27:], y[27:])],
                      device="cpu")
    op = sharded.sharded_operator(client, ls.problem, curvature=curvature)
    p = ls.problem
    local = make_operator(curvature, p.private(), p.data, p.objective)
    V = _vectors(op.num_parameters)
    assert _rel(op.matmat_torch(V), local.matmat_torch(V)) < RTOL
    assert len(op.shards) == 2


def _graphs_on_workers(token):
    """On a worker: id of each shard's operator and of its kept graph."""
    shards = sharded._CACHE.get(token, {})
    return {i: (id(e.op), None if e.op is None or e.op._graph is None else id(e.op._graph))
            for i, e in shards.items()}


def test_workers_build_once_keep_graphs_and_release(client):
    model = small_mlp()
    x, y = classification_data(model, n=40)
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y), device="cpu")
    op = sharded.sharded_operator(client, ls.problem)
    V = _vectors(op.num_parameters)
    first = op.matmat_torch(V)
    seen = client.run(_graphs_on_workers, op.token)
    held = {i: ids for got in seen.values() for i, ids in got.items()}
    assert sorted(held) == [0, 1] and all(g is not None for _o, g in held.values())
    op.matmat_torch(V)
    assert client.run(_graphs_on_workers, op.token) == seen  # the same operators and graphs: nothing rebuilt
    op.release()
    assert all(g is None for got in client.run(_graphs_on_workers, op.token).values() for _o, g in got.values())
    assert _rel(op.matmat_torch(V), first) < 1e-14  # graphs built again
    op.close()
    assert all(got == {} for got in client.run(_graphs_on_workers, op.token).values())
    with op.running():  # running() frees the graphs on exit, as the local operator's does
        op.matvec_torch(V[0])
    assert all(g is None for got in client.run(_graphs_on_workers, op.token).values() for _o, g in got.values())


def test_cancel_before_and_during_a_block(client):
    model = small_mlp()
    x, y = classification_data(model, n=40)
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y), device="cpu")
    stop = threading.Event()
    op = sharded.sharded_operator(client, ls.problem, cancel=stop)
    V = _vectors(op.num_parameters)
    op.matmat_torch(V)
    stop.set()
    with pytest.raises(lw.Cancelled, match="after 3 Hessian-vector products"):
        op.matmat_torch(V)
    assert op.hvps == 3

    calls = []

    def cancel():  # False at the check before the block, True at the first look while the workers compute
        calls.append(1)
        return len(calls) > 1

    op2 = sharded.sharded_operator(client, ls.problem, cancel=cancel)
    with pytest.raises(lw.Cancelled):
        op2.matmat_torch(V)
    assert op2.hvps == 0 and len(calls) == 2
    # the cluster and the first operator work after both
    stop.clear()
    assert _rel(op.matmat_torch(V), _local(ls).matmat_torch(V)) < RTOL


def _on_worker():
    try:
        distributed.get_worker()
        return True
    except ValueError:
        return False


class RaisesOnWorker(nn.Module):
    """small_mlp that refuses to run inside a Dask worker (a model that needs something only the kernel has)."""

    def __init__(self):
        super().__init__()
        self.inner = small_mlp()

    def forward(self, x):
        if _on_worker():
            raise KeyError("the inputs' vocabulary is only in the kernel")
        return self.inner(x)


def test_a_worker_raising_is_reraised_with_its_message(client):
    x, y = classification_data(small_mlp(), n=30)
    model = RaisesOnWorker()
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y), device="cpu")
    snap = snapshot(model)
    op = sharded.sharded_operator(client, ls.problem)
    with pytest.raises(KeyError, match="vocabulary is only in the kernel") as info:
        op.matmat_torch(_vectors(op.num_parameters))
    assert any("Dask worker" in n and "data shard" in n for n in getattr(info.value, "__notes__", []))
    assert op.hvps == 0
    assert_same(model, snap)


def test_non_finite_shard_raises_non_finite_hessian(client):
    model = small_mlp()
    x, y = classification_data(model, n=40)
    x = x.clone()
    x[35, 2] = float("nan")  # in the second worker's slice
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y), device="cpu")
    op = sharded.sharded_operator(client, ls.problem)
    assert len(op.shards) == 2
    with pytest.raises(NonFiniteHessian, match="not defined there"):
        op.matmat_torch(_vectors(op.num_parameters))


def weighted_batch_loss(model, batch):
    x, y, w = batch
    return (w * F.cross_entropy(model(x), y, reduction="none")).sum() / w.sum()


def test_batch_whose_slices_do_not_average_is_kept_whole(client):
    """A weighted mean over one (x, y, w) batch: the slices' losses do not average to it, so one worker gets it."""
    model = small_mlp()
    x, y = classification_data(model, n=30)
    w = torch.rand(30, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.1
    ls = lw.Landscape(model, None, (x, y, w), batch_loss=weighted_batch_loss, device="cpu")
    with pytest.warns(RuntimeWarning, match="kept whole on one Dask worker.*list of batches"):
        op = sharded.sharded_operator(client, ls.problem)
    assert [(s, t) for _w, s, t in op.shards] == [(30, ("samples", 0, 30))]
    V = _vectors(op.num_parameters)
    assert _rel(op.matmat_torch(V), _local(ls).matmat_torch(V)) < RTOL


class Unpicklable:
    """Batches that cannot be sent (a lock), as a DataLoader over open files; no len()."""

    def __init__(self, batches):
        self.batches, self.lock = batches, threading.Lock()

    def __iter__(self):
        return iter(self.batches)


def _data():
    model = small_mlp()
    return model, classification_data(model, n=45)


def _factory_two():
    model, (x, y) = _data()
    return model, nn.CrossEntropyLoss(), Unpicklable([(x[:30], y[:30]), (x[30:], y[30:])])


def _factory_one():
    model, (x, y) = _data()
    return model, nn.CrossEntropyLoss(), Unpicklable([(x, y)])


def _factory_other_weights():
    _model, (x, y) = _data()
    return small_mlp(seed=1), nn.CrossEntropyLoss(), Unpicklable([(x, y)])


def test_factory_builds_the_data_on_the_workers(client):
    model, (x, y) = _data()
    H = dense_hessian(model, nn.CrossEntropyLoss(), x, y)
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), Unpicklable([(x[:30], y[:30]), (x[30:], y[30:])]),
                      device="cpu")
    op = sharded.sharded_operator(client, ls.problem)
    with pytest.raises(TypeError, match="factory"):
        op.matmat_torch(_vectors(op.num_parameters))
    op = sharded.sharded_operator(lwd.Workers(client, factory=_factory_two), ls.problem)
    V = _vectors(op.num_parameters)
    assert _rel(op.matmat_torch(V), V.numpy() @ H) < RTOL
    assert op.describe()["factory"] is True and op.describe()["shards"] == 2
    # one batch and no len(): 2 shards read round-robin, the second gets no batch and reports 0 samples
    one = lw.Landscape(model, nn.CrossEntropyLoss(), Unpicklable([(x, y)]), device="cpu")
    op = sharded.sharded_operator(lwd.Workers(client, factory=_factory_one), one.problem)
    assert len(op.shards) == 2
    assert _rel(op.matmat_torch(V), V.numpy() @ H) < RTOL
    assert op.loss == pytest.approx(_full_loss(model, x, y), rel=RTOL)
    op = sharded.sharded_operator(lwd.Workers(client, factory=_factory_other_weights), one.problem)
    with pytest.raises(ValueError, match="fingerprint"):
        op.matmat_torch(V)


def test_argument_errors(client):
    model = small_mlp()
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), classification_data(model), device="cpu")
    with pytest.raises(TypeError, match="dask.distributed.Client"):
        sharded.sharded_operator("tcp://localhost:8786", ls.problem)
    with pytest.raises(ValueError, match="curvature='hesian' is not known; pass one of 'hessian'"):
        sharded.sharded_operator(client, ls.problem, curvature="hesian")
    with pytest.raises(ValueError, match="backend='jax' is not known"):
        sharded.sharded_operator(client, ls.problem, backend="jax")
    op = sharded.sharded_operator(client, ls.problem)
    with pytest.raises(ValueError, match=r"vectors must have shape \[m, 160\]"):
        op.matmat_torch(torch.zeros(2, 3))


def test_landscape_spectrum_with_a_client_equals_local(client):
    """Landscape.spectrum(client=...) runs its products through sharded_operator: the same eigenvalues and trace."""
    model = small_mlp()
    x, y = classification_data(model, n=51)
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y), device="cpu")
    kw = dict(k=2, bottom=1, density=False, trace=True, trace_samples=20, tol=1e-10, progress=False)
    snap = snapshot(model)
    remote = ls.spectrum(client=client, **kw)
    local = ls.spectrum(**kw)
    np.testing.assert_allclose(remote.top_eigenvalues, local.top_eigenvalues, rtol=RTOL)
    np.testing.assert_allclose(remote.bottom_eigenvalues, local.bottom_eigenvalues, rtol=RTOL)
    assert remote.trace == pytest.approx(local.trace, rel=RTOL)
    assert_same(model, snap)


def test_a_killed_worker_gets_its_shard_again(client):
    """Last in this module (the cluster loses a worker): the shard held only by the killed process is sent again,
    to a live worker, and the next block's products are still exact."""
    import os
    import signal

    model = small_mlp()
    x, y = classification_data(model, n=40)
    H = dense_hessian(model, nn.CrossEntropyLoss(), x, y)
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y), device="cpu")
    op = sharded.sharded_operator(client, ls.problem)
    V = _vectors(op.num_parameters)
    assert _rel(op.matmat_torch(V), V.numpy() @ H) < RTOL
    pids = client.run(os.getpid)
    victim = op.shards[1][0]
    os.kill(pids[victim], signal.SIGKILL)
    # the vectors are broadcast to the workers the scheduler lists: a block waits for it to drop the dead one
    # (a broadcast to a worker it still lists can stall in Dask's scheduler)
    for _ in range(600):
        if victim not in client.nthreads():
            break
        time.sleep(0.1)
    assert _rel(op.matmat_torch(V), V.numpy() @ H) < RTOL
    assert op.shards[1][0] != victim
    client.wait_for_workers(2, timeout=120)
