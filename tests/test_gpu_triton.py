"""triton_conv: every point's convolution with its own weights in one Triton kernel, run here in Triton's
interpreter (no GPU) against a loop of F.conv2d at each point's weights; compiled for Hopper and Ampere GPUs from
this CPU (Triton's own ptxas), so a kernel that would not build on a device fails here; the "triton" rule of the
vmap evaluator against the per-point loop; and what happens where the kernel does not apply or fails."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import landscape_widgets as lw
from landscape_widgets import chooser
from landscape_widgets.gpu import triton as triton_conv
from landscape_widgets.batched import VmapEvaluator, VmapExecutor
from landscape_widgets.chooser import tuned_rules
from landscape_widgets.driver import run_points

from helpers import assert_same, snapshot, small_data
from test_gpu_affine import bn_cnn_plane
from test_gpu_im2col import BnCNN

triton = pytest.importorskip("triton")


@pytest.fixture(params=[False, True], ids=["unrolled", "flat"])
def interpret(request):
    """Triton's interpreter, in both loop forms of the kernel: the kernel state that runs it."""
    assert triton_conv.available("cpu"), "conftest sets TRITON_INTERPRET=1 before Triton is imported"
    return triton_conv.KernelState(interpreter_flat=request.param)


def _loop(x, cc, stack, bias, stride, padding, dilation):
    out = []
    for p in range(len(x)):
        w = (cc[p].to(stack.dtype).view(-1, 1, 1, 1, 1) * stack).sum(0)
        b = None if bias is None else bias[p] if bias.dim() == 2 else bias
        out.append(F.conv2d(x[p], w, b, stride, padding, dilation))
    return torch.stack(out)


CASES = [  # (points, images, C, H, W, Cout, kernel, stride, padding, dilation)
    (3, 2, 5, 7, 6, 20, (3, 3), 1, 1, 1),
    (2, 3, 16, 8, 8, 32, (3, 3), 1, 1, 1),     # the digits CNN's second convolution
    (2, 1, 3, 9, 9, 4, (3, 2), 2, (1, 0), (1, 2)),
    (2, 2, 40, 5, 5, 70, (1, 1), 1, 0, 1),     # channels in three K blocks, outputs in two N blocks
    (2, 2, 4, 6, 6, 5, (3, 3), 1, "same", 2),
    (2, 2, 4, 9, 7, 5, (3, 3), (2, 1), 1, 1),
    (2, 2, 4, 7, 5, 6, (2, 3), 1, "valid", 1),
    (1, 5, 2, 12, 11, 3, (5, 5), 1, 2, 1),     # 660 output pixels: six M blocks, the last one partial
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("bias", [None, "shared", "per point"])
def test_kernel_equals_a_loop_of_conv2d(interpret, case, layout, bias):
    b, n, c, h, w, cout, kernel, stride, padding, dilation = case
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, n, c, h, w, generator=g)
    if layout == "nhwc":
        x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (b, n))
    stack = torch.randn(3, cout, c, *kernel, generator=g)
    cc = torch.cat([torch.ones(b, 1), torch.randn(b, 2, generator=g)], 1)
    bias = {None: None, "shared": torch.randn(cout, generator=g), "per point": torch.randn(b, cout, generator=g)}[bias]
    got = triton_conv.conv2d_points(x, cc, stack, bias, stride, padding, dilation, state=interpret)
    want = _loop(x, cc, stack, bias, stride, padding, dilation)
    assert got is not None and got.shape == want.shape
    # float32 rounding of sums of up to 250 products: relative to the output's scale
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * want.abs().max().item())
    # the output keeps the input's layout, so the layers after it see what cuDNN would have given them
    assert got.flatten(0, 1).is_contiguous(memory_format=torch.channels_last if layout == "nhwc" and c > 1
                                           else torch.contiguous_format)


def test_random_layers_equal_a_loop_of_conv2d(interpret):
    """A seeded sweep over what the cases above do not pin: one to three weight sets, 1x1 to 4x4 kernels, strides
    and dilations per axis, single pixels and single channels, and a points dim that is not the outermost."""
    import random

    rng, g = random.Random(0), torch.Generator().manual_seed(0)
    done = 0
    while done < 30:
        b, n, c, cout = rng.randint(1, 3), rng.randint(1, 3), rng.choice([1, 2, 7, 17, 33]), rng.choice([1, 5, 31, 65])
        kernel, stride = (rng.randint(1, 4), rng.randint(1, 4)), (rng.randint(1, 3), rng.randint(1, 3))
        dilation, padding = (rng.randint(1, 2), rng.randint(1, 2)), (rng.randint(0, 2), rng.randint(0, 2))
        h, w = rng.randint(1, 12), rng.randint(1, 12)
        reach = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
        if h + 2 * padding[0] < reach[0] or w + 2 * padding[1] < reach[1]:
            continue
        x = torch.randn(n, b, c, h, w, generator=g).transpose(0, 1) if rng.random() < 0.3 else \
            torch.randn(b, n, c, h, w, generator=g)
        stack = torch.randn(rng.randint(1, 3), cout, c, *kernel, generator=g)
        cc = torch.cat([torch.ones(b, 1), torch.randn(b, len(stack) - 1, generator=g)], 1)
        bias = rng.choice([None, torch.randn(cout, generator=g), torch.randn(b, cout, generator=g)])
        want = _loop(x, cc, stack, bias, stride, padding, dilation)
        got = triton_conv.conv2d_points(x, cc, stack, bias, stride, padding, dilation, state=interpret)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * want.abs().max().item() + 1e-7)
        done += 1


def test_where_the_kernel_does_not_apply_it_returns_none(interpret):
    x, cc, stack = torch.randn(2, 1, 3, 6, 6), torch.ones(2, 1), torch.randn(1, 4, 3, 2, 2)
    assert triton_conv.conv2d_points(x.double(), cc, stack.double(), None, 1, 0, 1, state=interpret) is None  # f32
    assert triton_conv.conv2d_points(x, cc, stack, None, 1, "same", 1, state=interpret) is None  # pads one side more
    assert triton_conv.conv2d_points(x, cc, stack, None, 1, 0, 1, state=interpret) is not None


def test_unavailable_without_a_gpu_or_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not triton_conv.available("cpu")
    assert "CUDA" in triton_conv.why_unavailable("cpu") and "rule='affine'" in triton_conv.why_unavailable("cpu")
    x, cc, stack = torch.randn(2, 1, 3, 6, 6), torch.ones(2, 1), torch.randn(1, 4, 3, 3, 3)
    assert triton_conv.conv2d_points(x, cc, stack, None, 1, 0, 1) is None
    model, data = BnCNN(), small_data()
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    private = ls.problem.private()
    with pytest.raises(ValueError, match="rule='triton' cannot run here.*TRITON_INTERPRET=1"):
        VmapEvaluator(private, ls.data, ls.loss_fn, [], rule="triton")
    monkeypatch.setattr(triton_conv.importlib.util, "find_spec", lambda name: None)
    assert "pip install triton" in triton_conv.why_unavailable("cuda")


def test_chosen_configs_reports_the_autotuners_picks(monkeypatch):
    import types

    assert triton_conv.chosen_configs() == {}  # nothing launched on a GPU here
    fake = types.SimpleNamespace(cache={(16, 32, 8, 8, 3, 3, "torch.float32"): "BLOCK_M: 128, num_warps: 4"})
    monkeypatch.setattr(triton_conv, "_kernel", lambda interpret: fake)
    assert triton_conv.chosen_configs() == {(16, 32, 8, 8, 3, 3, "torch.float32"): "BLOCK_M: 128, num_warps: 4"}


def test_auto_times_only_measured_rules():
    """A rule without a device measurement (affine, im2col, triton) runs only when asked for by name."""
    cnn, mlp = BnCNN(), nn.Sequential(nn.Linear(4, 3))
    assert chooser.MEASURED_RULES == ("vmap",) and chooser.DEFAULT_RULES == {"cuda": "vmap"}
    assert tuned_rules(cnn, torch.device("cuda")) == ["vmap"] == tuned_rules(mlp, "cpu")
    assert tuned_rules(nn.Sequential(nn.ReLU()), "cuda") == []


def test_once_measured_auto_offers_the_rules_that_apply(every_rule_measured):
    cnn, mlp = BnCNN(), nn.Sequential(nn.Linear(4, 3))
    measured = every_rule_measured["measured_rules"]
    assert tuned_rules(cnn, torch.device("cuda"), measured) == ["affine", "triton", "im2col", "vmap"]
    assert tuned_rules(cnn, torch.device("cpu"), measured) == ["affine", "im2col", "vmap"]
    assert tuned_rules(mlp, torch.device("cuda"), measured) == ["affine", "vmap"]  # no convolution for the kernel
    assert chooser.requested_rule("vmap:triton") == "triton" and chooser.requested_rule("auto") is None
    with pytest.raises(ValueError, match="'vmap:affine'"):
        chooser.check_evaluator("vmap:fast")


def test_rule_plane_line_and_interpolation_equal_the_loop(interpret, monkeypatch):
    """Through Landscape as a user runs it (the rule as the device's default): every later convolution of the
    model (4 and 6 channels in, strided, dilated, non-square, bias-free) goes through the kernel, per chunk."""
    torch.manual_seed(0)
    model, data, start = BnCNN(), small_data(), BnCNN()
    with torch.no_grad():  # moving BatchNorm statistics and biases: every point has its own conv bias
        start.bn.running_mean.add_(0.5)
        start.c3.bias.add_(1.0)
    snap, rng = snapshot(model), torch.get_rng_state()
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    calls = []
    real = triton_conv.conv2d_points
    monkeypatch.setattr(triton_conv, "conv2d_points", lambda *a, **k: calls.append(a[0].shape[2]) or real(*a, **k))
    rule = VmapExecutor("vmap:triton", rule="triton", kernels=interpret)
    loop = ls.plane(resolution=(4, 3), progress=False, evaluator="loop")
    assert not calls
    vm = ls.plane(resolution=(4, 3), progress=False, evaluator=rule)
    assert vm.meta["vmap_rule"] == "triton" and set(calls) == {4, 6}
    np.testing.assert_allclose(vm.losses, loop.losses, rtol=1e-5, atol=1e-6)
    line_loop = ls.line(steps=5, progress=False, evaluator="loop")
    line_vm = ls.line(steps=5, progress=False, evaluator=rule)
    np.testing.assert_allclose(line_vm.losses, line_loop.losses, rtol=1e-5, atol=1e-6)
    it_loop = ls.interpolate(start.state_dict(), steps=7, progress=False, evaluator="loop")
    it_vm = ls.interpolate(start.state_dict(), steps=7, progress=False, evaluator=rule)
    np.testing.assert_allclose(it_vm.losses, it_loop.losses, rtol=1e-5, atol=1e-6)
    assert vm.execution.fallbacks is None and it_vm.execution.rule == "triton"
    assert_same(model, snap)
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_kernel_that_fails_falls_back_to_cudnn_form_with_a_warning(interpret, monkeypatch):
    def broken(interpret):
        raise RuntimeError("PassManager::run failed")

    monkeypatch.setattr(triton_conv, "_kernel", broken)
    x, cc, stack = torch.randn(2, 1, 3, 6, 6), torch.ones(2, 1), torch.randn(1, 4, 3, 3, 3)
    state = interpret
    with pytest.warns(RuntimeWarning, match="falls back to cuDNN.*PassManager"):
        assert triton_conv.conv2d_points(x, cc, stack, None, 1, 0, 1, state=state) is None
    assert list(state.failures.values()) == ["RuntimeError: PassManager::run failed"]
    loop, ev, coords = bn_cnn_plane((3, 3), rule="triton")
    with pytest.warns(RuntimeWarning):
        got = run_points(ev, coords).reshape(loop.losses.shape)
    np.testing.assert_allclose(got, loop.losses, rtol=1e-5, atol=1e-6)
    assert set(ev.record().fallbacks.values()) == {"RuntimeError: PassManager::run failed"}


def test_a_kernel_that_computes_wrong_values_is_caught_once_per_layer_shape(interpret, monkeypatch):
    """A compiler bug that gives wrong outputs is caught by the first call's check against F.conv2d: the layer keeps
    cuDNN's form, with a warning; a correct kernel is checked once per layer shape, and non-finite inputs (data, not
    errors) neither pass nor fail the check."""
    g = torch.Generator().manual_seed(2)
    x, stack = torch.randn(3, 2, 3, 6, 6, generator=g), torch.randn(3, 4, 3, 3, 3, generator=g)
    cc = torch.cat([torch.ones(3, 1), torch.randn(3, 2, generator=g)], 1)
    real = triton_conv._kernel(True)
    checks = []
    real_verify = triton_conv._verify
    monkeypatch.setattr(triton_conv, "_verify", lambda *a: checks.append(1) or real_verify(*a))
    state = interpret
    bad_x = x.clone()
    bad_x[0, 0, 0, 0, 0] = bad_x[2, 1, 1, 1, 1] = float("nan")
    torch.testing.assert_close(triton_conv.conv2d_points(bad_x, cc, stack, None, 1, 1, 1, state=state),
                               _loop(bad_x, cc, stack, None, 1, 1, 1), rtol=1e-5, atol=1e-5, equal_nan=True)
    assert checks == [1] and not state.verified  # nothing provable: checked again next time
    assert triton_conv.conv2d_points(x[:1], cc[:1], stack, None, 1, 1, 1, state=state) is not None
    assert checks == [1, 1] and not state.verified  # one point checks no point after the first
    assert triton_conv.conv2d_points(x, cc, stack, None, 1, 1, 1, state=state) is not None
    assert checks == [1, 1, 1] and len(state.verified) == 1
    assert triton_conv.conv2d_points(x, cc, stack, None, 1, 1, 1, state=state) is not None and checks == [1, 1, 1]
    # another variant (a bias): checked once more
    assert triton_conv.conv2d_points(x, cc, stack, torch.zeros(4), 1, 1, 1, state=state) is not None
    assert checks == [1, 1, 1, 1] and len(state.verified) == 2

    class OffByOne:  # what a miscompiled kernel might do: the right values for every point but the last
        def __getitem__(self, grid):
            def launch(*args, **meta):
                real[grid](*args, **meta)
                args[3][-1].add_(1.0)
            return launch

    state.verified.clear()
    monkeypatch.setattr(triton_conv, "_kernel", lambda interpret: OffByOne())
    with pytest.warns(RuntimeWarning, match="falls back to cuDNN.*point 2 of 3 differs from F.conv2d"):
        assert triton_conv.conv2d_points(x, cc, stack, None, 1, 1, 1, state=state) is None
    assert "WrongResult" in next(iter(state.failures.values()))


def test_autotune_leaves_out_a_rule_that_raises(monkeypatch, tune_small_tiles, every_rule_measured):
    """A rule whose kernels fail on this device is left out of the first tile's timing, with a warning and its
    error in the timings; its share of the tile is computed by the rule that won."""
    loop, ev, coords = bn_cnn_plane(autotune=True, **tune_small_tiles, **every_rule_measured)
    real = VmapEvaluator._chunk_losses

    def chunk_losses(self, c, x, y):
        if self.rule == "im2col":
            raise RuntimeError("no kernel image is available for execution on the device")
        return real(self, c, x, y)

    monkeypatch.setattr(VmapEvaluator, "_chunk_losses", chunk_losses)
    with pytest.warns(RuntimeWarning, match="'im2col' failed.*no kernel image"):
        got = run_points(ev, coords, tile_size=42).reshape(loop.losses.shape)
    assert ev.rule in ("affine", "vmap") and "vmap_im2col_s_per_point" not in ev.timings
    assert "no kernel image" in ev.timings["vmap_im2col_error"]
    np.testing.assert_allclose(got, loop.losses, rtol=1e-5, atol=1e-6)


def test_a_rule_failing_inside_the_forward_leaves_the_loss_under_vmap(monkeypatch, tune_small_tiles,
                                                                      every_rule_measured):
    """A rule whose layer raises inside the vmapped forward is left out; the loss, which vmap traces fine, stays
    inside vmap for the other rules (the failure is not mistaken for a loss that vmap cannot trace)."""
    from landscape_widgets.gpu import im2col as batched_conv

    loop, ev, coords = bn_cnn_plane(autotune=True, **tune_small_tiles, **every_rule_measured)

    def broken(*args):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(batched_conv, "conv2d", broken)
    with pytest.warns(RuntimeWarning, match="'im2col' failed"):
        got = run_points(ev, coords, tile_size=42).reshape(loop.losses.shape)
    assert ev._loss_in_vmap and "vmap_im2col_error" in ev.timings
    np.testing.assert_allclose(got, loop.losses, rtol=1e-5, atol=1e-6)


def test_autotune_falls_back_to_the_loop_when_every_rule_fails(monkeypatch, tune_small_tiles):
    loop, ev, coords = bn_cnn_plane(autotune=True, **tune_small_tiles)
    monkeypatch.setattr(VmapEvaluator, "_chunk_losses", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.warns(RuntimeWarning, match="cannot batch this model.*boom"):
        values = run_points(ev, coords, tile_size=42)
    assert ev.mode == "loop" and any("boom" in e for e in ev.timings.values())
    np.testing.assert_allclose(values, loop.losses.ravel(), rtol=1e-6)


COMPILE = """
import inspect, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from landscape_widgets.gpu import triton as triton_conv
from landscape_widgets.gpu._triton_kernel import conv_kernel

names = list(inspect.signature(conv_kernel).parameters)
out = []
for arch, precision, (block_m, num_warps, num_stages, flat) in json.loads(sys.argv[1]):
    const = dict(C=16, KH=3, KW=3, STRIDE_H=1, STRIDE_W=1, PAD_H=1, PAD_W=1, DIL_H=1, DIL_W=1, HAS_BIAS=True,
                 PRECISION=precision, BLOCK_M=block_m, BLOCK_N=32, BLOCK_K=16, FLAT=flat)
    sig = {n: "constexpr" if n in const else "*fp32" if n.endswith("_ptr") else "i32" for n in names}
    src = ASTSource(fn=triton.jit(conv_kernel), signature=sig,
                    constexprs={(names.index(k),): v for k, v in const.items()})
    k = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                       options=dict(num_warps=num_warps, num_stages=num_stages))
    ttgir = k.asm["ttgir"]
    out.append(dict(cubin=len(k.asm["cubin"]), wgmma=ttgir.count("ttng.warp_group_dot "),
                    pipelined=ttgir.count("async_copy_global_to_local") > 0))
print(json.dumps(out))
"""


def test_kernel_compiles_for_hopper_and_ampere():
    """Every autotuner config builds for sm_90 (the H200 of benchmarks/RESULTS.md) down to a cubin, with Triton's own
    ptxas, in a process where Triton is imported for GPUs; the taps of a 3x3 kernel become tensor-core (wgmma)
    products where TF32 is allowed; two configs build for sm_80."""
    import json
    import os
    import subprocess
    import sys

    jobs = [(90, p, list(c)) for c in triton_conv.CONFIGS for p in ("tf32", "ieee")]
    jobs += [(80, "tf32", list(c)) for c in triton_conv.CONFIGS[:1] + triton_conv.CONFIGS[-1:]]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run([sys.executable, "-c", COMPILE, json.dumps(jobs)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    built = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(built) == len(jobs) and all(b["cubin"] > 0 for b in built)
    # the unrolled form: one tensor-core product per tap; the flat loop: one in its body, loads software-pipelined
    hopper = [b for b, j in zip(built, jobs) if j[:2] == (90, "tf32")]
    assert [b["wgmma"] for b in hopper] == [1 if flat else 9 for _m, _w, _s, flat in triton_conv.CONFIGS]
    assert all(b["pipelined"] for b, c in zip(hopper, triton_conv.CONFIGS) if c[3])
