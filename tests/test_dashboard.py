"""lw.Dashboard: every view of one landscape, the numbers of each equal to the direct computation, one shared
worker thread for recomputes, one offline page."""
from __future__ import annotations

import asyncio
import copy
import threading

import numpy as np
import pytest
from torch import nn

import landscape_widgets as lw
from landscape_widgets import examples

from _trajdata import trained


@pytest.fixture(scope="module")
def setup():
    x, y = examples.digits()
    x, y = x[:300], y[:300]
    model = examples.digits_mlp(seed=0)
    start = copy.deepcopy(model.state_dict())
    traj = lw.Trajectory().record(model)
    examples.train(model, (x, y), epochs=5, trajectory=traj)
    return lw.Landscape(model, nn.CrossEntropyLoss(), (x, y), device="cpu"), start, traj


def test_views_equal_their_direct_computations(setup, tmp_path):
    ls, start, traj = setup
    d = lw.Dashboard(ls, trajectory=traj, start=start, resolution=7, spectrum=False, title="all views")
    assert d.error == ""
    assert d.views == [d.curve, d.surface, d.pca_surface, d.trajectory] and d.spectrum is None
    np.testing.assert_array_equal(d.surface.surface.losses,
                                  ls.plane(resolution=7, progress=False).losses)
    pca = ls.plane(directions="pca", trajectory=traj, resolution=7, progress=False)
    np.testing.assert_allclose(d.pca_surface.surface.losses, pca.losses, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(d.pca_surface.surface.path, pca.path, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(d.curve.curve.losses, ls.interpolate(start, steps=51, progress=False).losses)
    np.testing.assert_array_equal(d.trajectory.embedding.coords, lw.embed(traj).coords)
    assert "repeat(auto-fit" in d.layout.grid_template_columns  # one column in a narrow side panel
    page = d.to_html(tmp_path / "dash.html")
    text = open(page).read()
    for view in ("curve", "surface", "trajectory"):
        assert f'"_view":"{view}"' in text
    assert "all views" in text
    d.close()


def test_without_trajectory_or_start():
    model = nn.Linear(4, 3)
    x, y = examples.digits()[0][:50, :4], examples.digits()[1][:50] % 3
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y), device="cpu")
    d = lw.Dashboard(ls, resolution=5, spectrum=False)
    assert d.trajectory is None and d.curve.curve.meta["kind"] == "line"
    with pytest.raises(TypeError, match="title"):
        lw.Dashboard(ls, title=3)


def test_every_job_shares_one_worker_thread(setup, monkeypatch):
    """The first results too: views created at once must not compute at once (they fought over the CPU)."""
    from landscape_widgets.widgets._base import LiveWidget

    ls, start, traj = setup
    threads, running, overlap = set(), [0], [False]
    real_run = LiveWidget._run

    def recording(self, *args):
        threads.add(threading.get_ident())
        running[0] += 1
        overlap[0] |= running[0] > 1
        try:
            return real_run(self, *args)
        finally:
            running[0] -= 1

    monkeypatch.setattr(LiveWidget, "_run", recording)

    async def settle(d):
        for w in d.views:
            while w._finished < w._generation:
                await asyncio.sleep(0.005)
            w._drain()

    async def go():
        d = lw.Dashboard(ls, trajectory=traj, start=start, resolution=5, spectrum=False)
        await settle(d)
        assert all(w._jobs.jobs is d._jobs for w in d.views)
        d.surface.seed = 3
        d.trajectory.dims = 3
        d.curve.steps = 11
        await settle(d)
        d.surface.close()  # closing one view leaves the others' worker running
        d.trajectory.dims = 2
        await settle(d)
        return d
    d = asyncio.run(asyncio.wait_for(go(), 300))
    assert len(threads) == 1 and threading.get_ident() not in threads and not overlap[0]
    assert d.surface.surface.meta["seed"] == 3 and d.trajectory.embedding.coords.shape[1] == 2
    np.testing.assert_array_equal(d.surface.surface.losses, ls.plane(resolution=5, seed=3, progress=False).losses)
    assert len(d.curve.curve.losses) == 11
    d.close()


def test_spectrum_view_follows_the_surface(setup, tmp_path):
    ls, start, traj = setup
    d = lw.Dashboard(ls, trajectory=traj, resolution=5, spectrum_options={"k": 1, "bottom": 0, "density": False})
    assert d.views == [d.curve, d.surface, d.pca_surface, d.spectrum, d.trajectory]
    assert d.error == ""
    assert d.spectrum._surface is d.surface
    assert '"_view":"spectrum"' in open(d.to_html(tmp_path / "d.html")).read()
    d.close()
