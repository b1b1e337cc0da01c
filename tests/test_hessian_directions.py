"""The "hessian" direction kind: unit eigenvectors of lambda_max and of the most negative eigenvalue,
checked against the dense Hessian (tests/_hessian_cases.py) and against second differences of the surface."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import landscape_widgets as lw
from _hessian_cases import classification_data, dense_hessian, flat, small_cnn, small_mlp
from helpers import assert_same, snapshot
from landscape_widgets.directions import KINDS, make_directions

CE = nn.CrossEntropyLoss()


@pytest.fixture(scope="module", params=[small_mlp, small_cnn], ids=["mlp", "cnn"])
def case(request):
    model = request.param()
    x, y = classification_data(model, n=40)
    H = dense_hessian(model, CE, x, y)
    return model, x, y, H, np.linalg.eigh(H)


@pytest.fixture(scope="module")
def hessian_plane(case):
    model, x, y, _, _ = case
    return lw.Landscape(model, CE, (x, y)).plane(directions="hessian", resolution=5, progress=False)


def test_directions_are_the_extreme_unit_eigenvectors(case, hessian_plane):
    model, _, _, H, (w, V) = case
    surf = hessian_plane
    assert "hessian" in KINDS
    d1, d2 = (flat(d, model) for d in surf.directions)
    assert np.linalg.norm(d1) == pytest.approx(1.0, rel=1e-9) and np.linalg.norm(d2) == pytest.approx(1.0, rel=1e-9)
    assert surf.meta["lambda_max"] == pytest.approx(w[-1], rel=1e-4)
    assert surf.meta["lambda_min"] == pytest.approx(w[0], rel=1e-4)
    assert abs(d1 @ V[:, -1]) == pytest.approx(1.0, abs=1e-5) and abs(d2 @ V[:, 0]) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(H @ d1, surf.meta["lambda_max"] * d1, atol=1e-4 * w[-1])
    assert abs(surf.meta["cosine"]) < 1e-6  # eigenvectors of distinct eigenvalues are orthogonal
    assert surf.meta["direction_kind"] == "hessian" and surf.meta["normalization"] == "none"
    # deterministic sign: the entry of largest magnitude is positive
    assert d1[np.argmax(np.abs(d1))] > 0 and d2[np.argmax(np.abs(d2))] > 0


def test_second_difference_at_the_centre_matches_the_eigenvalues(case):
    model, x, y, _, (w, _) = case
    h = 1e-3
    surf = lw.Landscape(model, CE, (x, y)).plane(directions="hessian", resolution=3, span=h, progress=False)
    L = surf.losses
    assert (L[2, 1] - 2 * L[1, 1] + L[0, 1]) / h ** 2 == pytest.approx(w[-1], rel=1e-4)
    assert (L[1, 2] - 2 * L[1, 1] + L[1, 0]) / h ** 2 == pytest.approx(w[0], rel=1e-4)


def test_default_span_shows_a_visible_rise(case, hessian_plane):
    model, x, y, _, (w, _) = case
    surf = hessian_plane
    with torch.no_grad():
        L0 = float(CE(model(x), y))
    s = math.sqrt(2 * max(L0, 0.1) / w[-1])  # the documented rule
    assert surf.alphas[-1] == pytest.approx(s, rel=1e-4) and surf.betas[0] == pytest.approx(-s, rel=1e-4)
    assert surf.meta["span_scale"] == pytest.approx(s, rel=1e-4) and "lambda_max" in surf.meta["span_rule"]
    centre = surf.losses[2, 2]
    assert centre == pytest.approx(L0, rel=1e-10)
    # along d1 the mean of the two ends rises by about max(L0, 0.1): the gradient term cancels between +s and -s
    # (these random models are far from a minimum), the curvature term is lambda_max s^2 / 2 = max(L0, 0.1)
    assert (surf.losses[0, 2] + surf.losses[-1, 2]) / 2 - centre > 0.5 * max(L0, 0.1)


def test_random_planes_keep_span_one():
    model = small_mlp()
    x, y = classification_data(model)
    surf = lw.Landscape(model, CE, (x, y)).plane(resolution=3, progress=False)
    assert surf.alphas[0] == -1.0 and surf.alphas[-1] == 1.0


def test_hessian_line_is_the_top_eigenvector(case):
    model, x, y, _, (w, V) = case
    curve = lw.Landscape(model, CE, (x, y)).line(direction="hessian", steps=3, span=1e-3, progress=False)
    assert abs(flat(curve.direction, model) @ V[:, -1]) == pytest.approx(1.0, abs=1e-5)
    L = curve.losses
    assert (L[2] - 2 * L[1] + L[0]) / 1e-6 == pytest.approx(w[-1], rel=1e-4)
    assert curve.meta["lambda_min"] is None


def test_other_normalizations_apply_to_eigenvectors():
    model = small_mlp()
    x, y = classification_data(model)
    surf = lw.Landscape(model, CE, (x, y)).plane(directions="hessian", normalization="filter", resolution=3,
                                                 span=0.1, progress=False)
    assert surf.meta["normalization"] == "filter" and surf.meta["ignore"] == "biasbn"
    assert float(surf.directions[0]["0.bias"].abs().sum()) == 0.0  # biasbn zeroes the biases as for random
    w0 = model[0].weight.detach()
    np.testing.assert_allclose(surf.directions[0]["0.weight"].norm(dim=1), w0.norm(dim=1), rtol=1e-6)


def test_model_and_rng_untouched(small):
    model, (x, y) = small
    snap = snapshot(model)
    state = torch.get_rng_state()
    a = lw.Landscape(model, CE, (x, y)).plane(directions="hessian", resolution=3, progress=False, seed=3)
    b = lw.Landscape(model, CE, (x, y)).plane(directions="hessian", resolution=3, progress=False, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert_same(model, snap)
    for n in a.directions[0]:
        assert torch.equal(a.directions[0][n], b.directions[0][n])
    np.testing.assert_array_equal(a.losses, b.losses)


def test_kind_needs_the_loss_and_the_data():
    from landscape_widgets._model import PrivateModel

    private = PrivateModel(small_mlp(), torch.device("cpu"))
    with pytest.raises(TypeError, match="loss and the data"):
        make_directions("hessian", private, 2, argname="directions")


def test_cancel_during_the_eigen_solve(case):
    model, x, y, _, _ = case
    with pytest.raises(lw.Cancelled):
        lw.Landscape(model, CE, (x, y)).plane(directions="hessian", resolution=3, cancel=lambda: True,
                                              progress=False)


def test_dataloader_gives_the_same_directions(case, hessian_plane):
    model, x, y, _, _ = case
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)  # 16, 16, 8
    surf = lw.Landscape(model, CE, loader).plane(directions="hessian", resolution=5, progress=False)
    assert surf.meta["lambda_max"] == pytest.approx(hessian_plane.meta["lambda_max"], rel=1e-6)
    assert surf.meta["lambda_min"] == pytest.approx(hessian_plane.meta["lambda_min"], rel=1e-6)
    np.testing.assert_allclose(surf.alphas, hessian_plane.alphas, rtol=1e-6)  # same loss, same default span
    np.testing.assert_allclose(surf.losses, hessian_plane.losses, rtol=1e-5)
