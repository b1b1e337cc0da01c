"""Hessian compute against exact answers: the dense Hessian of small models with biases and an
eval-mode BatchNorm, from torch.autograd.functional.hessian in float64 (tests/_hessian_cases.py)."""
import threading

import numpy as np
import pytest
import torch
from torch import nn

import landscape_widgets as lw
from _hessian_cases import classification_data, dense_hessian, flat, small_cnn, small_mlp
from helpers import assert_same, snapshot
from landscape_widgets._model import PrivateModel
from landscape_widgets.data import DataSource
from landscape_widgets.hessian import HessianOperator
from landscape_widgets.hessian.hutchinson import hutchinson_trace
from landscape_widgets.hessian.slq import lanczos_quadrature, smoothed_density

CE = nn.CrossEntropyLoss()


@pytest.fixture(scope="module")
def mlp_spectrum(mlp_case):
    model, x, y, _, _ = mlp_case
    return lw.Landscape(model, CE, (x, y)).spectrum(k=5, bottom=2, runs=10, seed=0)


def batches(x, y, size):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def rel(a, b):
    return np.abs(np.asarray(a) - np.asarray(b)) / np.abs(np.asarray(b))


@pytest.mark.parametrize("backend", ["graph", "func"])
@pytest.mark.parametrize("make", [small_mlp, small_cnn])
@pytest.mark.parametrize("batched", [False, True])
def test_hvp_matches_dense_hessian(backend, make, batched):
    model = make()
    x, y = classification_data(model, n=23)
    H = dense_hessian(model, CE, x, y)
    data = batches(x, y, 10) if batched else (x, y)  # 10, 10, 3: the sample weights matter
    op = HessianOperator(PrivateModel(model, torch.device("cpu")), DataSource(data), CE, backend=backend)
    V = np.random.default_rng(0).standard_normal((H.shape[0], 3))
    np.testing.assert_allclose(op.matmat(V), H @ V, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(op.matvec(V[:, 0]), H @ V[:, 0], rtol=1e-9, atol=1e-11)
    assert op.hvps == 4
    with torch.no_grad():
        assert op.loss is None or op.loss == pytest.approx(float(CE(model(x), y)), rel=1e-12)


@pytest.mark.parametrize("make", [small_mlp, small_cnn])
@pytest.mark.parametrize("coupled", [False, True])
def test_hvp_on_micro_batches_matches_dense_hessian(make, coupled):
    """Thresholds lowered so that 23 samples are cut into chunks of 8, 8 and 7: one graph per chunk, weighted by
    its samples, is still the full-batch Hessian; a loss that couples the batch keeps one graph."""
    from landscape_widgets.accelerations import Tuning

    tuning = Tuning(micro_min_bytes=0, micro_bytes=1, micro_min_samples=8)
    model = make()
    x, y = classification_data(model, n=23)

    def loss(out, t):  # coupled: the square of the batch's mean logit, which chunk losses do not average to
        return CE(out, t) + (out.mean() ** 2 if coupled else 0.0)

    H = dense_hessian(model, loss, x, y)
    op = HessianOperator(PrivateModel(model, torch.device("cpu")), DataSource((x, y)), loss, tuning=tuning)
    V = np.random.default_rng(0).standard_normal((H.shape[0], 2))
    np.testing.assert_allclose(op.matmat(V), H @ V, rtol=1e-9, atol=1e-11)
    assert [w for _g, w in op._graph] == ([1.0] if coupled else [8 / 23, 8 / 23, 7 / 23])
    with torch.no_grad():
        assert op.loss == pytest.approx(float(loss(model(x), y)), rel=1e-12)


def test_running_quiets_numpy_blas_and_frees_the_graph_also_on_error():
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    model = small_mlp()
    x, y = classification_data(model, n=23)
    op = HessianOperator(PrivateModel(model, torch.device("cpu")), DataSource((x, y)), CE)
    before, inside = blas_threads(), []
    with pytest.raises(RuntimeError, match="boom"):
        with op.running():
            op.matvec(np.ones(op.num_parameters))
            inside.append(blas_threads())
            assert op._graph is not None
            raise RuntimeError("boom")
    assert inside == [[1] * len(before)] and blas_threads() == before
    assert op._graph is None


def test_extreme_eigenvalues_match_dense(mlp_case, mlp_spectrum):
    *_, w = mlp_case
    s = mlp_spectrum
    np.testing.assert_array_less(rel(s.top_eigenvalues, w[::-1][:5]), 1e-4)
    np.testing.assert_array_less(rel(s.bottom_eigenvalues, w[:2]), 1e-4)
    assert w[0] < 0  # the case really has negative curvature
    assert list(s.top_eigenvalues) == sorted(s.top_eigenvalues, reverse=True)
    assert list(s.bottom_eigenvalues) == sorted(s.bottom_eigenvalues)
    assert s.lambda_max == s.top_eigenvalues[0] and s.lambda_min == s.bottom_eigenvalues[0]
    assert s.meta["seed"] == 0 and s.meta["hvps_total"] == sum(s.meta["hvps"].values())
    assert set(s.meta["timings"]) == {"top_s", "bottom_s", "trace_s", "density_s", "total_s"}
    assert s.meta["num_parameters"] == 160 and s.meta["kind"] == "spectrum" and s.meta["stages"]["top"]["converged"]


def test_trace_within_four_standard_errors(mlp_case, mlp_spectrum):
    _, _, _, H, _ = mlp_case
    s = mlp_spectrum
    assert 0 < s.trace_stderr < abs(np.trace(H))
    assert abs(s.trace - np.trace(H)) < 4 * s.trace_stderr
    assert s.meta["trace_per_parameter"] == pytest.approx(s.trace / H.shape[0])


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_trace_methods_are_unbiased(mlp_case, method):
    model, x, y, H, _ = mlp_case
    op = HessianOperator(PrivateModel(model, torch.device("cpu")), DataSource((x, y)), CE)
    trace, stderr, info = hutchinson_trace(op, 60, rng=np.random.default_rng(3), method=method)
    assert info["method"] == method and op.hvps == 60
    assert abs(trace - np.trace(H)) < 4 * stderr
    # the stderr is an honest spread: Var(v^T H v) = 2 (||H||_F^2 - sum diag^2) for Rademacher v
    if method == "hutchinson":
        exact = np.sqrt(2 * (np.sum(H ** 2) - np.sum(np.diag(H) ** 2)) / 60)
        assert 0.5 * exact < stderr < 2 * exact


def test_density_integrates_to_one_and_follows_the_exact_cdf(mlp_case, mlp_spectrum):
    *_, w = mlp_case
    s = mlp_spectrum
    grid, dens = s.density_grid, s.density
    assert np.all(dens >= 0) and np.all(np.diff(grid) > 0)
    assert np.trapezoid(dens, grid) == pytest.approx(1.0, abs=1e-9)
    cdf = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2 * np.diff(grid))])
    exact = np.searchsorted(w, grid, side="right") / len(w)
    assert np.max(np.abs(cdf - exact)) < 0.1  # Kolmogorov distance
    assert grid[0] < w[0] and grid[-1] > w[-1]
    assert s.meta["steps"] == 90 and s.meta["runs"] == 10 and s.meta["hvps"]["density"] == 900
    assert s.slq_nodes.shape == (10, 90)
    np.testing.assert_allclose(np.nansum(s.slq_weights, axis=1), 1.0, rtol=1e-12)


def test_lanczos_quadrature_is_exact_for_moments(mlp_case):
    """Gauss quadrature with m nodes integrates t^j exactly for j < 2m: sum_k w_k theta_k^j = v^T H^j v."""
    model, x, y, H, _ = mlp_case
    op = HessianOperator(PrivateModel(model, torch.device("cpu")), DataSource((x, y)), CE)
    (nodes,), (weights,) = lanczos_quadrature(op, 6, 1, rng=np.random.default_rng(5))
    v = np.random.default_rng(5).integers(0, 2, size=(1, H.shape[0]))[0] * 2.0 - 1.0
    v /= np.linalg.norm(v)
    for j in range(1, 12):
        assert np.sum(weights * nodes ** j) == pytest.approx(v @ np.linalg.matrix_power(H, j) @ v, rel=1e-8)


def test_lanczos_stops_when_the_krylov_space_is_exhausted():
    """steps > P: the quadrature reproduces the exact eigenvalues (weights on all of them) and stops early."""
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 2)).double()  # 14 parameters
    x, y = torch.randn(20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), torch.arange(20) % 2
    w = np.linalg.eigvalsh(dense_hessian(model, CE, x, y))
    op = HessianOperator(PrivateModel(model, torch.device("cpu")), DataSource((x, y)), CE)
    (nodes,), _ = lanczos_quadrature(op, 50, 1, rng=np.random.default_rng(0))
    assert len(nodes) <= 14 and op.hvps <= 14
    for t in nodes:
        assert np.min(np.abs(w - t)) < 1e-8 * max(1, abs(w).max())


def test_smoothed_density_conserves_mass_below_grid_resolution():
    grid, dens, sigma = smoothed_density([np.array([0.0, 10.0])], [np.array([0.25, 0.75])], grid_points=200,
                                         sigma=1e-4)
    assert np.trapezoid(dens, grid) == pytest.approx(1.0)
    mid = np.searchsorted(grid, 5.0)
    assert np.trapezoid(dens[:mid], grid[:mid]) == pytest.approx(0.25, abs=0.01)


def test_dataloader_gives_the_same_spectrum(mlp_case, mlp_spectrum):
    model, x, y, _, w = mlp_case
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    s = lw.Landscape(model, CE, loader).spectrum(k=2, bottom=1, density=False, trace_samples=30)
    np.testing.assert_array_less(rel(s.top_eigenvalues, w[::-1][:2]), 1e-4)
    assert rel(s.bottom_eigenvalues[0], w[0]) < 1e-4
    assert s.density is None and s.meta["hvps"].get("density") is None


def test_float32_model_agrees_to_float32_accuracy():
    model = small_cnn(dtype=torch.float32)
    x, y = classification_data(model, dtype=torch.float32)
    w = np.linalg.eigvalsh(dense_hessian(model, CE, x, y))
    s = lw.Landscape(model, CE, (x, y)).spectrum(k=3, bottom=1, density=False, trace_samples=12)
    np.testing.assert_allclose(s.top_eigenvalues, w[::-1][:3], rtol=1e-3)
    assert s.bottom_eigenvalues[0] == pytest.approx(w[0], rel=1e-3, abs=1e-4 * w[-1])


def test_spectrum_is_deterministic_and_leaves_model_and_rng_alone(small):
    model, (x, y) = small
    snap = snapshot(model)
    torch.manual_seed(123)
    np.random.seed(7)
    state, np_state = torch.get_rng_state(), np.random.get_state()
    ls = lw.Landscape(model, CE, (x, y))
    a = ls.spectrum(k=2, steps=20, runs=2, trace_samples=12, seed=4)
    b = ls.spectrum(k=2, steps=20, runs=2, trace_samples=12, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(np.array_equal(u, v) for u, v in zip(np.random.get_state()[1:2], np_state[1:2]))
    assert_same(model, snap)
    np.testing.assert_array_equal(a.top_eigenvalues, b.top_eigenvalues)
    np.testing.assert_array_equal(a.density, b.density)
    assert a.trace == b.trace and a.meta["seed"] == 4


def test_cancel_and_progress_leave_the_model_alone(small):
    model, (x, y) = small
    snap = snapshot(model)
    ls = lw.Landscape(model, CE, (x, y))
    events = []
    ls.spectrum(k=1, steps=5, runs=1, trace_samples=6, callback=events.append)
    stages = [e["stage"] for e in events]
    assert stages[:3] == ["top", "bottom", "trace"] and stages[-1] == "done"
    assert [e["done"] for e in events if e["stage"] == "density"] == [1, 2, 3, 4, 5]
    flag = threading.Event()
    seen = []

    def stop_in_density(e):
        seen.append(e)
        if e["stage"] == "density":
            flag.set()
    with pytest.raises(lw.Cancelled):
        ls.spectrum(k=1, steps=5, runs=1, trace_samples=6, callback=stop_in_density, cancel=flag)
    assert seen[-1]["stage"] == "density" and seen[-1]["done"] == 1
    with pytest.raises(lw.Cancelled):
        ls.spectrum(k=1, cancel=lambda: True)
    assert_same(model, snap)


def test_save_and_load_round_trip(tmp_path, mlp_spectrum):
    s = mlp_spectrum
    back = lw.load(s.save(tmp_path / "spec"))
    assert isinstance(back, lw.Spectrum)
    np.testing.assert_array_equal(back.top_eigenvalues, s.top_eigenvalues)
    np.testing.assert_array_equal(back.density, s.density)
    assert back.trace == s.trace and back.trace_stderr == s.trace_stderr
    assert back.meta["hvps"] == s.meta["hvps"] and back.meta["kind"] == "spectrum"


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"k": 0}, ValueError, "k=0"),
    ({"k": 161}, ValueError, "160 parameters"),
    ({"k": 2.5}, TypeError, "k must be an int"),
    ({"bottom": -1}, ValueError, "bottom=-1"),
    ({"bottom": 161}, ValueError, "bottom=161"),
    ({"steps": 0}, ValueError, "steps=0"),
    ({"runs": 0}, ValueError, "runs=0"),
    ({"trace_samples": 1}, ValueError, "trace_samples=1"),
    ({"trace_method": "exact"}, ValueError, "trace_method"),
    ({"density": "yes"}, TypeError, "density"),
    ({"tol": -1}, ValueError, "tol"),
    ({"seed": -3}, ValueError, "seed"),
    ({"backend": "curvlinops"}, ValueError, "backend"),
])
def test_bad_arguments_say_what_to_pass(mlp_case, kwargs, exc, words):
    model, x, y, _, _ = mlp_case
    with pytest.raises(exc, match=words):
        lw.Landscape(model, CE, (x, y)).spectrum(**kwargs)


def test_k_equal_to_parameter_count_uses_the_dense_path():
    model = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 2)).double()  # 12 parameters
    x, y = torch.randn(9, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2)), torch.arange(9) % 2
    w = np.linalg.eigvalsh(dense_hessian(model, CE, x, y))
    s = lw.Landscape(model, CE, (x, y)).spectrum(k=12, bottom=12, steps=30, runs=2, trace_samples=6)
    np.testing.assert_allclose(s.top_eigenvalues, w[::-1], atol=1e-10)
    np.testing.assert_allclose(s.bottom_eigenvalues, w, atol=1e-10)
    assert s.meta["stages"]["top"]["method"] == "dense"


def test_loss_without_gradient_is_a_clear_error(mlp_case):
    model, x, y, _, _ = mlp_case
    with pytest.raises(ValueError, match="differentiable"):
        lw.Landscape(model, lambda out, t: torch.tensor(1.0), (x, y)).spectrum(k=1, density=False)


# -- trust panel ------------------------------------------------------------------------------------------------

def test_kappa_matches_the_dense_quadratic_form(mlp_case, mlp_spectrum):
    model, x, y, H, w = mlp_case
    ls = lw.Landscape(model, CE, (x, y))
    surf = ls.plane(resolution=3, seed=2, progress=False)
    panel = ls.trust(surf, spectrum=mlp_spectrum)
    for d, kappa in zip(surf.directions, panel["kappa"]):
        v = flat(d, model)
        assert kappa == pytest.approx(v @ H @ v / (v @ v), rel=1e-9)
    assert panel["lambda_max"] == mlp_spectrum.lambda_max and panel["lambda_min"] == mlp_spectrum.lambda_min
    assert panel["trace_over_n"] == pytest.approx(mlp_spectrum.trace / H.shape[0])
    assert panel["hides_saddle"] == (w[0] < 0 and all(k > 0 for k in panel["kappa"]))


def test_trust_panel_computes_its_own_eigenvalues_and_fills_the_surface_meta(mlp_case):
    model, x, y, H, w = mlp_case
    ls = lw.Landscape(model, CE, (x, y))
    surf = ls.plane(resolution=3, seed=0, progress=False, trust=True)
    panel = surf.meta["trust"]
    assert rel(panel["lambda_max"], w[-1]) < 1e-4 and rel(panel["lambda_min"], w[0]) < 1e-4
    assert abs(panel["trace"] - np.trace(H)) < 4 * panel["trace_stderr"]
    # random filter-normalized directions of this model curve upwards while lambda_min < 0: a hidden saddle
    assert all(k > 0 for k in panel["kappa"]) and panel["hides_saddle"] and "saddle" in panel["warning"]
    loaded = lw.load(surf.save("/tmp/_trust_surface"))
    assert loaded.meta["trust"]["hides_saddle"] is True


def test_hides_saddle_is_false_at_a_minimum():
    """A convex case (least squares of a linear model: H = 2 X^T X / n is positive semi-definite)."""
    gen = torch.Generator().manual_seed(0)
    model = nn.Linear(4, 1).double()
    x = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(30, 1, generator=gen, dtype=torch.float64)
    ls = lw.Landscape(model, nn.MSELoss(), (x, y))
    surf = ls.plane(resolution=3, progress=False, ignore=None)
    panel = ls.trust(surf)
    X = torch.cat([x, torch.ones(30, 1, dtype=torch.float64)], 1).numpy()
    H = 2 * X.T @ X / 30
    assert panel["lambda_min"] == pytest.approx(np.linalg.eigvalsh(H)[0], rel=1e-4)
    assert not panel["negative_curvature"] and not panel["hides_saddle"] and panel["warning"] is None


def test_trust_refuses_a_surface_of_other_weights(mlp_case):
    model, x, y, _, _ = mlp_case
    m = small_mlp()
    ls = lw.Landscape(m, CE, (x, y))
    surf = ls.plane(resolution=3, progress=False)
    with torch.no_grad():
        m[0].weight[0, 0] += 1.0
    with pytest.raises(ValueError, match="other weights"):
        ls.trust(surf)
    with pytest.raises(TypeError, match="lw.Surface"):
        ls.trust("surface")


# -- seed spread ------------------------------------------------------------------------------------------------

def test_seed_spread_median_iqr_and_sharpness(mlp_case):
    model, x, y, _, _ = mlp_case
    ls = lw.Landscape(model, CE, (x, y))
    spread = ls.seed_spread([3, 5, 8, 9], resolution=5, span=0.5)
    stack = np.stack([ls.plane(seed=s, resolution=5, span=0.5, progress=False).losses for s in (3, 5, 8, 9)])
    np.testing.assert_array_equal(spread.losses, stack)
    np.testing.assert_allclose(spread.median, np.median(stack, axis=0))
    q = np.percentile(stack, [25, 75], axis=0)
    np.testing.assert_allclose(spread.iqr, q[1] - q[0])
    with torch.no_grad():
        L0 = float(CE(model(x), y))
    for s, k in zip(spread.sharpness, stack):
        assert s == pytest.approx(100 * (k.max() - L0) / (1 + L0))  # Keskar et al. 2017, Metric 2.1
    assert spread.meta["seeds"] == [3, 5, 8, 9] and spread.meta["center_loss"] == pytest.approx(L0)
    back = lw.load(spread.save("/tmp/_seed_spread"))
    np.testing.assert_array_equal(back.sharpness, spread.sharpness)
    with pytest.raises(ValueError, match="seeds"):
        ls.seed_spread([1])
    with pytest.raises(ValueError, match="repeat"):
        ls.seed_spread([1, 1])
