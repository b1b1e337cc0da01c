"""affine_layers: the plane's affine structure in conv/linear layers under vmap, against a Python loop of the layer
at each point's own weights W0 + sum_k c_k D_k; its fallbacks; and the vmap evaluator with it against the loop."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

import landscape_widgets as lw
from landscape_widgets import batched
from landscape_widgets.gpu import affine as al
from landscape_widgets.gpu.affine import AffinePoints
from landscape_widgets.batched import VmapEvaluator
from landscape_widgets.driver import run_points

from helpers import assert_same, auto_as_on_cuda, moving, snapshot, small_data
from test_batched import _plane_reference
from test_gpu_im2col import BnCNN

B = 4


@pytest.fixture
def spy(monkeypatch):
    """Per conv2d/linear call that the mode sees: False where a rule computed it from the parts, True where vmap's
    own rule did (the mode passed it on, or a rule fell back)."""
    calls = []
    real_fallback = al._vmaps_own_rule
    monkeypatch.setattr(al, "_vmaps_own_rule", lambda *a: calls.append(True) or real_fallback(*a))
    for name in ("_conv", "_linear"):
        real = getattr(al.AffineMode, name)

        def routed(self, *args, _real=real, **kwargs):
            out = _real(self, *args, **kwargs)
            calls.append(out is None)
            return out

        monkeypatch.setattr(al.AffineMode, name, routed)
    return calls


def _moving(module, dtype, dirs_of, seed=0):
    """(name, base, dirs) for the module's parameters, two directions; dirs_of[name] says which are None."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for name, p in module.named_parameters():
        base = p.detach().to(dtype)
        dirs = [torch.randn(p.shape, generator=gen, dtype=dtype) if k in dirs_of.get(name, (0, 1)) else None
                for k in range(2)]
        out.append((name, base, dirs))
    return out


def _point_params(moving, c):
    out = {}
    for name, base, dirs in moving:
        t = base.clone()
        for k, d in enumerate(dirs):
            if d is not None:
                t = t + c[k].to(d.dtype) * d
        out[name] = t
    return out


def _run(module, moving, c, x, x_batched, spy=None):
    """The evaluator's pattern: stacked weights and the point's coefficients into one vmapped functional_call."""
    points = AffinePoints(moving)
    stacked = {name: torch.stack([_point_params(moving, ci)[name] for ci in c]) for name, _b, _d in moving}

    def f(mv, ci, xi):
        with points.mode(mv, ci):
            return functional_call(module, mv, (xi,))

    if spy is not None:
        spy.clear()
    return torch.vmap(f, in_dims=(0, 0, 0 if x_batched else None))(stacked, c, x)


def _loop(module, moving, c, x, x_batched):
    return torch.stack([functional_call(module, _point_params(moving, ci), (x[i] if x_batched else x,))
                        for i, ci in enumerate(c)])


def _coords(dtype=torch.float64):
    return torch.tensor([[0.0, 0.0], [1.0, -0.5], [-2.0, 0.25], [0.5, 3.0]], dtype=dtype)


CONV_CASES = [dict(), dict(stride=2), dict(padding=1), dict(stride=2, padding=1, dilation=2),
              dict(stride=(2, 1), padding=(0, 1), dilation=(1, 2)), dict(padding="same", dilation=2)]
DIRS = [{}, {"weight": (0,), "bias": (0,)}, {"weight": (1,), "bias": ()}, {"weight": (0, 1), "bias": (1,)}]


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("kw", CONV_CASES)
@pytest.mark.parametrize("x_batched", [False, True])
@pytest.mark.parametrize("bias, dirs_of", [(True, d) for d in DIRS] + [(False, {})])
def test_conv_rule_equals_per_point_loop(monkeypatch, dtype, rtol, kw, x_batched, bias, dirs_of, spy):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, (3, 2), bias=bias, **kw).to(dtype)
    moving = _moving(conv, dtype, dirs_of)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*((B,) if x_batched else ()), 2, 3, 9, 7, generator=gen, dtype=dtype)
    ref = _loop(conv, moving, _coords(), x, x_batched)
    got = _run(conv, moving, _coords(), x, x_batched, spy)
    assert got.shape == ref.shape and got.dtype == dtype
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=rtol, atol=rtol * float(ref.abs().max()))
    assert spy and not any(spy)  # one plain convolution: no grouped one


@pytest.mark.parametrize("nd, kw", [(1, dict()), (1, dict(stride=2, padding=1, dilation=2)), (1, dict(padding="same")),
                                   (3, dict()), (3, dict(stride=(1, 2, 1), padding=1))])
@pytest.mark.parametrize("x_batched", [False, True])
@pytest.mark.parametrize("bias, dirs_of", [(True, {}), (True, {"weight": (0, 1), "bias": (1,)}), (False, {})])
def test_conv1d_and_conv3d_rules_equal_per_point_loop(nd, kw, x_batched, bias, dirs_of, spy):
    torch.manual_seed(0)
    conv = (nn.Conv1d(3, 4, 3, bias=bias, **kw) if nd == 1 else nn.Conv3d(3, 4, (2, 3, 2), bias=bias, **kw)).double()
    moving = _moving(conv, torch.float64, dirs_of)
    x = torch.randn(*((B,) if x_batched else ()), 2, 3, *((9,) if nd == 1 else (4, 5, 6)), dtype=torch.float64)
    ref = _loop(conv, moving, _coords(), x, x_batched)
    got = _run(conv, moving, _coords(), x, x_batched, spy)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-12, atol=1e-12 * float(ref.abs().max()))
    assert spy and not any(spy)


@pytest.mark.parametrize("shape", [(6, 7), (2, 3, 7), (7,)])
@pytest.mark.parametrize("bias, dirs_of", [(True, d) for d in DIRS] + [(False, {})])
def test_linear_rule_on_a_shared_input_equals_per_point_loop(shape, bias, dirs_of, spy):
    torch.manual_seed(0)
    lin = nn.Linear(7, 5, bias=bias).double()
    moving = _moving(lin, torch.float64, dirs_of)
    x = torch.randn(*shape, dtype=torch.float64)
    ref = _loop(lin, moving, _coords(), x, False)
    got = _run(lin, moving, _coords(), x, False, spy)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-12, atol=1e-12 * float(ref.abs().max()))
    assert spy and not any(spy)


def test_shared_first_layer_is_computed_once_for_all_points(monkeypatch):
    """(1): B points cost one convolution with (K+1) * Cout filters, not B of them."""
    conv = nn.Conv2d(1, 4, 3).double()
    moving = _moving(conv, torch.float64, {})
    shapes, real = [], F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda x, w, *a, **k: shapes.append(tuple(w.shape)) or real(x, w, *a, **k))
    _run(conv, moving, _coords(), torch.randn(5, 1, 8, 8, dtype=torch.float64), False)
    assert shapes == [(4, 1, 3, 3), (12, 1, 3, 3)]  # nn.Conv2d's call (one point's view), then the rule's one


class Transformed(nn.Conv2d):
    """A subclass that convolves with a transformed weight: the rule must not use the untransformed parts."""

    def forward(self, x):
        return self._conv_forward(x, self.weight * 2.0, self.bias)


class Scaled(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 3.0


class Functional(nn.Module):
    """A model that convolves with its own parameters through F.conv2d and F.linear, no nn.Conv2d/nn.Linear."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 4, 3, 3))
        self.b = nn.Parameter(torch.randn(3))
        self.v = nn.Parameter(torch.randn(2, 144))

    def forward(self, x):  # both on the shared input: the linear rule's case too
        h = torch.tanh(F.conv2d(x, self.w, self.b, stride=2, padding=1)).flatten(1)
        return torch.cat([h, F.linear(x.flatten(1), self.v)], 1)


@pytest.mark.parametrize("case", ["subclass", "reflect", "functional"])
def test_rules_reach_subclasses_other_padding_modes_and_functional_code(case, spy):
    """The mode sees conv2d/linear calls, not modules: a subclass, nn.Conv2d's reflect padding (a padded input with
    padding 0) and a model's own F.conv2d/F.linear on its parameters all take the rules."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    if case == "subclass":
        layer, x = Scaled(6, 3), torch.randn(5, 6, dtype=torch.float64)
    elif case == "reflect":
        layer = nn.Conv2d(4, 3, 3, padding=1, padding_mode="reflect")
    else:
        layer = Functional()
    layer = layer.double()
    moving = _moving(layer, torch.float64, {})
    ref = _loop(layer, moving, _coords(), x, False)
    got = _run(layer, moving, _coords(), x, False, spy)
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-12, atol=1e-12)
    assert spy and not any(spy)


@pytest.mark.parametrize("case", ["batched_linear", "groups", "bias_only_direction", "transformed"])
def test_fallbacks_equal_the_loop(case, spy):
    torch.manual_seed(0)
    dtype, x_batched, dirs_of = torch.float64, False, {}
    x = torch.randn(2, 4, 6, 6, dtype=dtype)
    if case == "batched_linear":
        layer, x, x_batched = nn.Linear(7, 3), torch.randn(B, 5, 7, dtype=dtype), True
    elif case == "groups":
        layer = nn.Conv2d(4, 4, 3, groups=2)
    elif case == "bias_only_direction":  # the bias moves along direction 1, the weight does not
        layer, dirs_of = nn.Conv2d(4, 3, 3), {"weight": (0,), "bias": (0, 1)}
    else:
        layer = Transformed(4, 3, 3)
    layer = layer.to(dtype)
    moving = _moving(layer, dtype, dirs_of)
    ref = _loop(layer, moving, _coords(), x, x_batched)
    got = _run(layer, moving, _coords(), x, x_batched, spy)
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-12, atol=1e-12)
    assert spy and any(spy)  # vmap's own rule, on the stacked weights


@pytest.mark.parametrize("make, shape", [(lambda: nn.BatchNorm2d(3), (5, 3, 4, 4)), (lambda: nn.BatchNorm1d(3), (5, 3)),
                                         (lambda: nn.BatchNorm1d(3), (5, 3, 6)),
                                         (lambda: nn.BatchNorm3d(3), (2, 3, 2, 3, 2))])
@pytest.mark.parametrize("x_batched", [False, True])
def test_eval_batchnorm_is_one_multiply_add_per_point(monkeypatch, make, shape, x_batched):
    torch.manual_seed(0)
    bn = make().double().eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(3))
        bn.running_var.copy_(torch.rand(3) + 0.5)
    moving = _moving(bn, torch.float64, {"bias": (1,)})
    x = torch.randn(*((B,) if x_batched else ()), *shape, dtype=torch.float64)
    ref = _loop(bn, moving, _coords(), x, x_batched)
    calls, real = [], torch.addcmul
    monkeypatch.setattr(torch, "addcmul", lambda *a, **k: calls.append(1) or real(*a, **k))
    got = _run(bn, moving, _coords(), x, x_batched)
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-12, atol=1e-12)
    assert calls == [1]


def test_training_batchnorm_keeps_its_own_forward():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3, track_running_stats=False).double()  # batch statistics at every point
    moving = _moving(bn, torch.float64, {})
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    np.testing.assert_allclose(_run(bn, moving, _coords(), x, False).numpy(),
                               _loop(bn, moving, _coords(), x, False).numpy(), rtol=1e-12, atol=1e-12)


class MixedNet(nn.Module):
    """BnCNN's convolutions (shared first layer, strided, dilated, bias-free), then a linear layer on every point's
    own features and one more on a shared input added back: every rule and fallback in one model."""

    def __init__(self):
        super().__init__()
        self.cnn = BnCNN()
        self.side = nn.Linear(64, 4)

    def forward(self, x):
        return self.cnn(x) + self.side(x.flatten(1))


@pytest.mark.parametrize("make", [BnCNN, MixedNet])
def test_plane_and_line_equal_loop_and_direct(monkeypatch, make, spy):
    torch.manual_seed(0)
    model, data = make(), small_data()
    snap, rng = snapshot(model), torch.get_rng_state()
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    loop = ls.plane(resolution=(4, 3), progress=False, evaluator="loop")
    spy.clear()
    vm = ls.plane(resolution=(4, 3), progress=False, evaluator="vmap:affine")
    assert spy and not all(spy)
    assert vm.meta["vmap_rule"] == "affine" and "vmap_rule" not in loop.meta
    np.testing.assert_allclose(vm.losses, loop.losses, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vm.losses, _plane_reference(model, vm, [data]), rtol=1e-5, atol=1e-6)
    line_loop = ls.line(steps=5, progress=False, evaluator="loop")
    line_vm = ls.line(steps=5, progress=False, evaluator="vmap:affine")
    np.testing.assert_allclose(line_vm.losses, line_loop.losses, rtol=1e-5, atol=1e-6)
    assert_same(model, snap)
    assert torch.equal(torch.get_rng_state(), rng)


def test_interpolation_with_moving_batchnorm_statistics_equals_loop(monkeypatch):
    """buffers="interpolate" moves BatchNorm's running statistics with the weights: batch_norm's addcmul then takes
    per-point statistics, and every parameter (biases and BatchNorm's too) moves along the one direction."""
    torch.manual_seed(0)
    model, data = BnCNN(), small_data()
    start = BnCNN()
    with torch.no_grad():
        start.bn.running_mean.add_(0.5)
        start.bn.running_var.mul_(2.0)
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    loop = ls.interpolate(start.state_dict(), steps=7, progress=False, evaluator="loop")
    vm = ls.interpolate(start.state_dict(), steps=7, progress=False, evaluator="vmap:affine")
    assert vm.meta["vmap_rule"] == "affine"
    np.testing.assert_allclose(vm.losses, loop.losses, rtol=1e-5, atol=1e-6)


def test_no_module_is_touched_and_the_mode_ends_on_error():
    model, data = BnCNN(), small_data()
    snap = snapshot(model)
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    surf = ls.plane(resolution=(2, 2), progress=False, evaluator="loop")
    private = ls.problem.private()
    before = {id(m): dict(vars(m)) for m in private.module.modules()}
    seen = []

    def loss(out, y):
        seen.append(torch._C._len_torch_function_stack())
        raise RuntimeError("boom")

    ev = VmapEvaluator(private, ls.data, loss, moving(ls, private, surf.directions), rule="affine")
    with pytest.raises(RuntimeError, match="boom"):
        run_points(ev, np.zeros((3, 2)))
    assert seen and all(n == 0 for n in seen)  # the loss runs after the forward: the mode is already off
    assert torch._C._len_torch_function_stack() == 0
    assert all(dict(vars(m)).keys() == before[id(m)].keys() for m in private.module.modules())
    assert_same(model, snap)


def bn_cnn_plane(resolution=(6, 7), **kw):
    """A BnCNN's plane by the per-point loop, a VmapEvaluator (``kw``) over the same points, and the points."""
    model, data = BnCNN(), small_data()
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    loop = ls.plane(resolution=resolution, progress=False, evaluator="loop")
    private = ls.problem.private()
    ev = VmapEvaluator(private, ls.data, ls.loss_fn, moving(ls, private, loop.directions), **kw)
    coords = np.stack(np.meshgrid(loop.alphas, loop.betas, indexing="ij"), -1).reshape(-1, 2)
    return loop, ev, coords


@pytest.mark.parametrize("fastest", ["affine", "im2col", "vmap"])
def test_autotune_times_every_rule(monkeypatch, fastest, tune_small_tiles, every_rule_measured):
    """With rule=None, autotune splits its first tile between the rules that apply, keeps the fastest one (a fake
    clock decides here), and the values stay the loop's."""
    ticks = {"t": 0.0}
    loop, ev, coords = bn_cnn_plane(autotune=True, **tune_small_tiles, **every_rule_measured,
                                    clock=lambda: ticks["t"])
    assert ev._rules == ["affine", "im2col", "vmap"]
    real_vmap, real_loop = VmapEvaluator._vmap_tile, batched.PointEvaluator.evaluate

    def vmap_tile(self, coords):
        ticks["t"] += (1.0 if self.rule == fastest else 5.0) * len(coords)
        return real_vmap(self, coords)

    def loop_tile(self, coords):
        ticks["t"] += 100.0 * len(coords)
        return real_loop(self, coords)

    monkeypatch.setattr(VmapEvaluator, "_vmap_tile", vmap_tile)
    monkeypatch.setattr(batched.PointEvaluator, "evaluate", loop_tile)
    got = run_points(ev, coords, tile_size=42).reshape(loop.losses.shape)
    assert ev.mode == "vmap" and ev.rule == fastest
    assert {k: v for k, v in ev.timings.items() if k.startswith("vmap_") and k != "vmap_s_per_point"} == {
        f"vmap_{r}_s_per_point": 1.0 if r == fastest else 5.0 for r in ("affine", "im2col", "vmap")}
    np.testing.assert_allclose(got, loop.losses, rtol=1e-5, atol=1e-6)


def test_autotune_rules_for_a_model_without_convolutions(every_rule_measured):
    model = nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 4))
    x, y = small_data()
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x.flatten(1), y), device="cpu")
    private = ls.problem.private()
    assert VmapEvaluator(private, ls.data, ls.loss_fn, [], autotune=True,
                         **every_rule_measured)._rules == ["affine", "vmap"]
    assert VmapEvaluator(private, ls.data, ls.loss_fn, [], autotune=True, rule="vmap",
                         **every_rule_measured)._rules == ["vmap"]


def test_autotune_choice_is_kept_for_the_next_call(monkeypatch, tune_small_tiles):
    """A Landscape keeps what "auto" chose: the next plane (a widget's next preview) starts on it, without timing
    every path again; other moving tensors (ignore=None moves the biases too) are tuned afresh."""
    auto = auto_as_on_cuda(**tune_small_tiles)
    tunes = []
    real = VmapEvaluator._tune
    monkeypatch.setattr(VmapEvaluator, "_tune", lambda self, c: tunes.append(len(c)) or real(self, c))
    model, data = BnCNN(), small_data()
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    loop = ls.plane(resolution=(6, 7), progress=False, evaluator="loop")
    first = ls.plane(resolution=(6, 7), progress=False, evaluator=auto)
    second = ls.plane(resolution=(6, 7), progress=False, evaluator=auto, seed=1)
    assert tunes == [42] and second.meta["evaluator_timings"]["reused"] is True
    assert second.meta["evaluator"] == first.meta["evaluator"]
    assert second.meta.get("vmap_rule") == first.meta.get("vmap_rule")
    np.testing.assert_allclose(first.losses, loop.losses, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(second.losses, ls.plane(resolution=(6, 7), progress=False, evaluator="loop",
                                                       seed=1).losses, rtol=1e-5, atol=1e-6)
    ls.plane(resolution=(6, 7), progress=False, evaluator=auto, ignore=None)
    assert tunes == [42, 42]


def test_a_preview_sized_tile_runs_on_the_default_rule_and_leaves_tuning_to_a_large_one(monkeypatch):
    """Below AUTO_MIN_POINTS (a widget's 9x9 preview) "auto" neither times the rules nor keeps a choice; the first
    large tile does both."""
    auto = auto_as_on_cuda(auto_min_points=50)
    tunes = []
    real = VmapEvaluator._tune
    monkeypatch.setattr(VmapEvaluator, "_tune", lambda self, c: tunes.append(len(c)) or real(self, c))
    ls = lw.Landscape(BnCNN(), nn.CrossEntropyLoss(), small_data(), device="cpu")
    preview = ls.plane(resolution=(7, 7), progress=False, evaluator=auto)
    assert tunes == [] and not ls.problem.tune_cache and preview.meta["vmap_rule"] == "vmap"
    ls.plane(resolution=(8, 8), progress=False, evaluator=auto)
    assert tunes == [64] and ls.problem.tune_cache
    np.testing.assert_allclose(preview.losses, ls.plane(resolution=(7, 7), progress=False, evaluator="loop").losses,
                               rtol=1e-5, atol=1e-6)


def test_conv_rule_takes_the_points_dim_anywhere():
    """vmap may hand the rule an input whose points' dim is not first (after a transpose in the model, say)."""
    conv = nn.Conv2d(3, 5, 3, padding=1).double()
    moving = _moving(conv, torch.float64, {})
    x = torch.randn(B, 2, 3, 6, 5, dtype=torch.float64)
    points = AffinePoints(moving)
    stacked = {n: torch.stack([_point_params(moving, ci)[n] for ci in _coords()]) for n, _b, _d in moving}

    def f(mv, ci, xi):
        with points.mode(mv, ci):
            return functional_call(conv, mv, (xi,))

    got = torch.vmap(f, in_dims=(0, 0, 2))(stacked, _coords(), x.movedim(0, 2))
    np.testing.assert_allclose(got.numpy(), _loop(conv, moving, _coords(), x, True).numpy(), rtol=1e-12, atol=1e-12)
