"""Landscape.curvature_map (Li et al. 2018, arXiv 1712.09913, §6) against dense float64 Hessians.

At every grid point the reference builds theta + a d1 + b d2 by hand (float64), takes the Hessian of an explicit
``functional_call`` loss over the moved parameters with ``torch.autograd.functional.hessian`` and its eigenvalues
with ``torch.linalg.eigvalsh``.  The library's eigenvalues are accurate to ``tol``: ``lambda_max`` relative to
``|lambda_max|``, ``lambda_min`` relative to ``lambda_max - lambda_min`` (the shifted solve), and the ratio to the
bound that follows from both.
"""
import copy
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import landscape_widgets as lw
from helpers import SmallNet, assert_same, small_data, snapshot
from zoo import models as Z


pytestmark = pytest.mark.usefixtures("one_thread")


# -- the independent reference ----------------------------------------------------------------------------------
def aliases(model):
    """canonical name (named_parameters()) -> every name of that Parameter (tied weights have several)."""
    first, out = {}, {}
    for n, p in model.named_parameters(remove_duplicate=False):
        out.setdefault(first.setdefault(id(p), n), []).append(n)
    return out


def point_values(model, moved, dirs, a, b):
    """Every parameter at theta + a d1 + b d2 in float64; the parameters outside ``moved`` keep the model's values."""
    out = {}
    for n, p in model.named_parameters():
        v = p.detach().double().clone()
        if n in moved:
            v = v + a * dirs[0][n].double() + b * dirs[1][n].double()
        out[n] = v
    return out


def reference(model, moved, values, loss_of):
    """(eigenvalues ascending, loss) of the float64 loss ``loss_of(module, state)`` at ``values``: the dense Hessian
    over the flattened ``moved`` parameters by torch.autograd.functional.hessian, eigvalsh."""
    m64 = copy.deepcopy(model).double().eval()
    names = aliases(m64)
    shapes = [values[n].shape for n in moved]
    sizes = [int(np.prod(s)) if len(s) else 1 for s in shapes]
    fixed = {n: v for n, v in values.items() if n not in moved}

    def f(flat):
        vals = dict(fixed)
        vals.update({n: t.view(s) for n, t, s in zip(moved, torch.split(flat, sizes), shapes)})
        state = {alias: v for n, v in vals.items() for alias in names[n]}
        return loss_of(m64, state)

    flat0 = torch.cat([values[n].reshape(-1) for n in moved])
    H = torch.autograd.functional.hessian(f, flat0, vectorize=True)
    with torch.no_grad():
        loss = float(f(flat0))
    return torch.linalg.eigvalsh(0.5 * (H + H.T)).numpy(), loss


def ce_loss(x, y):
    x64 = x.double()
    return lambda m, state: F.cross_entropy(functional_call(m, state, (x64,)), y)


def check_map(cm, model, moved, surface, loss_of, *, tol, loss_rtol=1e-5, exact=False):
    """Every cell of ``cm`` against the reference at that cell's point; returns the reference arrays."""
    dirs = surface.directions
    (a0, a1), (b0, b1) = surface.span
    np.testing.assert_array_equal(cm.alphas, np.linspace(a0, a1, len(cm.alphas)))
    np.testing.assert_array_equal(cm.betas, np.linspace(b0, b1, len(cm.betas)))
    shape = (len(cm.alphas), len(cm.betas))
    for name in ("lambda_max", "lambda_min", "ratio", "losses"):
        assert getattr(cm, name).shape == shape, name
    ref_max, ref_min = np.empty(shape), np.empty(shape)
    for i, a in enumerate(cm.alphas):
        for j, b in enumerate(cm.betas):
            ev, loss = reference(model, moved, point_values(model, moved, dirs, a, b), loss_of)
            lmax, lmin = ev[-1], ev[0]
            ref_max[i, j], ref_min[i, j] = lmax, lmin
            width = lmax - lmin
            got_max, got_min, got_ratio = cm.lambda_max[i, j], cm.lambda_min[i, j], cm.ratio[i, j]
            where = f"cell ({i}, {j}): got {got_max}, {got_min}; dense {lmax}, {lmin}"
            if exact:  # tol near machine precision: the float64 eigenvalues themselves
                assert abs(got_max - lmax) <= 1e-8 * width, where
                assert abs(got_min - lmin) <= 1e-8 * width, where
                assert got_ratio == pytest.approx(abs(lmin / lmax), rel=1e-7), where
            else:
                slack = 1e-5 * width  # float32 products
                assert abs(got_max - lmax) <= tol * abs(lmax) + slack, where
                assert abs(got_min - lmin) <= tol * width + slack, where
                # |r^ - r| <= (|e_min| + |lambda_min| |e_max| / |lambda_max|) / |lambda_max^|
                bound = (tol * width + abs(lmin) * tol + 2 * slack) / (abs(lmax) * (1 - tol))
                assert abs(got_ratio - abs(lmin / lmax)) <= bound, where
            assert got_min <= got_max, where
            assert cm.losses[i, j] == pytest.approx(loss, rel=loss_rtol), where
    with np.errstate(divide="ignore", invalid="ignore"):
        np.testing.assert_array_equal(cm.ratio, np.abs(cm.lambda_min / cm.lambda_max))
    return ref_max, ref_min


# -- models -----------------------------------------------------------------------------------------------------
def tanh_mlp(dtype=torch.float64, seed=0):
    """Linear(3, 5) - Tanh - Linear(5, 2): 32 parameters, in train mode as a user leaves it."""
    with torch.random.fork_rng(devices=[]):
        model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.9)
    x = torch.randn(24, 3, generator=g, dtype=dtype)
    y = torch.randint(0, 2, (24,), generator=g)
    return model.train(), x, y


@pytest.fixture(scope="module")
def mlp():
    model, x, y = tanh_mlp()
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y), device="cpu")
    surface = ls.plane(resolution=(5, 4), span=((-1.5, 1.0), (-0.5, 2.0)), ignore=None, progress=False,
                       evaluator="loop")
    return model, x, y, ls, surface


# -- values at every point ----------------------------------------------------------------------------------------
def test_tanh_mlp_every_point_to_the_documented_tol(mlp):
    model, x, y, ls, surface = mlp
    snap, rng = snapshot(model), torch.get_rng_state()
    np_rng = np.random.get_state()
    cm = ls.curvature_map(surface, resolution=(4, 3), progress=False)
    assert_same(model, snap)
    assert torch.equal(rng, torch.get_rng_state())
    assert all(np.array_equal(a, b) for a, b in zip(np_rng, np.random.get_state()))
    moved = [n for n, _ in model.named_parameters()]
    ref_max, ref_min = check_map(cm, model, moved, surface, ce_loss(x, y), tol=1e-2, loss_rtol=1e-10)
    # the map is not constant: the ratio varies from about 0.5 to above 1 over this plane
    ratio = np.abs(ref_min / ref_max)
    assert ratio.min() < 0.6 and ratio.max() > 1.0
    assert cm.meta["tol"] == 1e-2 and cm.meta["kind"] == "curvature_map" and cm.meta["resolution"] == [4, 3]
    per_point = np.array(cm.meta["hvps_per_point"])
    assert per_point.shape == (4, 3) and (per_point > 0).all() and per_point.sum() == cm.meta["hvps"]
    assert cm.meta["non_finite"] == [] and cm.meta["moved_parameters"] == 32
    # every point after the first starts from its neighbour's eigenvectors, and is still held to tol (above)
    warm = np.array(cm.meta["warm_started"])
    assert not warm[0, 0] and warm.sum() == 11
    assert cm.meta["model_sha256"] == surface.meta["model_sha256"]


def test_tight_tol_gives_the_dense_eigenvalues(mlp):
    model, x, y, ls, surface = mlp
    loose = ls.curvature_map(surface, resolution=(3, 3), progress=False)
    tight = ls.curvature_map(surface, resolution=(3, 3), tol=1e-12, progress=False)
    moved = [n for n, _ in model.named_parameters()]
    check_map(tight, model, moved, surface, ce_loss(x, y), tol=1e-12, loss_rtol=1e-10, exact=True)
    assert tight.meta["hvps"] > loose.meta["hvps"]  # the tolerance is what stops the solves


def test_same_seed_same_map_and_the_default_grid(mlp):
    model, x, y, ls, surface = mlp
    a = ls.curvature_map(surface, resolution=2, progress=False, seed=3)
    b = ls.curvature_map(surface, resolution=2, progress=True, seed=3)
    for name in ("lambda_max", "lambda_min", "ratio", "losses"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.meta["hvps_per_point"] == b.meta["hvps_per_point"]
    # resolution=None: the surface's own grid where it has at most 11 points per axis
    c = ls.curvature_map(surface, progress=False)
    np.testing.assert_array_equal(c.alphas, surface.alphas)
    np.testing.assert_array_equal(c.betas, surface.betas)
    assert c.meta["surface_resolution"] == [5, 4]


def test_default_resolution_is_at_most_11_per_axis():
    model, x, y = tanh_mlp(seed=1)
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y), device="cpu")
    surface = ls.plane(resolution=(13, 2), progress=False, evaluator="loop")
    cm = ls.curvature_map(surface, progress=False)
    assert cm.lambda_max.shape == (11, 2)
    np.testing.assert_array_equal(cm.alphas, np.linspace(-1.0, 1.0, 11))
    np.testing.assert_array_equal(cm.betas, surface.betas)
    # every cell a real eigenvalue pair of that point, checked at the four corners and the centre
    moved = [n for n, _ in model.named_parameters()]
    for i, j in ((0, 0), (10, 1), (5, 0), (0, 1), (10, 0)):
        ev, _ = reference(model, moved, point_values(model, moved, surface.directions, cm.alphas[i], cm.betas[j]),
                          ce_loss(x, y))
        assert abs(cm.lambda_max[i, j] - ev[-1]) <= 1e-2 * abs(ev[-1])
        assert abs(cm.lambda_min[i, j] - ev[0]) <= 1e-2 * (ev[-1] - ev[0])


def test_smallnet_with_selected_params():
    """Moved: BatchNorm's weight and the last layer (35 parameters); the conv and fc1 stay at the model's values, and
    BatchNorm uses its running statistics (eval mode) although the model is in train mode."""
    model = SmallNet().train()
    x, y = small_data()
    moved = ["bn.weight", "fc2.weight", "fc2.bias"]
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y), params=moved, device="cpu")
    surface = ls.plane(resolution=5, span=2.0, ignore=None, progress=False, evaluator="loop")
    snap = snapshot(model)
    cm = ls.curvature_map(surface, resolution=(3, 4), progress=False)
    assert_same(model, snap)
    assert cm.meta["moved_parameters"] == 35
    check_map(cm, model, moved, surface, ce_loss(x, y), tol=1e-2)
    tight = ls.curvature_map(surface, resolution=(2, 2), tol=1e-9, progress=False)
    ref_max, ref_min = check_map(tight, model, moved, surface, ce_loss(x, y), tol=1e-9)
    # float32 products: the tight map agrees with the dense float64 eigenvalues to float32 accuracy
    np.testing.assert_allclose(tight.lambda_max, ref_max, rtol=1e-4)
    np.testing.assert_allclose(tight.lambda_min, ref_min, rtol=1e-4, atol=1e-4 * np.abs(ref_max).max())


def _zoo_loss(name, case):
    if name == "tied_autoencoder":
        x, target = case.data
        return lambda m, state: F.mse_loss(functional_call(m, state, (x.double(),)), target.double())
    if name == "l2_regularized":
        x, y = case.data
        # the batch_loss written out: cross-entropy + lambda * sum of every parameter's squares at the point
        names = [n for n, _ in case.model.named_parameters()]
        return lambda m, state: (F.cross_entropy(functional_call(m, state, (x.double(),)), y)
                                 + Z.L2_LAMBDA * sum(state[n].pow(2).sum() for n in names))
    x, y = case.data  # shared_linear: one Parameter under a.weight and b.weight
    return ce_loss(x, y)


@pytest.mark.parametrize("name", ["tied_autoencoder", "shared_linear", "l2_regularized"])
def test_zoo_models(name):
    """Tied weights (the decoder uses the encoder's weight; one Parameter in two modules) and a batch_loss
    regularizer, whose ``model.parameters()`` must see the point's weights."""
    case = Z.build(name)
    ls = case.landscape()
    surface = ls.plane(resolution=4, ignore=None, progress=False, evaluator="loop")
    snap = snapshot(case.model)
    cm = ls.curvature_map(surface, resolution=(3, 2), progress=False)
    assert_same(case.model, snap)
    moved = [n for n, p in case.model.named_parameters() if p.requires_grad]
    check_map(cm, case.model, moved, surface, _zoo_loss(name, case), tol=1e-2)


# -- NaN, progress, callback, cancel ----------------------------------------------------------------------------
class ExpNet(nn.Module):
    """exp of an affine map: the loss overflows float32 far along the bias direction."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 3)

    def forward(self, x):
        return torch.exp(self.lin(x))


def test_non_finite_points_are_nan_cells():
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        model = ExpNet()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    x, y = torch.randn(20, 5, generator=g), torch.randn(20, 3, generator=g)
    ls = lw.Landscape(model, nn.MSELoss(), (x, y), device="cpu")
    d1 = {"lin.weight": torch.zeros(3, 5), "lin.bias": torch.ones(3)}
    d2 = {"lin.weight": torch.randn(3, 5, generator=g) * 0.3, "lin.bias": torch.zeros(3)}
    surface = ls.plane(directions=(d1, d2), resolution=3, span=((-2.0, 200.0), (-1.0, 1.0)), ignore=None,
                       progress=False, evaluator="loop")
    assert torch.equal(surface.directions[0]["lin.bias"], d1["lin.bias"])
    seen = []
    cm = ls.curvature_map(surface, progress=False, callback=seen.append)
    assert len(seen) == 9
    np.testing.assert_array_equal(cm.alphas, [-2.0, 99.0, 200.0])
    # exp(99) squared overflows float32: the loss there is inf, and the cells are NaN, not a crash
    assert np.isinf(cm.losses[1:]).all()
    assert np.isnan(cm.lambda_max[1:]).all() and np.isnan(cm.lambda_min[1:]).all() and np.isnan(cm.ratio[1:]).all()
    assert sorted(map(tuple, cm.meta["non_finite"])) == [(i, j) for i in (1, 2) for j in range(3)]
    loss_of = (lambda m, state: F.mse_loss(functional_call(m, state, (x.double(),)), y.double()))
    for j, b in enumerate(cm.betas):
        values = point_values(model, ["lin.weight", "lin.bias"], (d1, d2), -2.0, b)
        ev, loss = reference(model, ["lin.weight", "lin.bias"], values, loss_of)
        assert abs(cm.lambda_max[0, j] - ev[-1]) <= 1e-2 * abs(ev[-1]) + 1e-5 * (ev[-1] - ev[0])
        assert abs(cm.lambda_min[0, j] - ev[0]) <= 1.00001e-2 * (ev[-1] - ev[0])
        assert cm.losses[0, j] == pytest.approx(loss, rel=1e-5)
    assert all(np.isnan(p["lambda_max"]) for p in seen if p["i"] > 0)
    # row 0 warm-starts along the row; a non-finite point gives its neighbours nothing: they start from random
    assert cm.meta["warm_started"] == [[False, True, True], [False] * 3, [False] * 3]


def test_warm_started_map_is_the_cold_map_to_tol_with_fewer_products():
    """A map whose every point starts from random (the neighbours' vectors withheld) against the warm-started one:
    both within tol of the dense eigenvalues (check_map), and the warm one made fewer products."""
    from landscape_widgets.hessian import curvature_map as C

    model, x, y = tanh_mlp(seed=2)
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y), device="cpu")
    surface = ls.plane(resolution=5, span=0.5, ignore=None, progress=False, evaluator="loop")
    warm = ls.curvature_map(surface, resolution=(4, 4), progress=False)
    original = C.warm_start
    C.warm_start = lambda vectors: None
    try:
        cold = ls.curvature_map(surface, resolution=(4, 4), progress=False)
    finally:
        C.warm_start = original
    moved = [n for n, _ in model.named_parameters()]
    check_map(warm, model, moved, surface, ce_loss(x, y), tol=1e-2, loss_rtol=1e-10)
    check_map(cold, model, moved, surface, ce_loss(x, y), tol=1e-2, loss_rtol=1e-10)
    assert not np.array(cold.meta["warm_started"]).any() and np.array(warm.meta["warm_started"]).sum() == 15
    assert warm.meta["hvps"] < cold.meta["hvps"], (warm.meta["hvps"], cold.meta["hvps"])


def test_callback_reports_every_point(mlp):
    model, x, y, ls, surface = mlp
    seen = []
    cm = ls.curvature_map(surface, resolution=(3, 2), progress=False, callback=seen.append)
    assert [p["done"] for p in seen] == list(range(1, 7)) and all(p["total"] == 6 for p in seen)
    assert [(p["i"], p["j"]) for p in seen] == [(i, j) for i in range(3) for j in range(2)]
    for p in seen:
        i, j = p["i"], p["j"]
        assert (p["alpha"], p["beta"]) == (cm.alphas[i], cm.betas[j])
        assert (p["lambda_max"], p["lambda_min"], p["ratio"], p["loss"]) == (
            cm.lambda_max[i, j], cm.lambda_min[i, j], cm.ratio[i, j], cm.losses[i, j])
        assert p["hvps"] == cm.meta["hvps_per_point"][i][j]


def test_cancel_between_products_and_between_points(mlp):
    model, x, y, ls, surface = mlp
    snap = snapshot(model)
    full = ls.curvature_map(surface, resolution=2, progress=False)
    assert full.meta["hvps_per_point"][0][0] > 2
    calls, seen = [], []

    def stop_at_third_product():
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(lw.Cancelled):
        ls.curvature_map(surface, resolution=2, progress=False, callback=seen.append, cancel=stop_at_third_product)
    # checked before the first point (call 1) and before every product: the 2nd product of the first point stops it
    assert seen == [] and len(calls) == 3
    flag = threading.Event()
    with pytest.raises(lw.Cancelled, match="after 2 of 4 points"):
        ls.curvature_map(surface, resolution=2, progress=True,
                         callback=lambda p: (seen.append(p), p["done"] == 2 and flag.set()), cancel=flag)
    assert len(seen) == 2
    assert_same(model, snap)
    # a cancelled map leaves nothing behind: the next one equals the full one
    again = ls.curvature_map(surface, resolution=2, progress=False)
    np.testing.assert_array_equal(again.lambda_min, full.lambda_min)


# -- save / load, bad input ---------------------------------------------------------------------------------------
def test_save_load_round_trip(mlp, tmp_path):
    model, x, y, ls, surface = mlp
    cm = ls.curvature_map(surface, resolution=(2, 3), progress=False)
    cm.lambda_max[0, 0] = np.nan  # NaN cells survive the file
    cm.ratio[0, 0] = np.nan
    path = cm.save(tmp_path / "curv")
    back = lw.load(path)
    assert isinstance(back, lw.CurvatureMap) and path.endswith(".npz")
    for name in ("alphas", "betas", "lambda_max", "lambda_min", "ratio", "losses"):
        np.testing.assert_array_equal(getattr(back, name), getattr(cm, name))
    for key in ("tol", "seed", "hvps", "hvps_per_point", "resolution", "eigensolver", "reference_settings",
                "model_sha256"):
        assert back.meta[key] == cm.meta[key], key
    assert back.span == cm.span
    ds = back.to_xarray()
    np.testing.assert_array_equal(ds["ratio"].values, cm.ratio)
    np.testing.assert_array_equal(ds["alpha"].values, cm.alphas)


def test_bad_arguments(mlp, tmp_path):
    model, x, y, ls, surface = mlp
    with pytest.raises(TypeError, match="lw.Surface"):
        ls.curvature_map(surface.losses)
    bare = lw.Surface(surface.alphas, surface.betas, surface.losses, None, surface.meta)
    with pytest.raises(ValueError, match="no directions"):
        ls.curvature_map(bare)
    # a file saved without its directions
    path = surface.save(tmp_path / "plane")
    with np.load(path) as z:
        kept = {k: z[k] for k in z.files if not k.startswith("directions/")}
    np.savez(tmp_path / "bare.npz", **kept)
    with pytest.raises(ValueError, match="no directions.*Landscape.plane"):
        ls.curvature_map(lw.load(tmp_path / "bare.npz"))
    for bad, err in ((1, ValueError), (0, ValueError), ((3,), ValueError), ((2, 1), ValueError), ("5", TypeError),
                     (2.5, TypeError)):
        with pytest.raises(err, match="resolution"):
            ls.curvature_map(surface, resolution=bad, progress=False)
    for bad in (-0.1, 1.0, "tight", True):
        with pytest.raises(ValueError, match="tol"):
            ls.curvature_map(surface, tol=bad, progress=False)
    with pytest.raises(TypeError, match="seed"):
        ls.curvature_map(surface, seed="a", progress=False)
    with pytest.raises(TypeError, match="callback"):
        ls.curvature_map(surface, callback=3, progress=False)
    with pytest.raises(TypeError, match="progress"):
        ls.curvature_map(surface, progress="yes")
    # another Landscape's plane: other moved parameters, or other weights
    other = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y), params=["0.weight"], device="cpu")
    with pytest.raises(ValueError, match="same params="):
        other.curvature_map(surface, progress=False)
    moved_model = copy.deepcopy(model)
    with torch.no_grad():
        moved_model[0].bias.add_(0.1)
    elsewhere = lw.Landscape(moved_model, nn.CrossEntropyLoss(), (x, y), device="cpu")
    with pytest.raises(ValueError, match="other weights"):
        elsewhere.curvature_map(surface, progress=False)
    snap = snapshot(model)
    with pytest.raises(ValueError):
        ls.curvature_map(surface, resolution=1)
    assert_same(model, snap)
