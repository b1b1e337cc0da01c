"""lw.TrajectoryWidget: the embedding it shows equals lw.embed, controls recompute, browser values are checked,
errors show in the widget, and the offline page carries the view."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest
from torch import nn

import landscape_widgets as lw
from landscape_widgets.export import bundle_source

from _trajdata import trained


@pytest.fixture(scope="module")
def traj():
    return trained(epochs=8)[1]


def f32(buf, shape=None):
    a = np.frombuffer(bytes(buf), dtype="<f4")
    return a if shape is None else a.reshape(shape)


def test_shows_the_embedding_and_its_measures(traj):
    w = lw.TrajectoryWidget(traj, title="path")
    ref = lw.embed(traj)
    assert w._state == "done" and w.error == ""
    assert w._shape == [len(traj), 2]
    np.testing.assert_array_equal(f32(w._coords, (len(traj), 2)), ref.coords.astype(np.float32))
    np.testing.assert_array_equal(f32(w._steps), traj.steps.astype(np.float32))
    np.testing.assert_array_equal(f32(w._losses), traj.losses.astype(np.float32))
    m = w._measures
    assert m["trustworthiness"] == ref.trustworthiness and m["n_neighbors"] == ref.meta["n_neighbors"]
    assert m["reconstruction_error"] == ref.reconstruction_error
    assert m["explained_variance"] == ref.explained_variance.tolist()
    assert w.embedding.meta["method"] == "pca"


def test_controls_recompute_with_preview(traj):
    w = lw.TrajectoryWidget(traj, epochs=50)
    w.method = "autoencoder"
    assert w.preview.meta["method"] == "pca" and w.embedding.meta["method"] == "autoencoder"
    ref = lw.embed(traj, method="autoencoder", epochs=50)
    np.testing.assert_array_equal(f32(w._coords), ref.coords.astype(np.float32).ravel())
    assert w._measures["reconstruction_error"] == ref.reconstruction_error
    assert w._measures["explained_variance"] is None
    w.dims = 3
    assert w._shape == [len(traj), 3] and w.embedding.coords.shape == (len(traj), 3)
    w.seed = 5
    assert w.embedding.meta["seed"] == 5


def test_browser_values_are_checked(traj):
    w = lw.TrajectoryWidget(traj)
    w.set_state({"dims": "3"})  # a <select> sends text
    assert w.dims == 3 and w._shape[1] == 3
    w.set_state({"method": "tsne"})
    assert w.method == "pca" and "method must be one of" in w.error
    w.set_state({"n_neighbors": 1000})
    assert w.n_neighbors == 200 and "clamped to 200" in w.error
    w.set_state({"color_by": "loss"})
    assert w.color_by == "loss"
    w.set_state({"color_by": "<script>"})
    assert w.color_by == "loss" and "color_by" in w.error


def test_python_values_are_checked(traj):
    with pytest.raises(ValueError, match="method='tsne'"):
        lw.TrajectoryWidget(traj, method="tsne")
    with pytest.raises(ValueError, match="dims"):
        lw.TrajectoryWidget(traj, dims=1)
    with pytest.raises(ValueError, match="labels has 2 entries for 1"):
        lw.TrajectoryWidget(traj, labels=["a", "b"])
    with pytest.raises(TypeError, match="lw.Trajectory"):
        lw.TrajectoryWidget(np.zeros((3, 3)))


def test_errors_show_in_the_widget():
    frozen = lw.Trajectory()
    model = nn.Linear(3, 2)
    for _ in range(4):
        frozen.record(model)
    w = lw.TrajectoryWidget(frozen)
    assert w._state == "error" and "identical" in w.error


def test_several_runs_and_offline_page(tmp_path, traj):
    other = trained(epochs=5, seed=1)[1]
    w = lw.TrajectoryWidget([traj, other], labels=["seed 0", "seed 1"], title="two runs")
    assert w._labels == ["seed 0", "seed 1"]
    np.testing.assert_array_equal(f32(w._run_index), [0] * len(traj) + [1] * len(other))
    page = (tmp_path / "t.html")
    w.to_html(page)
    text = page.read_text()
    assert '"_view":"trajectory"' in text and "two runs" in text
    assert "lw-measures" in bundle_source()  # the bundle has the trajectory view


@pytest.mark.slow
def test_umap_neighbours_are_clamped_to_the_snapshots(traj):
    w = lw.TrajectoryWidget(traj, method="umap", n_neighbors=50)
    assert w.embedding.meta["umap_n_neighbors"] == len(traj) - 1 and w._measures["umap_n_neighbors"] == len(traj) - 1


def test_computes_in_the_worker_thread_inside_an_event_loop(traj):
    async def go():
        w = lw.TrajectoryWidget(traj, epochs=30)
        w.method = "autoencoder"
        while w._finished < w._generation:
            await asyncio.sleep(0.005)
        w._drain()
        return w
    w = asyncio.run(asyncio.wait_for(go(), 120))
    assert w._state == "done" and w.embedding.meta["method"] == "autoencoder"
    w.close()
