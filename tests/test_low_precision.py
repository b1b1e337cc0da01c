"""bfloat16 and float16 models through every Hessian path (spectrum, trust, Hessian directions, curvature map)
against the float32 dense Hessian of the same weights and data, within the tolerances the README states: 1 % of
the largest |eigenvalue| for bfloat16, 0.1 % for float16.  The solvers keep their own arithmetic in float32/float64
whatever the model's dtype; only the products run in it."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import landscape_widgets as lw
from landscape_widgets.hessian.hvp import HessianOperator
from landscape_widgets.hessian.lanczos import dense_hessian

from helpers import assert_same, snapshot

TOL = {torch.bfloat16: 1e-2, torch.float16: 1e-3}  # relative to max |lambda| (README, "Dtypes")
DTYPES = list(TOL)


def _mlp(dtype):
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g) + (1.0 if p.ndim == 1 and p.shape[0] == 16 else 0.0))
    x = torch.randn(256, 8, generator=g)
    y = torch.randint(0, 3, (256,), generator=g)
    return model.to(dtype), x.to(dtype), y


def _dense(model, x, y, weights=None):
    """The float32 dense Hessian of ``model``'s weights (or ``weights``) upcast, on the same data upcast."""
    ref = copy.deepcopy(model).float()
    if weights is not None:
        with torch.no_grad():
            for n, p in ref.named_parameters():
                p.copy_(weights[n].float())
    ls = lw.Landscape(ref, nn.CrossEntropyLoss(), (x.float(), y))
    op = HessianOperator(ls.problem.private(), ls.problem.data, ls.problem.objective)
    return dense_hessian(op)


@pytest.mark.parametrize("dtype", DTYPES)
def test_spectrum_in_low_precision_equals_the_float32_dense_hessian(dtype):
    model, x, y = _mlp(dtype)
    H = _dense(model, x, y)
    ev = np.linalg.eigvalsh(H)
    scale = np.abs(ev).max()
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y))
    snap = snapshot(model)
    for seed in (0, 1):  # a solver in the model's dtype stopped early and differed from seed to seed
        spec = ls.spectrum(k=3, bottom=2, density=True, trace=True, seed=seed, trace_samples=3 * len(H) + 3,
                           progress=False)
        np.testing.assert_allclose(spec.top_eigenvalues, ev[::-1][:3], rtol=0, atol=TOL[dtype] * scale)
        np.testing.assert_allclose(spec.bottom_eigenvalues, ev[:2], rtol=0, atol=TOL[dtype] * scale)
        assert spec.trace == pytest.approx(np.trace(H), rel=TOL[dtype])
        assert spec.top_eigenvalues.dtype == np.float64
        # the density's nodes lie in the spectrum and its mass is 1
        assert spec.slq_nodes[np.isfinite(spec.slq_nodes)].max() <= ev[-1] + TOL[dtype] * scale
        assert spec.slq_nodes[np.isfinite(spec.slq_nodes)].min() >= ev[0] - TOL[dtype] * scale
    assert_same(model, snap)


@pytest.mark.parametrize("dtype", DTYPES)
def test_trust_and_hessian_directions_in_low_precision(dtype):
    model, x, y = _mlp(dtype)
    H = _dense(model, x, y)
    ev, vecs = np.linalg.eigh(H)
    atol = TOL[dtype] * np.abs(ev).max()
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y))
    surf = ls.plane(resolution=3, ignore=None, progress=False)
    panel = ls.trust(surf, trace_samples=3 * len(H) + 3)
    assert panel["lambda_max"] == pytest.approx(ev[-1], abs=atol)
    assert panel["lambda_min"] == pytest.approx(ev[0], abs=atol)
    for d, kappa in zip(surf.directions, panel["kappa"]):
        v = torch.cat([d[n].double().reshape(-1) for n, _ in model.named_parameters()]).numpy()
        assert kappa == pytest.approx(v @ H @ v / (v @ v), abs=atol)
    hess = ls.plane(directions="hessian", resolution=3, progress=False)
    for d, want in zip(hess.directions, (vecs[:, -1], vecs[:, 0])):
        v = torch.cat([d[n].double().reshape(-1) for n, _ in model.named_parameters()]).numpy()
        assert d[next(iter(d))].dtype == dtype
        assert abs(v @ want) / np.linalg.norm(v) == pytest.approx(1.0, abs=20 * TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_curvature_map_in_low_precision(dtype):
    model, x, y = _mlp(dtype)
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y))
    surf = ls.plane(resolution=3, span=0.3, progress=False)
    cmap = ls.curvature_map(surf, resolution=3, tol=1e-3, progress=False)
    names = [n for n, _ in model.named_parameters()]
    base = dict(model.named_parameters())
    d1, d2 = surf.directions
    for i in (0, 1):
        for j in (1, 2):
            a, b = float(cmap.alphas[i]), float(cmap.betas[j])
            weights = {n: (base[n].detach().double() + a * d1[n].double() + b * d2[n].double()).to(dtype)
                       for n in names}
            ev = np.linalg.eigvalsh(_dense(model, x, y, weights))
            # the point's weights are rounded to the model's dtype: one ulp there moves H by about eps |H|
            atol = 2 * TOL[dtype] * np.abs(ev).max()
            assert cmap.lambda_max[i, j] == pytest.approx(ev[-1], abs=atol)
            assert cmap.lambda_min[i, j] == pytest.approx(ev[0], abs=atol)


# -- non-finite data: a clear error on every Hessian path, nothing changed --------------------------------------------
def _nan_data(kind):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 8, generator=g)
    y = torch.randint(0, 3, (40,), generator=g)
    x[7, 2] = float("nan") if kind == "nan" else float("inf")
    return x, y


@pytest.mark.parametrize("loader", [False, True], ids=["tensors", "loader"])
@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_non_finite_data_gives_a_clear_error_on_every_hessian_path(kind, loader):
    model, _, _ = _mlp(torch.float32)
    x, y = _nan_data(kind)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16) if loader else (x, y)
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data)
    snap, rng = snapshot(model), torch.get_rng_state()
    assert np.isnan(ls.loss())  # the loss surfaces report it as data
    surf = ls.plane(resolution=3, progress=False)
    assert np.isnan(surf.losses).all()
    calls = {"spectrum": lambda: ls.spectrum(k=2, progress=False),
             "spectrum (func)": lambda: ls.spectrum(k=2, density=False, trace=False, backend="func",
                                                     progress=False),
             "trace": lambda: ls.spectrum(k=1, density=False, trace=True, progress=False),
             "trust": lambda: ls.trust(surf, progress=False),
             "hessian plane": lambda: ls.plane(directions="hessian", resolution=3, progress=False)}
    for what, call in calls.items():
        with pytest.raises(lw.NonFiniteHessian, match="not finite|is nan|is inf") as info:
            call()
        assert "model's weights" in str(info.value) and "isfinite" in str(info.value), what
    assert not ls.problem.hessian_facts  # nothing remembered from a failed panel
    assert_same(model, snap)
    assert torch.equal(rng, torch.get_rng_state())


def test_non_finite_points_of_a_curvature_map_stay_data():
    """Where only some points of a plane overflow, the map marks them (NaN, listed in meta) instead of failing."""
    model, x, y = _mlp(torch.float32)
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y))
    surf = ls.plane(resolution=3, progress=False)
    huge = [{n: t * 1e30 for n, t in d.items()} for d in surf.directions]
    far = ls.plane(directions=huge, normalization="none", resolution=3, span=1.0, progress=False)
    cmap = ls.curvature_map(far, resolution=3, progress=False)
    assert [1, 1] not in cmap.meta["non_finite"] and np.isfinite(cmap.lambda_max[1, 1])
    assert cmap.meta["non_finite"]
    for i, j in cmap.meta["non_finite"]:
        assert np.isnan(cmap.lambda_max[i, j])
