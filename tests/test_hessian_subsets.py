"""``samples=`` and ``spread=`` on every Hessian computation: each value against the dense Hessian of the loss on
the subset drawn independently here (``torch.randperm`` of a generator seeded 0, as ``plane(samples=)`` draws)."""
import numpy as np
import pytest
import torch
from torch import nn

import landscape_widgets as lw
from landscape_widgets.hessian.spread import describe_spread

from _hessian_cases import classification_data, dense_hessian, flat, small_mlp
from helpers import assert_same, snapshot

N, n = 120, 40
LOSS = nn.CrossEntropyLoss()


@pytest.fixture(scope="module")
def case():
    model = small_mlp()
    x, y = classification_data(model, n=N)
    return model, x, y


def draw(count=1, size=n, seed=0):
    """The disjoint subsets' indices, drawn as documented: consecutive slices of one permutation, each sorted."""
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(seed))
    return [perm[k * size:(k + 1) * size].sort().values for k in range(count)]


def eigs(model, x, y):
    return np.linalg.eigvalsh(dense_hessian(model, LOSS, x, y))


def test_spectrum_on_a_subset_is_the_subsets_hessian(case, tmp_path):
    model, x, y = case
    snap = snapshot(model)
    ls = lw.Landscape(model, LOSS, (x, y))
    spec = ls.spectrum(k=3, bottom=1, density=False, trace=False, tol=1e-10, samples=n, progress=False)
    idx, = draw()
    w = eigs(model, x[idx], y[idx])
    np.testing.assert_allclose(spec.top_eigenvalues, w[::-1][:3], rtol=1e-8)
    np.testing.assert_allclose(spec.bottom_eigenvalues, w[:1], rtol=1e-7, atol=1e-9)
    assert spec.data["num_samples"] == n and spec.data["subset_of"] == N
    full = eigs(model, x, y)
    assert abs(full[-1] - w[-1]) > 1e-6  # the subset's Hessian is another matrix: the test can tell them apart
    assert spec.curvature == "hessian" and spec.spread is None
    assert_same(model, snap)
    # saved and loaded, the subset stays recorded
    again = lw.load(spec.save(tmp_path / "spec"))
    assert again.data == spec.data and again.curvature == "hessian"


def test_spread_over_disjoint_subsets(case):
    model, x, y = case
    ls = lw.Landscape(model, LOSS, (x, y))
    spec = ls.spectrum(k=2, bottom=1, density=True, steps=10, runs=2, trace=True, trace_samples=30, tol=1e-10,
                       samples=n, spread=3, progress=False)
    parts = draw(3)
    assert len(set(torch.cat(parts).tolist())) == 3 * n  # disjoint
    lmax = [eigs(model, x[i], y[i])[-1] for i in parts]
    lmin = [eigs(model, x[i], y[i])[0] for i in parts]
    q = spec.spread["quantities"]
    np.testing.assert_allclose(q["lambda_max"]["values"], lmax, rtol=1e-8)
    np.testing.assert_allclose(q["lambda_min"]["values"], lmin, rtol=1e-7, atol=1e-9)
    assert q["lambda_max"]["mean"] == pytest.approx(np.mean(lmax), rel=1e-8)
    assert q["lambda_max"]["std"] == pytest.approx(np.std(lmax, ddof=1), rel=1e-6)
    assert spec.spread["subsets"] == 3 and spec.spread["samples"] == n
    assert spec.lambda_max == pytest.approx(lmax[0], rel=1e-8)  # the values are the first subset's
    assert spec.density is not None  # the density on the first subset only
    text = spec.describe_spread()
    assert text.startswith("λmax ") and "over 3 subsets of 40" in text
    # a trace per subset: Hutch++ on each subset's Hessian, within its error of the dense trace
    tr = [np.trace(dense_hessian(model, LOSS, x[i], y[i])) / spec.num_parameters for i in parts]
    assert np.all(np.abs(np.array(q["trace_over_n"]["values"]) - tr) < 5 * spec.trace_stderr / spec.num_parameters
                  + 1e-9)


def test_spread_checks_its_arguments(case):
    model, x, y = case
    ls = lw.Landscape(model, LOSS, (x, y))
    with pytest.raises(ValueError, match="spread= needs samples="):
        ls.spectrum(spread=3, progress=False)
    with pytest.raises(ValueError, match=r"at most 3 of 40"):
        ls.spectrum(samples=n, spread=4, progress=False)
    with pytest.raises(ValueError, match="spread"):
        ls.spectrum(samples=n, spread=1, progress=False)


def test_trust_on_a_subset_and_its_spread(case):
    model, x, y = case
    ls = lw.Landscape(model, LOSS, (x, y))
    surf = ls.plane(resolution=3, progress=False)
    panel = ls.trust(surf, samples=n, tol=1e-10, trace_samples=30, progress=False)
    idx, = draw()
    H = dense_hessian(model, LOSS, x[idx], y[idx])
    for d, kappa in zip(surf.directions, panel["kappa"]):
        v = flat(d, model)
        assert kappa == pytest.approx(v @ H @ v / (v @ v), rel=1e-8)
    w = np.linalg.eigvalsh(H)
    assert panel["lambda_max"] == pytest.approx(w[-1], rel=1e-8)
    assert panel["data"]["num_samples"] == n and panel["data"]["subset_of"] == N
    # the same subset again: its facts are kept (no second eigen-solve), another size is other data
    again = ls.trust(surf, samples=n, tol=1e-10, trace_samples=30, progress=False)
    assert again["reused_hessian_facts"] and again["lambda_max"] == panel["lambda_max"]
    other = ls.trust(surf, samples=2 * n, tol=1e-10, trace_samples=30, progress=False)
    assert not other["reused_hessian_facts"]
    spread = ls.trust(surf, samples=n, spread=2, tol=1e-10, trace_samples=30, progress=False)
    parts = draw(2)
    q = spread["spread"]["quantities"]
    np.testing.assert_allclose(q["lambda_max"]["values"], [eigs(model, x[i], y[i])[-1] for i in parts],
                               rtol=1e-8)
    v = flat(surf.directions[0], model)
    H1 = dense_hessian(model, LOSS, x[parts[1]], y[parts[1]])
    assert q["kappa_d1"]["values"][1] == pytest.approx(v @ H1 @ v / (v @ v), rel=1e-8)


def test_plane_trust_uses_the_planes_subset(case):
    model, x, y = case
    ls = lw.Landscape(model, LOSS, (x, y))
    surf = ls.plane(resolution=3, samples=n, trust=True, progress=False)
    idx, = draw()
    w = eigs(model, x[idx], y[idx])
    assert surf.trust["lambda_max"] == pytest.approx(w[-1], rel=1e-5)
    assert surf.trust["data"] == surf.data


def test_hessian_plane_on_a_subset(case):
    model, x, y = case
    ls = lw.Landscape(model, LOSS, (x, y))
    surf = ls.plane(directions="hessian", resolution=3, samples=n, progress=False)
    idx, = draw()
    w, V = np.linalg.eigh(dense_hessian(model, LOSS, x[idx], y[idx]))
    assert surf.lambda_max == pytest.approx(w[-1], rel=1e-6)
    v = flat(surf.directions[0], model)
    assert abs(v @ V[:, -1]) / np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)
    # its trust panel takes the plane's eigenvalues only on the same data
    panel = ls.trust(surf, samples=n, progress=False)
    assert panel["lambda_max"] == surf.lambda_max
    full = ls.trust(surf, progress=False, tol=1e-8)
    assert full["lambda_max"] == pytest.approx(eigs(model, x, y)[-1], rel=1e-6)


def test_curvature_map_on_a_subset(case):
    model, x, y = case
    ls = lw.Landscape(model, LOSS, (x, y))
    surf = ls.plane(resolution=3, span=0.3, progress=False)
    cmap = ls.curvature_map(surf, resolution=2, tol=1e-8, samples=n, progress=False)
    idx, = draw()
    assert cmap.data["num_samples"] == n
    shifted = _at(model, surf, cmap.alphas[0], cmap.betas[1])
    w = eigs(shifted, x[idx], y[idx])
    assert cmap.lambda_max[0, 1] == pytest.approx(w[-1], rel=1e-6)
    assert cmap.lambda_min[0, 1] == pytest.approx(w[0], rel=1e-5, abs=1e-6 * abs(w[-1]))


def _at(model, surf, a, b):
    import copy
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in out.named_parameters():
            p.add_(surf.directions[0][name].double(), alpha=float(a))
            p.add_(surf.directions[1][name].double(), alpha=float(b))
    return out


def test_subsets_of_a_list_of_batches_are_consecutive_batches(case):
    model, x, y = case
    batches = [(x[i:i + 20], y[i:i + 20]) for i in range(0, N, 20)]
    ls = lw.Landscape(model, LOSS, batches)
    spec = ls.spectrum(k=1, bottom=0, density=False, trace=False, tol=1e-10, samples=n, spread=3, progress=False)
    q = spec.spread["quantities"]["lambda_max"]["values"]
    for k in range(3):
        part = slice(k * n, (k + 1) * n)
        assert q[k] == pytest.approx(eigs(model, x[part], y[part])[-1], rel=1e-8)
    assert spec.data["num_samples"] == n


def test_describe_spread_text():
    spread = {"subsets": 4, "samples": 256, "data": [],
              "quantities": {"lambda_max": {"values": [0.9, 0.95, 0.92, 0.91], "mean": 0.92, "std": 0.0216}}}
    assert describe_spread(spread) == "λmax 0.92 ± 0.022 over 4 subsets of 256"


def test_widget_shows_a_quick_panel_on_a_subset_then_the_full_one(case):
    model, x, y = case
    ls = lw.Landscape(model, LOSS, (x, y))
    shown = []
    w = lw.SurfaceWidget(ls, resolution=5, preview_samples=None, trust_samples=n, jobs=None)
    w.observe(lambda change: shown.append(dict(change["new"])), names=["_trust"])
    w.seed = 1  # a new plane: its panels as they come
    w.wait(timeout=120)
    panels = [p for p in shown if "lambda_max" in p and not p.get("partial")]
    quick, final = panels[0], panels[-1]
    idx, = draw()
    assert quick["refining"] and quick["data"] == {"num_samples": n, "num_batches": 1, "kind": "tensors",
                                                   "subset_of": N}
    assert quick["lambda_max"] == pytest.approx(eigs(model, x[idx], y[idx])[-1], rel=1e-2)
    assert "refining" not in final and final["data"]["num_samples"] == N and "subset_of" not in final["data"]
    assert final["lambda_max"] == pytest.approx(eigs(model, x, y)[-1], rel=1e-2)
    assert w.trust["data"]["num_samples"] == N and w.surface.trust is w.trust
    w.close()
    # trust_samples=None: one panel, on all the data
    w = lw.SurfaceWidget(ls, resolution=5, preview_samples=None, trust_samples=None)
    assert w.trust["data"]["num_samples"] == N
    with pytest.raises(ValueError, match="trust_samples"):
        lw.SurfaceWidget(ls, trust_samples=0)
    w.close()
