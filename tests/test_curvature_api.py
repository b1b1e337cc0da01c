"""``curvature="ggn" | "fisher"`` through the public API (spectrum, trust, Hessian-direction planes), each value
against the dense GGN / empirical Fisher built independently in tests/test_ggn_fisher.py."""
import numpy as np
import pytest
import torch
from torch import nn

import landscape_widgets as lw

from _hessian_cases import classification_data, flat, small_mlp
from helpers import assert_same, snapshot
from test_ggn_fisher import dense_fisher, dense_ggn, pair_loss

CE = nn.CrossEntropyLoss()


@pytest.fixture(scope="module")
def case():
    model = small_mlp()
    x, y = classification_data(model, n=60)
    moved = [n for n, _ in model.named_parameters()]
    return {"model": model, "x": x, "y": y, "ggn": dense_ggn(model, moved, [(x, y)], CE),
            "fisher": dense_fisher(model, moved, [((x, y), len(x))], pair_loss(CE))}


@pytest.mark.parametrize("curvature", ["ggn", "fisher"])
def test_spectrum_of_each_curvature(case, curvature):
    model, x, y, M = case["model"], case["x"], case["y"], case[curvature]
    snap = snapshot(model)
    ls = lw.Landscape(model, CE, (x, y))
    spec = ls.spectrum(k=3, bottom=1, density=False, trace=True, trace_samples=3 * 160 + 3, tol=1e-10,
                       curvature=curvature, progress=False)
    w = np.linalg.eigvalsh(M)
    np.testing.assert_allclose(spec.top_eigenvalues, w[::-1][:3], rtol=1e-8)
    # positive semi-definite: its smallest eigenvalue is >= 0, found to tol relative to lambda_max
    assert spec.bottom_eigenvalues[0] == pytest.approx(w[0], abs=1e-8 * w[-1])
    assert spec.bottom_eigenvalues[0] >= -1e-8 * w[-1]
    assert spec.trace == pytest.approx(np.trace(M), rel=1e-8)  # Hutch++ with P sketch vectors is exact
    assert spec.curvature == curvature and spec.meta["curvature"] == curvature
    hess = np.linalg.eigvalsh(_dense_hessian(model, x, y))
    assert abs(hess[-1] - w[-1]) > 1e-6 * w[-1]  # another matrix than the Hessian: the test can tell
    assert_same(model, snap)


def _dense_hessian(model, x, y):
    from _hessian_cases import dense_hessian
    return dense_hessian(model, CE, x, y)


@pytest.mark.parametrize("curvature", ["ggn", "fisher"])
def test_trust_panel_of_each_curvature(case, curvature):
    model, x, y, M = case["model"], case["x"], case["y"], case[curvature]
    ls = lw.Landscape(model, CE, (x, y))
    surf = ls.plane(resolution=3, progress=False)
    panel = ls.trust(surf, curvature=curvature, tol=1e-10, trace_samples=30, progress=False)
    for d, kappa in zip(surf.directions, panel["kappa"]):
        v = flat(d, model)
        assert kappa == pytest.approx(v @ M @ v / (v @ v), rel=1e-8)
    w = np.linalg.eigvalsh(M)
    assert panel["lambda_max"] == pytest.approx(w[-1], rel=1e-8)
    assert panel["lambda_min"] == pytest.approx(w[0], abs=1e-8 * w[-1])
    assert panel["curvature"] == curvature and not panel["hides_saddle"]
    # the Hessian's panel of the same plane is another one, and each is remembered apart
    hess = ls.trust(surf, tol=1e-10, trace_samples=30, progress=False)
    assert not hess["reused_hessian_facts"] and hess["curvature"] == "hessian"
    again = ls.trust(surf, curvature=curvature, tol=1e-10, trace_samples=30, progress=False)
    assert again["reused_hessian_facts"] and again["lambda_max"] == panel["lambda_max"]


def test_hessian_plane_of_the_ggn(case):
    model, x, y, M = case["model"], case["x"], case["y"], case["ggn"]
    ls = lw.Landscape(model, CE, (x, y))
    surf = ls.plane(directions="hessian", curvature="ggn", resolution=3, progress=False)
    w, V = np.linalg.eigh(M)
    assert surf.lambda_max == pytest.approx(w[-1], rel=1e-6)
    v = flat(surf.directions[0], model)
    assert abs(v @ V[:, -1]) / np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)
    assert surf.meta["curvature"] == "ggn"
    # its trust panel of the same curvature reuses the plane's eigenvalues; the Hessian's does not
    assert ls.trust(surf, curvature="ggn", progress=False)["lambda_max"] == surf.lambda_max
    assert ls.trust(surf, progress=False, tol=1e-8)["lambda_max"] != pytest.approx(surf.lambda_max, rel=1e-6)


def test_curvature_is_checked_where_it_is_given(case):
    model, x, y = case["model"], case["x"], case["y"]
    ls = lw.Landscape(model, CE, (x, y))
    with pytest.raises(ValueError, match="curvature='hess' is not known"):
        ls.spectrum(curvature="hess", progress=False)
    with pytest.raises(ValueError, match="directions='hessian'"):
        ls.plane(curvature="ggn", resolution=3, progress=False)
    surf = ls.plane(resolution=3, progress=False)
    spec = ls.spectrum(k=1, density=False, trace=False, progress=False)
    with pytest.raises(ValueError, match="curvature='fisher'"):
        ls.trust(surf, spectrum=spec, curvature="fisher", progress=False)
    own = lw.Landscape(model, data=(x, y), batch_loss=lambda m, batch: CE(m(batch[0]), batch[1]))
    with pytest.raises(ValueError, match="loss_fn"):
        own.spectrum(k=1, density=False, trace=False, curvature="ggn", progress=False)
