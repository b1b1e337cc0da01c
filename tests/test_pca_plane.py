"""ls.plane(directions="pca", trajectory=traj): Li et al. 2018 §7 against sklearn's PCA and exact losses."""
import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from torch import nn
from torch.func import functional_call

import landscape_widgets as lw
from landscape_widgets.directions.pca import random_walk_explained_variance

from _trajdata import same, snapshot, trained


@pytest.fixture(scope="module")
def run():
    model, traj, data = trained(epochs=10)
    return model, traj, data, lw.Landscape(model, nn.CrossEntropyLoss(), data)


def flat(d, names):
    return torch.cat([d[n].detach().reshape(-1).double() for n in names]).numpy()


def test_directions_and_path_equal_a_manual_projection_on_sklearn_pca(run):
    model, traj, _, ls = run
    before = snapshot(model)
    surf = ls.plane(directions="pca", trajectory=traj, ignore=None, resolution=5, progress=False)
    assert same(before, snapshot(model))
    names = [n for n, _ in model.named_parameters()]
    theta = flat(dict(model.named_parameters()), names)
    M = traj.matrix().astype(np.float64) - theta  # rows theta_i - theta_final
    ref = PCA(n_components=2, svd_solver="full").fit(M)
    D = np.stack([flat(d, names) for d in surf.directions], axis=1)
    signs = np.sign((D * ref.components_.T).sum(0))
    np.testing.assert_allclose(D, ref.components_.T * signs, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(D, axis=0), 1.0, rtol=1e-6)  # raw parameter units
    assert abs(D[:, 0] @ D[:, 1]) < 1e-6
    np.testing.assert_allclose(surf.path, (M @ ref.components_.T) * signs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(surf.path[-1], 0.0, atol=1e-6)  # the model itself is the final snapshot
    # (the library differences theta_i - theta_final in float32, the reference in float64)
    np.testing.assert_allclose(surf.meta["explained_variance"], ref.explained_variance_ratio_, rtol=1e-6)
    assert surf.meta["normalization"] == "none" and surf.meta["direction_kind"] == "pca"
    assert surf.meta["path_steps"] == traj.steps.tolist() and len(surf.meta["path_losses"]) == len(traj)
    assert surf.meta["trajectory_end_distance"] == pytest.approx(0.0, abs=1e-6)


def test_grid_covers_the_path_and_losses_are_exact(run):
    model, traj, (x, y), ls = run
    surf = ls.plane(directions="pca", trajectory=traj, resolution=(7, 5), progress=False)
    path = surf.path
    for axis, grid in ((0, surf.alphas), (1, surf.betas)):
        extent = max(path[:, axis].max(), 0) - min(path[:, axis].min(), 0)
        assert grid[0] == pytest.approx(min(path[:, axis].min(), 0) - 0.25 * extent)
        assert grid[-1] == pytest.approx(max(path[:, axis].max(), 0) + 0.25 * extent)
    d1, d2 = surf.directions
    params = dict(model.named_parameters())
    for i, j in ((0, 0), (6, 4), (3, 2), (5, 1)):
        a, b = surf.alphas[i], surf.betas[j]
        w = {n: p.detach() + a * d1[n] + b * d2[n] for n, p in params.items()}
        with torch.no_grad():
            exact = nn.functional.cross_entropy(functional_call(model, w, (x,)), y).item()
        assert surf.losses[i, j] == pytest.approx(exact, rel=1e-5)
    # biases take no part by default (ignore="biasbn", as Li et al.'s ignore_biasbn)
    assert all(not d1[n].any() for n in params if params[n].dim() <= 1)
    explicit = ls.plane(directions="pca", trajectory=traj, span=0.5, resolution=3, progress=False)
    np.testing.assert_allclose(explicit.alphas, [-0.5, 0, 0.5])
    np.testing.assert_allclose(explicit.path, surf.path)
    assert ls.plane(resolution=3, progress=False).alphas[0] == -1.0  # random planes keep span 1.0


def test_normalized_pca_directions_project_the_path_by_least_squares(run):
    model, traj, _, ls = run
    surf = ls.plane(directions="pca", trajectory=traj, normalization="layer", resolution=3, progress=False)
    names = [n for n, _ in model.named_parameters()]
    D = np.stack([flat(d, names) for d in surf.directions], axis=1)
    M = traj.matrix().astype(np.float64) - flat(dict(model.named_parameters()), names)
    keep = np.concatenate([np.full(p.numel(), p.dim() > 1) for p in model.parameters()])
    M[:, ~keep] = 0.0
    # the fitted path is the orthogonal projection of each row on span(d1, d2)
    proj = M @ D @ np.linalg.inv(D.T @ D)
    np.testing.assert_allclose(surf.path, proj, rtol=1e-5, atol=1e-6)
    assert surf.meta["normalization"] == "layer"


def test_random_walk_baseline_matches_simulated_walks():
    n, count = 12, 3
    for dim in (40, 5):  # Bartlett's Wishart draw (dim >= n) and the direct draw
        ours = random_walk_explained_variance(n, dim, count, seed=0, draws=400)
        rng = np.random.default_rng(123)
        sim = np.zeros(count)
        for _ in range(400):
            walk = np.cumsum(rng.standard_normal((n, dim)), axis=0)
            sim += PCA(n_components=count).fit(walk - walk[-1]).explained_variance_ratio_
        np.testing.assert_allclose(ours, sim / 400, atol=0.02)
    np.testing.assert_array_equal(random_walk_explained_variance(n, 10 ** 6, 2, seed=5),
                                  random_walk_explained_variance(n, 10 ** 6, 2, seed=5))
    # a walk in very high dimension: Z Z^T -> dim * I, so the ratios tend to the spectrum of C L L^T C
    L, C = np.tril(np.ones((n, n))), np.eye(n) - 1.0 / n
    ev = np.linalg.eigvalsh(C @ L @ L.T @ C)[::-1]
    np.testing.assert_allclose(random_walk_explained_variance(n, 10 ** 9, 2, seed=1), ev[:2] / ev.sum(), atol=1e-3)


def test_baseline_in_meta_and_path_survives_save(tmp_path, run):
    _, traj, _, ls = run
    surf = ls.plane(directions="pca", trajectory=traj, resolution=3, progress=False)
    n = len(traj)
    num = sum(p.numel() for p in ls.model.parameters() if p.dim() > 1)
    np.testing.assert_allclose(surf.meta["random_walk_explained_variance"],
                               random_walk_explained_variance(n, num, 2, seed=0))
    back = lw.load(surf.save(tmp_path / "pca"))
    np.testing.assert_array_equal(back.path, surf.path)
    assert back.meta["explained_variance"] == surf.meta["explained_variance"]


def test_pca_plane_errors_are_clear(run):
    model, traj, data, ls = run
    with pytest.raises(ValueError, match="trajectory=lw.Trajectory"):
        ls.plane(directions="pca", progress=False)
    with pytest.raises(TypeError, match="lw.Trajectory"):
        ls.plane(directions="pca", trajectory=[1, 2], progress=False)
    short = lw.Trajectory().record(model)
    with pytest.raises(ValueError, match="at least 3 snapshots"):
        ls.plane(directions="pca", trajectory=short, progress=False)
    frozen = lw.Trajectory()
    for _ in range(4):
        frozen.record(model)
    with pytest.raises(ValueError, match="identical"):
        ls.plane(directions="pca", trajectory=frozen, progress=False)
    other = lw.Trajectory()
    for _ in range(3):
        other.record(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="no record of parameter"):
        ls.plane(directions="pca", trajectory=other, progress=False)


def test_straight_path_cannot_make_a_plane(run):
    model, _, _, ls = run
    straight = lw.Trajectory()
    for k in (3, 2, 1, 0):  # theta_i - theta_final all along one direction
        sd = {n: p.detach() + k * 0.01 for n, p in model.named_parameters()}
        straight.record(sd)
    with pytest.raises(ValueError, match="spans 1 direction"):
        ls.plane(directions="pca", trajectory=straight, progress=False)
