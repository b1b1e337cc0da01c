"""Direction normalizations against hand-written formulas (Li et al. 2018 §4), with numpy loops."""
import numpy as np
import pytest
import torch
from torch import nn

import landscape_widgets as lw
from helpers import SmallNet, small_data

CE = nn.CrossEntropyLoss()


def raw_gaussian(model, seed, count=2):
    gen = torch.Generator().manual_seed(seed)
    return [{n: torch.randn(p.shape, generator=gen) for n, p in model.named_parameters()} for _ in range(count)]


def reference(d, p, mode, ignore):
    """Hand-written normalization of one tensor (numpy, float64), model mode handled by the caller."""
    d, p = d.numpy().astype(np.float64), p.detach().numpy().astype(np.float64)
    if ignore == "biasbn" and p.ndim <= 1:
        return np.zeros_like(d)
    if mode == "filter":
        out = np.empty_like(d)
        for k in range(d.shape[0]):  # a 1-D tensor: each element is its own slice
            out[k] = d[k] * np.linalg.norm(p[k]) / (np.linalg.norm(d[k]) + 1e-10)
        return out
    if mode == "layer":
        return d * np.linalg.norm(p) / (np.linalg.norm(d) + 1e-10)
    return d.copy()


@pytest.mark.parametrize("mode", ["filter", "layer", "model", "none"])
@pytest.mark.parametrize("ignore", ["biasbn", None])
def test_random_directions_match_formulas(mode, ignore):
    model = SmallNet()
    ls = lw.Landscape(model, CE, small_data())
    surf = ls.plane(resolution=2, seed=11, normalization=mode, ignore=ignore, progress=False)
    raw = raw_gaussian(model, 11)  # the documented draw: N(0, 1), parameter order, d1 then d2
    params = dict(model.named_parameters())
    for k in range(2):
        ref = {n: reference(raw[k][n], params[n], mode, ignore) for n in params}
        if mode == "model":
            covered = [n for n in params if not (ignore == "biasbn" and params[n].dim() <= 1)]
            dn = np.sqrt(sum((ref[n] ** 2).sum() for n in covered))
            pn = np.sqrt(sum((params[n].detach().double().numpy() ** 2).sum() for n in covered))
            for n in covered:
                ref[n] = ref[n] * pn / dn
            got_norm = np.sqrt(sum((surf.directions[k][n].double().numpy() ** 2).sum() for n in covered))
            assert got_norm == pytest.approx(pn, rel=1e-5)
        for n in params:
            np.testing.assert_allclose(surf.directions[k][n].double().numpy(), ref[n], rtol=2e-5, atol=1e-7,
                                       err_msg=f"{mode} {ignore} {n}")
    assert surf.meta["normalization"] == mode and surf.meta["ignore"] == ignore


def test_filter_normalization_is_invariant_to_filter_rescaling():
    """The point of filter normalization: rescaling a filter rescales its direction, so the plot is unchanged for a
    ReLU net whose next layer compensates (Li et al. §4)."""
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Linear(6, 3, bias=False))
    b = nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Linear(6, 3, bias=False))
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b[0].weight[2] *= 10.0  # scale filter 2 up ...
        b[2].weight[:, 2] /= 10.0  # ... and its outgoing weights down: same function
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(30, 4, generator=gen), torch.randint(0, 3, (30,), generator=gen)
    sa = lw.Landscape(a, CE, (x, y)).plane(resolution=5, seed=1, progress=False)
    sb = lw.Landscape(b, CE, (x, y)).plane(resolution=5, seed=1, progress=False)
    np.testing.assert_allclose(sa.losses[2, 2], sb.losses[2, 2], rtol=1e-5)
    torch.testing.assert_close(sb.directions[0]["0.weight"][2], sa.directions[0]["0.weight"][2] * 10.0)


def test_explicit_direction_normalization_and_default():
    model = SmallNet()
    raw = raw_gaussian(model, 2)
    ls = lw.Landscape(model, CE, small_data())
    none = ls.plane(directions=tuple(raw), ignore=None, resolution=2, progress=False)
    for n in raw[0]:
        assert torch.equal(none.directions[0][n], raw[0][n])
    filt = ls.plane(directions=tuple(raw), normalization="filter", resolution=2, progress=False)
    p = model.fc1.weight.detach()
    np.testing.assert_allclose(filt.directions[0]["fc1.weight"].double().numpy(),
                               reference(raw[0]["fc1.weight"], p, "filter", "biasbn"), rtol=2e-5)
