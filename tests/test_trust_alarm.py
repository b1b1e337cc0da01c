"""The trust panel's saddle alarm (landscape_widgets.hessian.trust): silent on the embedded default as the demo
trains it (small negative curvature, the norm for trained networks), loud on a constructed saddle whose strong
negative direction random filter-normalized slices miss, checked against its dense Hessian."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import landscape_widgets as lw
from landscape_widgets import examples
from landscape_widgets.hessian.trust import SADDLE_RATIO, eigenvalue_error, strong_negative_curvature
from landscape_widgets.widgets.surface import TRUST_TOL, TRUST_TRACE
from _hessian_cases import dense_hessian


@pytest.fixture(scope="module")
def demo_landscape():
    """The digits MLP trained as ``python -m landscape_widgets demo`` trains it (seed 0, 30 epochs, all data)."""
    data = examples.digits()
    model = examples.digits_mlp(seed=0)
    examples.train(model, data, epochs=30, seed=0)
    return lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")


def test_the_embedded_default_does_not_alarm(demo_landscape):
    """The demo's random plane, panel as the surface widget computes it: lambda_min < 0 beyond its error (as in
    nearly every trained network) and both kappas > 0, yet |lambda_min / lambda_max| is far below the threshold."""
    ls = demo_landscape
    panel = ls.trust(ls.plane(resolution=3, seed=0, progress=False), trace_samples=TRUST_TRACE, tol=TRUST_TOL,
                     progress=False)
    assert all(k > 0 for k in panel["kappa"])  # random slices curve upwards (Böttcher & Wheeler eq. 10) ...
    assert panel["negative_curvature"] and panel["lambda_min"] < -panel["lambda_min_error"]  # ... over a real dip
    assert panel["eig_ratio"] == pytest.approx(abs(panel["lambda_min"] / panel["lambda_max"]))
    assert panel["eig_ratio"] < SADDLE_RATIO / 2 and panel["saddle_threshold"] == SADDLE_RATIO
    assert not panel["strong_negative_curvature"] and not panel["hides_saddle"] and panel["warning"] is None
    # the error bounds are the Lanczos stopping test's: tol * |lambda| (and the float32 products' rounding)
    assert panel["tol"] == TRUST_TOL
    assert TRUST_TOL * abs(panel["lambda_max"]) <= panel["lambda_max_error"] < 1.01 * TRUST_TOL * panel["lambda_max"]
    assert panel["trace_method"] == "hutch++" and panel["trace_samples"] == TRUST_TRACE


def test_the_embedded_default_seed_spread_does_not_alarm(demo_landscape):
    ls = demo_landscape
    spread = ls.seed_spread(3, resolution=3, progress=False)
    panel = ls.trust(spread, trace_samples=TRUST_TRACE, tol=TRUST_TOL, progress=False)
    assert all(k > 0 for pair in panel["kappa_per_seed"] for k in pair)
    assert not panel["hides_saddle"] and panel["hides_saddle_seeds"] == [] and panel["warning"] is None


class Quadratic(nn.Module):
    """``theta`` as a [rows, 10] weight: filter normalization scales each row of a direction to its row of theta."""

    def __init__(self, theta):
        super().__init__()
        self.weight = nn.Parameter(theta)

    def forward(self, x):
        return self.weight.reshape(1, -1).expand(len(x), -1)


def quadratic_saddle(negative, n=200, seed=0):
    """A model whose loss is ``0.5 theta^T A theta`` with ``A = Q diag(w) Q^T``: ``n - 1`` eigenvalues in
    [0.1, 1], one equal to ``negative`` (an eigenvector in no particular direction), ``tr(A) > 0``."""
    rng = np.random.default_rng(seed)
    w = np.concatenate([[negative], rng.uniform(0.1, 1.0, n - 2), [1.0]])
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    A = (Q * w) @ Q.T
    A = 0.5 * (A + A.T)
    At = torch.from_numpy(A)

    def loss(out, _y):
        return 0.5 * ((out @ At) * out).sum(1).mean()

    theta = torch.from_numpy(rng.standard_normal((n // 10, 10)))
    x, y = torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4)
    return Quadratic(theta), loss, (x, y), A


def flat(d):
    return d["weight"].double().reshape(-1).numpy()


def test_a_strong_saddle_that_random_slices_miss_alarms():
    model, loss, (x, y), A = quadratic_saddle(-0.5)
    H = dense_hessian(model, loss, x, y)  # independent of the library: torch.autograd.functional.hessian
    np.testing.assert_allclose(H, A, atol=1e-12)
    exact = np.linalg.eigvalsh(H)
    assert exact[0] == pytest.approx(-0.5) and exact[-1] == pytest.approx(1.0) and np.trace(H) > 0
    ls = lw.Landscape(model, loss, (x, y))
    surf = ls.plane(resolution=3, seed=0, progress=False)
    panel = ls.trust(surf, progress=False)
    for d, kappa in zip(surf.directions, panel["kappa"]):
        v = flat(d)
        assert kappa == pytest.approx(v @ H @ v / (v @ v), rel=1e-9)
        assert kappa > 0  # near tr(H)/N: the slice looks like a bowl
    assert panel["lambda_min"] == pytest.approx(exact[0], abs=panel["lambda_min_error"])
    assert panel["lambda_max"] == pytest.approx(exact[-1], abs=panel["lambda_max_error"])
    assert panel["eig_ratio"] == pytest.approx(0.5, rel=1e-5)
    assert panel["negative_curvature"] and panel["strong_negative_curvature"] and panel["hides_saddle"]
    assert "hides a saddle" in panel["warning"] and "alarm from 5 %" in panel["warning"]
    spread = ls.trust(ls.seed_spread(3, resolution=3, progress=False), progress=False)
    assert spread["hides_saddle"] and spread["hides_saddle_seeds"] == [0, 1, 2]


def test_weak_negative_curvature_is_shown_but_does_not_alarm():
    """The same construction with lambda_min = -1 % of lambda_max: negative beyond its error, below the
    threshold."""
    model, loss, (x, y), A = quadratic_saddle(-0.01)
    ls = lw.Landscape(model, loss, (x, y))
    panel = ls.trust(ls.plane(resolution=3, seed=0, progress=False), progress=False)
    assert panel["lambda_min"] == pytest.approx(np.linalg.eigvalsh(A)[0], rel=1e-5)
    assert panel["negative_curvature"] and all(k > 0 for k in panel["kappa"])
    assert panel["eig_ratio"] == pytest.approx(0.01, rel=1e-4)
    assert not panel["strong_negative_curvature"] and not panel["hides_saddle"] and panel["warning"] is None


def test_the_rule_takes_the_error_bounds_against_the_alarm():
    # rounding: a float32 product moves every eigenvalue by up to eps32 ||H||
    err = eigenvalue_error(-1e-8, 1e-3, norm=1.0, dtype=torch.float32)
    assert err > 1e-7 and strong_negative_curvature(1.0, -1e-8, 0.0, err) == (False, False)
    assert eigenvalue_error(2.0, 1e-3) == pytest.approx(2e-3)
    assert eigenvalue_error(2.0, 0.0) == pytest.approx(2.0 * np.finfo(np.float64).eps)  # tol=0: machine precision
    assert strong_negative_curvature(1.0, -0.05) == (True, True)  # exactly at the threshold
    assert strong_negative_curvature(1.0, -0.0501, 0.0, 0.001) == (True, False)  # within its error of it
    assert strong_negative_curvature(1.0, -0.0501, 0.01, 0.0) == (True, False)  # lambda_max could be larger
    assert strong_negative_curvature(-1.0, -2.0) == (True, True)  # no upward curvature at all
    assert strong_negative_curvature(1.0, -0.5, math.inf, math.inf) == (False, False)  # not converged: no bound
