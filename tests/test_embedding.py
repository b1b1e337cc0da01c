"""lw.embed / traj.embed: PCA, UMAP, autoencoder, trustworthiness and reconstruction error against exact references."""
import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.manifold import trustworthiness as sk_trustworthiness
from torch import nn

import landscape_widgets as lw

from _trajdata import trained


@pytest.fixture(scope="module")
def run():
    return trained(epochs=12)


def venna_kaski(X, Y, k):
    """T(k) = 1 - 2 / (n k (2n - 3k - 1)) sum_i sum_{j in U_i^k} (r(i, j) - k), written out from the paper."""
    n = len(X)
    dx = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    dy = ((Y[:, None, :] - Y[None, :, :]) ** 2).sum(-1)
    penalty = 0
    for i in range(n):
        rank_x = {j: r for r, j in enumerate([j for j in np.argsort(dx[i], kind="stable") if j != i], start=1)}
        nn_y = [j for j in np.argsort(dy[i], kind="stable") if j != i][:k]
        penalty += sum(max(0, rank_x[j] - k) for j in nn_y)
    return 1 - 2.0 / (n * k * (2 * n - 3 * k - 1)) * penalty


def relative_error(X, X_hat):
    X = X.astype(np.float64)
    return ((X - X_hat) ** 2).sum() / ((X - X.mean(0)) ** 2).sum()


@pytest.mark.parametrize("dims", [2, 3])
def test_pca_embedding_matches_sklearn_and_identities(run, dims):
    _, traj, _ = run
    X = traj.matrix().astype(np.float64)
    emb = traj.embed(method="pca", dims=dims)
    ref = PCA(n_components=dims, svd_solver="full").fit(X)
    ref_coords = ref.transform(X)
    signs = np.sign((emb.coords * ref_coords).sum(0))
    np.testing.assert_allclose(emb.coords, ref_coords * signs, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(emb.explained_variance, ref.explained_variance_ratio_, rtol=1e-9)
    # in-sample: the relative reconstruction error is the variance the components leave out
    assert emb.reconstruction_error == pytest.approx(1 - ref.explained_variance_ratio_.sum(), rel=1e-8, abs=1e-12)
    assert emb.reconstruction_error == pytest.approx(relative_error(X, emb.inverse_transform(emb.coords)), rel=1e-8)
    k = emb.meta["n_neighbors"]
    assert k == 5 < len(X) / 2
    assert emb.trustworthiness == pytest.approx(sk_trustworthiness(X, emb.coords, n_neighbors=k), abs=1e-12)
    assert emb.trustworthiness == pytest.approx(venna_kaski(X, emb.coords, k), abs=1e-12)
    np.testing.assert_array_equal(emb.steps, traj.steps)
    np.testing.assert_array_equal(emb.run, 0)


def test_trustworthiness_k_and_hand_formula_on_a_scrambled_embedding(run):
    _, traj, _ = run
    X = traj.matrix().astype(np.float64)
    emb = traj.embed(trust_neighbors=3)
    assert emb.meta["n_neighbors"] == 3
    assert emb.trustworthiness == pytest.approx(venna_kaski(X, emb.coords, 3), abs=1e-12)
    rng = np.random.default_rng(0)
    scrambled = rng.permutation(emb.coords)  # a bad embedding must score lower, by the same formula
    assert venna_kaski(X, scrambled, 3) == pytest.approx(sk_trustworthiness(X, scrambled, n_neighbors=3))
    assert venna_kaski(X, scrambled, 3) < emb.trustworthiness
    with pytest.raises(ValueError, match="trust_neighbors"):
        traj.embed(trust_neighbors=7)  # k < n / 2 = 6.5


def test_autoencoder_is_deterministic_and_its_error_is_its_decoder(run):
    _, traj, _ = run
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    a = traj.embed(method="autoencoder", seed=3, epochs=300)
    b = traj.embed(method="autoencoder", seed=3, epochs=300)
    c = traj.embed(method="autoencoder", seed=4, epochs=300)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(x, y) for x, y in zip(np.random.get_state(), np_state))
    np.testing.assert_array_equal(a.coords, b.coords)
    assert a.reconstruction_error == b.reconstruction_error
    assert not np.allclose(a.coords, c.coords)
    X = traj.matrix()
    # decoder(encoder(x)) mapped back to parameters, against the data, by the formula
    assert a.reconstruction_error == pytest.approx(relative_error(X, a.inverse_transform(a.coords)), rel=1e-6)
    assert a.explained_variance is None and 0 <= a.reconstruction_error < 1
    assert a.trustworthiness == pytest.approx(sk_trustworthiness(X.astype(np.float64), a.coords, n_neighbors=5))


def test_autoencoder_beyond_its_pca_components_counts_the_rest_exactly():
    rng = np.random.default_rng(1)
    traj = lw.Trajectory()
    model = nn.Linear(20, 10)
    for _ in range(80):  # 80 snapshots: more than the 64 PCA components the network sees
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.from_numpy(rng.standard_normal(p.shape).astype(np.float32)))
        traj.record(model)
    emb = traj.embed(method="autoencoder", epochs=50)
    assert emb.meta["autoencoder"]["pca_components"] == 64
    X = traj.matrix()
    assert emb.reconstruction_error == pytest.approx(relative_error(X, emb.inverse_transform(emb.coords)), rel=1e-6)


@pytest.mark.slow
def test_umap_is_deterministic_for_a_seed(run):
    _, traj, _ = run
    np_state = np.random.get_state()
    a = traj.embed(method="umap", seed=0, n_neighbors=5)
    b = traj.embed(method="umap", seed=0, n_neighbors=5)
    c = traj.embed(method="umap", seed=1, n_neighbors=5)
    assert all(np.array_equal(x, y) for x, y in zip(np.random.get_state(), np_state))
    np.testing.assert_array_equal(a.coords, b.coords)
    assert not np.allclose(a.coords, c.coords)
    assert a.meta["umap_n_neighbors"] == 5 and a.meta["n_neighbors"] == 5
    X = traj.matrix().astype(np.float64)
    assert a.trustworthiness == pytest.approx(sk_trustworthiness(X, a.coords, n_neighbors=5))
    if a.reconstruction_error is None:
        assert "inverse_transform" in a.meta["reconstruction_error_reason"]
    else:
        assert a.reconstruction_error == pytest.approx(relative_error(X, a.inverse_transform(a.coords)), rel=1e-5)
    skipped = traj.embed(method="umap", seed=0, n_neighbors=5, umap_inverse=False)
    np.testing.assert_array_equal(skipped.coords, a.coords)
    assert skipped.reconstruction_error is None and "umap_inverse=True" in skipped.meta["reconstruction_error_reason"]


def test_several_runs_embed_together_and_round_trip(tmp_path, run):
    _, traj_a, _ = run
    _, traj_b, _ = trained(epochs=6, seed=1)
    emb = lw.embed([traj_a, traj_b], method="pca", labels=["sgd", "sgd seed 1"])
    X = np.concatenate([traj_a.matrix(), traj_b.matrix()]).astype(np.float64)
    ref = PCA(n_components=2, svd_solver="full").fit(X)
    np.testing.assert_allclose(np.abs(emb.coords), np.abs(ref.transform(X)), rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(emb.run, [0] * len(traj_a) + [1] * len(traj_b))
    np.testing.assert_array_equal(emb.steps, np.concatenate([traj_a.steps, traj_b.steps]))
    assert emb.meta["labels"] == ["sgd", "sgd seed 1"]
    back = lw.load(emb.save(tmp_path / "emb"))
    assert isinstance(back, lw.Embedding)
    np.testing.assert_array_equal(back.coords, emb.coords)
    np.testing.assert_array_equal(back.losses, emb.losses)
    assert back.trustworthiness == emb.trustworthiness
    assert back.reconstruction_error == emb.reconstruction_error
    np.testing.assert_array_equal(back.explained_variance, emb.explained_variance)
    assert back.meta["method"] == "pca"
    with pytest.raises(ValueError, match="no inverse transform"):
        back.inverse_transform(back.coords)


def test_degenerate_trajectories_give_clear_errors():
    one = lw.Trajectory().record(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="at least 3 snapshots"):
        one.embed()
    model = nn.Linear(3, 2)
    same = lw.Trajectory()
    for _ in range(5):
        same.record(model)
    for method in ("pca", "umap", "autoencoder"):
        with pytest.raises(ValueError, match="all 5 snapshots are identical"):
            same.embed(method=method)
    with pytest.raises(ValueError, match="method='tsne'"):
        same.embed(method="tsne")
    with pytest.raises(ValueError, match="dims"):
        same.embed(dims=4)
    with pytest.raises(ValueError, match="empty"):
        lw.embed(lw.Trajectory())
    with pytest.raises(TypeError, match="lw.Trajectory"):
        lw.embed([np.zeros((3, 3))])
    other = lw.Trajectory().record(nn.Linear(4, 2))
    with pytest.raises(ValueError, match="one architecture"):
        lw.embed([same, other])
    nan = lw.Trajectory()
    for v in (0.0, 1.0, float("nan")):
        with torch.no_grad():
            model.bias.fill_(v)
        nan.record(model)
    with pytest.raises(ValueError, match=r"snapshots \[2\] contain NaN"):
        nan.embed()


def test_snapshot_pca_components_and_rank_deficient_paths():
    from landscape_widgets.embedding import BLOCK, SnapshotPCA

    rng = np.random.default_rng(3)
    X = rng.standard_normal((7, BLOCK + 123)).astype(np.float32)  # more than one column block
    pca = SnapshotPCA(X)
    ref = PCA(n_components=3, svd_solver="full").fit(X.astype(np.float64))
    comps = pca.components(3)
    signs = np.sign((comps * ref.components_).sum(1))
    np.testing.assert_allclose(comps, ref.components_ * signs[:, None], atol=1e-9)
    np.testing.assert_allclose(pca.coords(3), ref.transform(X.astype(np.float64)) * signs, atol=1e-8)
    np.testing.assert_allclose(pca.inverse_transform(pca.coords(3)), ref.inverse_transform(ref.transform(
        X.astype(np.float64))), atol=1e-8)
    assert pca.rank == 6  # 7 centred rows
    # a straight path spans one direction: the second coordinate is zero, not a crash
    model = nn.Linear(3, 2)
    line = lw.Trajectory()
    for k in range(4):
        with torch.no_grad():
            model.bias.fill_(float(k))
        line.record(model)
    emb = line.embed()
    np.testing.assert_allclose(emb.coords[:, 1], 0.0)
    np.testing.assert_allclose(emb.explained_variance, [1.0, 0.0])
    assert emb.reconstruction_error == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="span only 1 direction"):
        SnapshotPCA(line.matrix()).components(2)
