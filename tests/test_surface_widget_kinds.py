"""SurfaceWidget on PCA and Hessian planes: the same grids as Landscape.plane, and the path sent for drawing."""
import numpy as np
import pytest
from torch import nn

import landscape_widgets as lw
from _trajdata import trained
from helpers import SmallNet, small_data


def f32(buf):
    return np.frombuffer(bytes(buf), dtype="<f4")


def _same_up_to_axis_flips(a, b, rtol=1e-5):
    return any(np.allclose(a, bb, rtol=rtol, atol=1e-7)
               for bb in (b, b[::-1], b[:, ::-1], b[::-1, ::-1]))


def test_pca_plane_widget_draws_the_projected_path():
    model, traj, data = trained(epochs=6, n=300)
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    w = lw.SurfaceWidget(ls, directions="pca", trajectory=traj, resolution=13)
    ref = ls.plane(directions="pca", trajectory=traj, resolution=13, progress=False)
    assert w.error == "" and w._state == "done"
    np.testing.assert_allclose(w.surface.alphas, ref.alphas, rtol=1e-12)
    np.testing.assert_allclose(w.surface.betas, ref.betas, rtol=1e-12)
    np.testing.assert_allclose(w.surface.losses, ref.losses, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(w.surface.path, ref.path, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(f32(w._path).reshape(-1, 2), ref.path.astype(np.float32))
    assert w._path_steps == [int(s) for s in ref.meta["path_steps"]]
    np.testing.assert_allclose(f32(w._path_losses), np.array(ref.meta["path_losses"], dtype=np.float32),
                               equal_nan=True)
    assert w.surface.meta["explained_variance"] == ref.meta["explained_variance"]
    assert "PCA plane" in w._status and "random walk" in w._status
    w.span = 0.5  # a span change overrides the path-covering grid
    w.wait(timeout=120)
    np.testing.assert_allclose(w.surface.alphas[[0, -1]], [-0.5, 0.5])
    w.close()


def test_hessian_plane_widget_reuses_the_eigenvectors():
    model = SmallNet()
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), small_data(), device="cpu")
    w = lw.SurfaceWidget(ls, directions="hessian", resolution=11)
    ref = ls.plane(directions="hessian", resolution=11, progress=False)
    assert w.error == "" and w._path == b""
    np.testing.assert_allclose(w.surface.alphas, ref.alphas, rtol=1e-9)
    assert _same_up_to_axis_flips(w.surface.losses, ref.losses)
    assert w.surface.meta["lambda_max"] == pytest.approx(ref.meta["lambda_max"], rel=1e-6)
    assert w.surface.meta["direction_kind"] == "hessian" and "λmax" in w._status
    w.close()


def test_surface_widget_kind_errors():
    ls = lw.Landscape(SmallNet(), nn.CrossEntropyLoss(), small_data(), device="cpu")
    with pytest.raises(ValueError, match="directions='pca' needs trajectory"):
        lw.SurfaceWidget(ls, directions="pca")
    with pytest.raises(ValueError, match="directions='sideways' is not known"):
        lw.SurfaceWidget(ls, directions="sideways")


def test_seed_spread_median_iqr_and_sharpness_per_seed():
    """seeds=K draws the per-cell median of K random planes, the IQR on hover, one sharpness per seed."""
    ls = lw.Landscape(SmallNet(), nn.CrossEntropyLoss(), small_data(), device="cpu")
    w = lw.SurfaceWidget(ls, resolution=7, seed=2, seeds=3, span=0.5)
    assert w.error == "" and w._state == "done"
    planes = np.stack([ls.plane(resolution=7, seed=s, span=0.5, progress=False).losses for s in (2, 3, 4)])
    assert list(w.spread.seeds) == [2, 3, 4]
    np.testing.assert_allclose(w.surface.losses, np.median(planes, axis=0), rtol=1e-12)
    q25, q75 = np.percentile(planes, [25, 75], axis=0)
    np.testing.assert_allclose(f32(w._iqr).reshape(7, 7), (q75 - q25).astype(np.float32), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(f32(w._losses).reshape(7, 7), np.median(planes, axis=0).astype(np.float32))
    l0 = ls.loss()
    np.testing.assert_allclose(w.spread.sharpness, 100 * (planes.reshape(3, -1).max(1) - l0) / (1 + l0), rtol=1e-9)
    assert "median of 3 random planes" in w._status and "sharpness per seed" in w._status
    w.seeds = 1  # back to one plane: no spread on hover
    w.wait(timeout=120)
    assert w._iqr == b"" and w.surface.meta["seed"] == 2
    with pytest.raises(ValueError, match="seeds=0 is out of range"):
        w.seeds = 0
    w.close()
