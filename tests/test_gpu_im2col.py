"""batched_conv: its vmap rule against a Python loop of F.conv2d per point, its fallbacks against vmap's own rule,
and the vmap evaluator with it against the per-point loop."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import landscape_widgets as lw
from landscape_widgets import examples
from landscape_widgets.batched import VmapEvaluator
from landscape_widgets.driver import run_points
from landscape_widgets.gpu.im2col import conv2d

from helpers import assert_same, moving, randomize, small_data, snapshot
from test_batched import _plane_reference

B, N = 3, 2
CONFIGS = [dict(), dict(stride=2), dict(padding=1), dict(stride=2, padding=1, dilation=2),
           dict(stride=(2, 1), padding=(0, 1), dilation=(1, 2))]
BATCHED = [(True, True, True), (True, True, False), (False, True, True), (False, True, False), (True, False, False),
           (True, False, True), (False, False, True)]  # (input, weight, bias): all four input/weight cases


def _operands(dtype, kernel=(3, 2), bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, 4, 9, 7, generator=gen, dtype=dtype)
    w = torch.randn(B, 5, 4, *kernel, generator=gen, dtype=dtype)
    b = torch.randn(B, 5, generator=gen, dtype=dtype) if bias else None
    return x, w, b


def _per_point(x, w, b, batched_, **kw):
    """Independent reference: one F.conv2d per point."""
    xb, wb, bb = batched_
    pick = lambda t, on, i: t[i] if on and t is not None else (t[0] if t is not None else None)  # noqa: E731
    return torch.stack([F.conv2d(pick(x, xb, i), pick(w, wb, i), pick(b, bb, i), **kw) for i in range(B)])


def _vmapped(fn, x, w, b, batched_, **kw):
    xb, wb, bb = batched_
    args = [t if on or t is None else t[0] for t, on in zip((x, w, b), batched_)]
    dims = tuple(0 if on and t is not None else None for t, on in zip((x, w, b), batched_))
    return torch.vmap(lambda x, w, b: fn(x, w, b, **kw), in_dims=dims)(*args)


@pytest.fixture
def spy(monkeypatch):
    """Records, per F.conv2d call, whether it received vmap-batched tensors (vmap's own, grouped, rule) or not."""
    calls, real = [], F.conv2d

    def conv(x, w, *args, **kwargs):
        calls.append(any(torch._C._functorch.is_batchedtensor(t) for t in (x, w)))
        return real(x, w, *args, **kwargs)

    monkeypatch.setattr(F, "conv2d", conv)
    return calls


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("kw", CONFIGS)
@pytest.mark.parametrize("batched_, bias, kernel", [(bt, bias, k) for bias, k in ((True, (3, 2)), (False, (2, 3)),
                                                                                  (True, (1, 1)))
                                                     for bt in BATCHED if bias or bt[0] or bt[1]])
def test_rule_equals_per_point_loop(dtype, rtol, kw, batched_, bias, kernel, spy):
    x, w, b = _operands(dtype, kernel, bias)
    ref = _per_point(x, w, b, batched_, **kw)
    spy.clear()
    got = _vmapped(conv2d, x, w, b, batched_, **kw)
    assert got.shape == ref.shape and got.dtype == dtype
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=rtol, atol=rtol * float(ref.abs().max()))
    assert not any(spy)  # every convolution ran on plain tensors: no grouped convolution


def test_rule_both_batched_is_one_bmm_and_input_dim_anywhere(monkeypatch):
    x, w, b = _operands(torch.float64)
    bmms, real = [], torch.baddbmm
    monkeypatch.setattr(torch, "baddbmm", lambda *a, **k: bmms.append(1) or real(*a, **k))
    xt = x.movedim(0, 2)  # the points' dim third: the rule moves it first
    got = torch.vmap(lambda x, w, b: conv2d(x, w, b, stride=2, padding=1), in_dims=(2, 0, 0))(xt, w, b)
    np.testing.assert_allclose(got.numpy(), _per_point(x, w, b, (True,) * 3, stride=2, padding=1).numpy(),
                               rtol=1e-12, atol=1e-12)
    assert bmms == [1]


def test_batched_input_and_weights_as_one_bmm():
    x, w, b = _operands(torch.float32)
    kw = dict(stride=2, padding=1, dilation=2)
    ref = _per_point(x, w, b, (True,) * 3, **kw)
    got = _vmapped(conv2d, x, w, b, (True,) * 3, **kw)
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("case", ["groups", "same", "unbatched_image", "complex"])
def test_fallbacks_equal_plain_vmap(case, spy):
    x, w, b = _operands(torch.float64, (3, 3))
    kw = {}
    if case == "groups":
        w, b, kw = w[:, :4, :2], b[:, :4], dict(groups=2)
    elif case == "same":
        kw = dict(padding="same", dilation=2)
    elif case == "unbatched_image":
        x = x[:, 0]  # [C, H, W] per point: conv2d's unbatched form
    else:
        x, w, b = (t.to(torch.complex128) for t in (x, w, b))
    ref = torch.vmap(lambda x, w, b: F.conv2d(x, w, b, **kw))(x, w, b)
    spy.clear()
    got = torch.vmap(lambda x, w, b: conv2d(x, w, b, **kw))(x, w, b)
    assert torch.equal(got, ref)
    assert spy and all(spy)  # vmap's own rule ran


def test_outside_vmap_is_conv2d():
    x, w, b = _operands(torch.float64)
    assert torch.equal(conv2d(x[0], w[0], b[0], stride=2), F.conv2d(x[0], w[0], b[0], stride=2))


class BnCNN(nn.Module):
    """Every handled case: a first layer (input unbatched), strided, dilated, non-square, bias-free layers."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 6, (3, 2), stride=2, padding=1, dilation=(1, 2), bias=False)
        self.c3 = nn.Conv2d(6, 5, 2)
        self.fc = nn.Linear(5 * 3 * 3, 4)
        randomize(self, gen)

    def forward(self, x):
        h = torch.relu(self.bn(self.c1(x)))
        return self.fc(torch.relu(self.c3(torch.relu(self.c2(h)))).flatten(1))


class FallbackCNN(nn.Module):
    """Layers the batched rule leaves to vmap: reflect padding, groups, padding="same", a Conv1d."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect")
        self.c2 = nn.Conv2d(4, 4, 3, groups=2, padding="same")
        self.c3 = nn.Conv1d(4, 3, 3)
        self.fc = nn.Linear(3 * 62, 4)

    def forward(self, x):
        h = torch.tanh(self.c2(torch.tanh(self.c1(x))))
        return self.fc(torch.tanh(self.c3(h.flatten(2))).flatten(1))


@pytest.mark.parametrize("make", [BnCNN, FallbackCNN])
def test_plane_vmap_equals_loop_and_direct(monkeypatch, make, spy):
    torch.manual_seed(0)
    model, data = make(), small_data()
    snap = snapshot(model)
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    loop = ls.plane(resolution=(4, 3), progress=False, evaluator="loop")
    spy.clear()
    vm = ls.plane(resolution=(4, 3), progress=False, evaluator="vmap:im2col")
    np.testing.assert_allclose(vm.losses, loop.losses, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vm.losses, _plane_reference(model, vm, [data]), rtol=1e-5, atol=1e-6)
    if make is BnCNN:
        assert spy and not any(spy)  # all three layers took the batched rule
    else:
        assert any(spy)  # the grouped and "same" layer fell back (reflect padding is never patched)
    assert_same(model, snap)
    assert all("_conv_forward" not in vars(m) for m in model.modules())


def test_switch_and_default(small):
    model, data = small
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    private = ls.problem.private()
    assert VmapEvaluator(private, ls.data, ls.loss_fn, []).rule == "vmap"  # CPU: vmap's own rule by default
    assert VmapEvaluator(private, ls.data, ls.loss_fn, [], rule="im2col").rule == "im2col"
    with pytest.raises(ValueError, match="rule='bmm' is not known; pass None .* 'vmap', 'im2col', 'affine'"):
        VmapEvaluator(private, ls.data, ls.loss_fn, [], rule="bmm")


def test_patches_only_the_private_copy_and_restores_on_error(spy):
    model, data = BnCNN(), small_data()
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    surf = ls.line(steps=3, progress=False, evaluator="loop")
    private = ls.problem.private()
    seen = []

    def loss(out, y):
        seen.append([("_conv_forward" in vars(m)) for m in (private.module.c1, private.module.c2, model.c1)])
        raise RuntimeError("boom")

    ev = VmapEvaluator(private, ls.data, loss, moving(ls, private, [surf.direction]), rule="im2col")
    with pytest.raises(RuntimeError, match="boom"):
        run_points(ev, surf.alphas[:, None])
    assert seen and all(s == [True, True, False] for s in seen)  # patched while running; the user's model never
    assert all("_conv_forward" not in vars(m) for mod in (private.module, model) for m in mod.modules())
    assert not any(spy)


@pytest.mark.slow
def test_digits_cnn_plane(monkeypatch):
    x, y = examples.digits(flat=False)
    ls = lw.Landscape(examples.digits_cnn(), nn.CrossEntropyLoss(), (x[:300], y[:300]), device="cpu")
    loop = ls.plane(resolution=(4, 3), progress=False, evaluator="loop")
    vm = ls.plane(resolution=(4, 3), progress=False, evaluator="vmap:im2col")
    np.testing.assert_allclose(vm.losses, loop.losses, rtol=1e-5, atol=1e-6)
