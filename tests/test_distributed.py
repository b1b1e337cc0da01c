"""Dask: a LocalCluster of 2 worker processes gives the local result, survives a killed worker, feeds the store."""
import os
import signal
import threading

import numpy as np
import pytest
from torch import nn

import landscape_widgets as lw
from landscape_widgets import distributed as lwd
from landscape_widgets import examples

from helpers import SmallNet, direct_loss

distributed = pytest.importorskip("distributed")
import dask  # noqa: E402 -- installed with distributed
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client():
    with dask.config.set({"distributed.nanny.pre-spawn-environ": lwd.worker_environ()}):  # docs/scaling.md
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    cl = distributed.Client(cluster)
    yield cl
    cl.close()
    cluster.close()


def _digits_cnn(n=200):
    x, y = examples.digits(flat=False)
    return lw.Landscape(examples.digits_cnn(), nn.CrossEntropyLoss(), (x[:n], y[:n]), device="cpu")


def test_dask_plane_equals_local_and_streams_tiles(client, small):
    model, (x, y) = small
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y), device="cpu")
    local = ls.plane(resolution=(12, 10), progress=False)
    seen = []
    remote = ls.plane(resolution=(12, 10), progress=False, client=client, callback=seen.append)
    np.testing.assert_array_equal(remote.losses, local.losses)
    assert sorted((t.start, t.stop) for t in seen) == [(0, 70), (70, 120)]
    assert sorted(t.done for t in seen) == [50, 120] or sorted(t.done for t in seen) == [70, 120]
    assert remote.meta["dask"]["workers"] == 2 and remote.meta["evaluator"] == "auto"
    base = {n: p.detach() for n, p in model.named_parameters()}
    d1, d2 = remote.directions
    a, b = remote.alphas[7], remote.betas[3]
    params = {n: base[n] + a * d1[n] + b * d2[n] for n in base}
    assert remote.losses[7, 3] == pytest.approx(direct_loss(model, params, x, y), rel=1e-5)


def test_connect_on_dask_equals_local(client, small):
    """connect's curve and straight line evaluated on the workers (the bend trained here, BatchNorm statistics
    re-estimated at every point there) give the local values."""
    model, data = small
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    other = SmallNet(seed=4)
    local = ls.connect(other, steps=7, epochs=1, progress=False)
    remote = ls.connect(other, steps=7, epochs=1, progress=False, client=client)
    np.testing.assert_array_equal(remote.losses, local.losses)
    assert remote.meta["line_losses"] == local.meta["line_losses"] and remote.meta["barrier"] == local.meta["barrier"]
    assert remote.execution.executor == "dask" and remote.meta["dask"]["workers"] == 2
    assert remote.meta["buffers"] == "recompute" and remote.meta["evaluator"] == "auto"


def test_tiles_are_split_into_tasks_for_balance():
    """7 tiles of 63 points on 2 workers would leave one idle for the last tile: 8 tasks per worker thread wanted."""
    tiles = [(i, i + 63) for i in range(0, 441, 63)]
    parts = lwd._split(tiles, 2)
    assert list(parts) == tiles and all(len(p) == 2 for p in parts.values())
    assert parts[(0, 63)] == [(0, 32), (32, 63)]
    for (a, b), ps in lwd._split(tiles, 16).items():  # 64 tasks wanted: 10 per tile, cut at 7 by MIN_TASK_POINTS
        assert ps[0][0] == a and ps[-1][1] == b and all(p[1] == q[0] for p, q in zip(ps, ps[1:]))
        assert len(ps) == 63 // lwd.MIN_TASK_POINTS and min(q - p for p, q in ps) >= lwd.MIN_TASK_POINTS
    assert lwd._split([(0, 10)], 2) == {(0, 10): [(0, 10)]}  # too small to split
    many = [(i, i + 64) for i in range(0, 640, 64)]
    assert all(len(p) == 1 for p in lwd._split(many, 2).values())  # 10 tiles for 2 threads: enough already


def test_each_worker_builds_once_per_run(client):
    ls = _digits_cnn(100)
    surf = ls.plane(resolution=(40, 8), progress=False, client=client)  # 5 tiles on 2 workers
    builds = surf.execution.facts["builds"]
    assert surf.execution.executor == "dask" and surf.meta["dask"]["builds"] == builds
    assert surf.execution.note(surf.meta["device"]) == " on 2 Dask workers"
    assert set(builds) <= set(client.nthreads()) and all(n == 1 for n in builds.values()) and len(builds) >= 1
    again = ls.plane(resolution=(40, 8), progress=False, client=client)  # a new run is a new job: built again
    assert all(n == 1 for n in again.execution.facts["builds"].values())


def test_dask_line_interpolate_and_vmap_equal_local(client, small):
    model, data = small
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    np.testing.assert_array_equal(ls.line(steps=9, progress=False, client=client).losses,
                                  ls.line(steps=9, progress=False).losses)
    start = SmallNet(seed=4)
    for buffers in ("interpolate", "recompute"):
        np.testing.assert_array_equal(
            ls.interpolate(start, steps=6, buffers=buffers, progress=False, client=client).losses,
            ls.interpolate(start, steps=6, buffers=buffers, progress=False).losses)
    np.testing.assert_allclose(ls.line(steps=9, progress=False, client=client, evaluator="vmap").losses,
                               ls.line(steps=9, progress=False).losses, rtol=1e-5)


def test_killed_worker_mid_run_still_gives_full_correct_grid(client):
    ls = _digits_cnn(400)
    local = ls.plane(resolution=(40, 8), progress=False)  # 5 tiles of 64 points
    pids = client.run(os.getpid)
    victim = sorted(pids.values())[0]
    seen = []

    def on_tile(tile):
        if not seen:  # after the first finished tile: kill a worker process outright
            os.kill(victim, signal.SIGKILL)
        seen.append((tile.start, tile.stop))

    remote = ls.plane(resolution=(40, 8), progress=False, client=client, callback=on_tile)
    np.testing.assert_array_equal(remote.losses, local.losses)
    assert sorted(seen) == [(s, s + 64) for s in range(0, 320, 64)]
    client.wait_for_workers(2, timeout=120)
    assert victim not in client.run(os.getpid).values()


def test_dask_with_store_resumes_without_work(client, tmp_path):
    ls = _digits_cnn(100)
    first = ls.plane(resolution=(16, 8), progress=False, client=client, store=tmp_path)
    assert first.meta["store"]["tiles_computed"] == 2
    again = ls.plane(resolution=(16, 8), progress=False, client=client, store=tmp_path)
    assert again.meta["store"]["tiles_loaded"] == 2 and again.meta["store"]["tiles_computed"] == 0
    np.testing.assert_array_equal(first.losses, again.losses)


def _factory():
    x, y = examples.digits(flat=False)
    return examples.digits_cnn(), nn.CrossEntropyLoss(), [(x[:60], y[:60]), (x[60:100], y[60:100])]


class Unpicklable:
    """A data source that cannot be sent (holds a lock), as a DataLoader over open files may be."""

    def __init__(self, batches):
        self.batches, self.lock = batches, threading.Lock()

    def __iter__(self):
        return iter(self.batches)


def test_factory_builds_data_on_workers(client):
    model, loss, batches = _factory()
    ls = lw.Landscape(model, loss, Unpicklable(batches), device="cpu")
    with pytest.raises(TypeError, match="factory"):
        ls.line(steps=5, progress=False, client=client)
    remote = ls.line(steps=5, progress=False, client=lwd.Workers(client, factory=_factory))
    np.testing.assert_array_equal(remote.losses, ls.line(steps=5, progress=False).losses)
    assert remote.meta["dask"]["factory"] is True


def test_factory_with_other_weights_is_refused(client):
    x, y = examples.digits(flat=False)
    ls = lw.Landscape(examples.digits_cnn(seed=1), nn.CrossEntropyLoss(), (x[:50], y[:50]), device="cpu")
    with pytest.raises(ValueError, match="fingerprint"):
        ls.line(steps=3, progress=False, client=lwd.Workers(client, factory=_factory))


def test_dask_cancel(client):
    ls = _digits_cnn(100)
    stop = threading.Event()

    def on_tile(tile):
        stop.set()

    with pytest.raises(lw.Cancelled):
        ls.plane(resolution=(40, 8), progress=False, client=client, callback=on_tile, cancel=stop)
    # the cluster is still usable after a cancelled run
    assert np.isfinite(ls.line(steps=3, progress=False, client=client).losses).all()


def test_dask_argument_errors(small):
    model, data = small
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    with pytest.raises(TypeError, match="client must be a dask.distributed.Client"):
        ls.line(steps=3, progress=False, client="tcp://localhost:8786")
    with pytest.raises(TypeError, match="factory must be a callable"):
        lwd.Workers(object.__new__(distributed.Client), factory=3)
    with pytest.raises(ValueError, match="retries"):
        lwd.Workers(object.__new__(distributed.Client), retries=-1)


def test_widgets_compute_on_dask_through_an_option(client, small):
    """SurfaceWidget/CurveWidget(compute={"client": client}): full grids on the workers, same values as local."""
    model, data = small
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    w = lw.SurfaceWidget(ls, resolution=11, compute={"client": client})
    w.wait(timeout=300)
    assert w.surface.meta["dask"]["workers"] == 2 and " on 2 Dask workers · " in w._status
    np.testing.assert_array_equal(w.surface.losses, ls.plane(resolution=11, progress=False).losses)
    c = lw.CurveWidget(ls, steps=11, compute={"client": client})
    c.wait(timeout=300)
    assert c.curve.meta["dask"]["workers"] == 2 and c._status.endswith(" on 2 Dask workers")
    np.testing.assert_array_equal(c.curve.losses, ls.line(steps=11, span=(-0.5, 1.5), progress=False).losses)
    w.close()
    c.close()
    with pytest.raises(ValueError, match="unknown key"):
        lw.SurfaceWidget(ls, compute={"store": "x"})
    with pytest.raises(ValueError, match="evaluator='fast'"):
        lw.CurveWidget(ls, compute={"evaluator": "fast"})


def test_workers_under_dasks_malloc_trim_threshold_get_a_warning_once(client, small):
    """Dask's default MALLOC_TRIM_THRESHOLD_ makes CPU workers 3x slower: the kernel says so, once per client;
    the fixture's cluster (started with worker_environ()) gets no warning."""
    import warnings

    assert "MALLOC_TRIM_THRESHOLD_" not in lwd.worker_environ()
    assert all(env == {} for env, _cuda in client.run(lwd._allocator_env).values())
    model, data = small
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        ls.line(steps=5, progress=False, client=client)
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
    other = distributed.Client(cluster)
    try:
        with pytest.warns(RuntimeWarning, match="MALLOC_TRIM_THRESHOLD_.*worker_environ"):
            first = ls.line(steps=5, progress=False, client=other)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            again = ls.line(steps=5, progress=False, client=other)  # once per client
        np.testing.assert_array_equal(first.losses, again.losses)
    finally:
        other.close()
        cluster.close()
