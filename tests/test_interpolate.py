"""Interpolation curves: ends, buffer modes against manual computations, SWA-style BN re-estimation."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import landscape_widgets as lw
from helpers import SmallNet, direct_loss, small_data

CE = nn.CrossEntropyLoss()


def mix(a, b, alpha):
    return {n: (1 - alpha) * a[n] + alpha * b[n] for n in a}


def test_curve_ends_equal_start_and_model():
    model, start = SmallNet(seed=0), SmallNet(seed=5)
    x, y = small_data()
    for buffers in ("interpolate", "model"):
        curve = lw.Landscape(model, CE, (x, y)).interpolate(start, steps=41, span=(-0.5, 1.5), buffers=buffers,
                                                             progress=False)
        np.testing.assert_allclose(curve.alphas[[10, 30]], [0.0, 1.0], atol=1e-12)
        assert curve.losses[30] == pytest.approx(float(CE(copy.deepcopy(model).eval()(x), y).detach()), rel=1e-6)
        if buffers == "interpolate":
            assert curve.losses[10] == pytest.approx(float(CE(copy.deepcopy(start).eval()(x), y).detach()), rel=1e-5)


@pytest.mark.parametrize("buffers", ["interpolate", "model"])
def test_interior_points_match_manual_mix(buffers):
    model, start = SmallNet(seed=0), SmallNet(seed=5)
    x, y = small_data()
    curve = lw.Landscape(model, CE, (x, y)).interpolate(start.state_dict(), steps=5, span=(0.0, 1.0),
                                                         buffers=buffers, progress=False)
    pa = {n: p.detach() for n, p in start.named_parameters()}
    pb = {n: p.detach() for n, p in model.named_parameters()}
    ba = {n: b for n, b in start.named_buffers() if b.is_floating_point()}
    bb = {n: b for n, b in model.named_buffers() if b.is_floating_point()}
    for i, a in enumerate(curve.alphas):
        bufs = mix(ba, bb, a) if buffers == "interpolate" else bb
        ref = direct_loss(model, mix(pa, pb, a), x, y, buffers=bufs)
        assert curve.losses[i] == pytest.approx(ref, rel=1e-5)
    assert curve.meta["buffers"] == buffers


def test_recompute_matches_update_bn():
    model, start = SmallNet(seed=0), SmallNet(seed=5)
    x, y = small_data()
    loader = [(x[:25], y[:25]), (x[25:], y[25:])]
    curve = lw.Landscape(model, CE, loader).interpolate(start, steps=3, span=(0.0, 1.0), buffers="recompute",
                                                        progress=False)
    pa = {n: p.detach() for n, p in start.named_parameters()}
    pb = {n: p.detach() for n, p in model.named_parameters()}
    for i, a in enumerate(curve.alphas):
        ref_model = copy.deepcopy(model)
        with torch.no_grad():
            for n, p in ref_model.named_parameters():
                p.copy_(mix(pa, pb, a)[n])
        torch.optim.swa_utils.update_bn([xb for xb, _ in loader], ref_model)
        ref_model.eval()
        with torch.no_grad():
            ref = (CE(ref_model(x[:25]), y[:25]) * 25 + CE(ref_model(x[25:]), y[25:]) * 15) / 40
        assert curve.losses[i] == pytest.approx(float(ref), rel=1e-5)


def test_models_without_buffers_give_the_same_curve_in_all_modes():
    gen = torch.Generator().manual_seed(0)
    make = lambda: nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))  # noqa: E731
    model, start = make(), make()
    x, y = torch.randn(20, 3, generator=gen), torch.randint(0, 2, (20,), generator=gen)
    ls = lw.Landscape(model, CE, (x, y))
    curves = [ls.interpolate(start, steps=7, buffers=b, progress=False).losses
              for b in ("interpolate", "model", "recompute")]
    np.testing.assert_allclose(curves[0], curves[1], rtol=1e-7)
    np.testing.assert_allclose(curves[0], curves[2], rtol=1e-7)
