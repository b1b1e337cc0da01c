"""VmapEvaluator: the same numbers as the per-point loop and as an independent deep copy with the weights loaded."""
import threading

import numpy as np
import pytest
import torch
from torch import nn

import landscape_widgets as lw
from landscape_widgets import batched, examples
from landscape_widgets.batched import VmapEvaluator, VmapExecutor
from landscape_widgets.chooser import choose
from landscape_widgets.driver import run_points
from landscape_widgets.loop import LoopExecutor

from helpers import SmallNet, assert_same, direct_loss, moving, snapshot


def _plane_reference(model, surf, batches, loss_fn=nn.functional.cross_entropy):
    base = {n: p.detach() for n, p in model.named_parameters()}
    d1, d2 = surf.directions
    ref = np.empty_like(surf.losses)
    total = sum(len(y) for _x, y in batches)
    for i, a in enumerate(surf.alphas):
        for j, b in enumerate(surf.betas):
            params = {n: base[n] + float(a) * d1[n] + float(b) * d2[n] for n in base}
            ref[i, j] = sum(direct_loss(model, params, x, y, loss_fn) * len(y) for x, y in batches) / total
    return ref


def test_vmap_plane_equals_loop_and_direct(small):
    model, data = small
    snap, rng_state = snapshot(model), torch.get_rng_state()
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    loop = ls.plane(resolution=(5, 4), progress=False, evaluator="loop")
    vm = ls.plane(resolution=(5, 4), progress=False, evaluator="vmap")
    assert vm.meta["evaluator"] == "vmap" and loop.meta["evaluator"] == "loop"
    np.testing.assert_allclose(vm.losses, loop.losses, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vm.losses, _plane_reference(model, vm, [data]), rtol=1e-5, atol=1e-6)
    assert_same(model, snap)
    assert torch.equal(torch.get_rng_state(), rng_state)


def test_vmap_chunks_dataloader_batches(small):
    """Unequal batches of an iterable, chunks that do not divide the tile: sample-weighted means still exact."""
    model, (x, y) = small
    batches = [(x[:17], y[:17]), (x[17:30], y[17:30]), (x[30:], y[30:])]
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), batches, device="cpu")
    surf = ls.plane(resolution=(3, 5), progress=False, evaluator="loop")
    private = ls.problem.private()
    dirs = [{n: t.clone() for n, t in d.items()} for d in surf.directions]
    ev = VmapEvaluator(private, ls.data, ls.loss_fn, moving(ls, private, dirs), chunk_size=4)
    coords = np.stack(np.meshgrid(surf.alphas, surf.betas, indexing="ij"), -1).reshape(-1, 2)
    got = run_points(ev, coords, tile_size=7).reshape(surf.losses.shape)
    assert set(ev.record().chunks) <= {1, 2, 3, 4} and max(ev.record().chunks) == 4
    np.testing.assert_allclose(got, _plane_reference(model, surf, batches), rtol=1e-5, atol=1e-6)


def test_vmap_interpolate_moves_buffers(small):
    model, data = small
    start = SmallNet(seed=5)
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    loop = ls.interpolate(start, steps=5, progress=False, evaluator="loop")
    vm = ls.interpolate(start, steps=5, progress=False, evaluator="vmap")
    np.testing.assert_allclose(vm.losses, loop.losses, rtol=1e-5, atol=1e-6)
    x, y = data
    a = float(vm.alphas[3])  # theta(a) = (1 - a) start + a model, buffers too
    mix = lambda m0, m1: {n: (1 - a) * m0[n] + a * m1[n] for n in m1}  # noqa: E731
    params = mix(dict(start.named_parameters()), dict(model.named_parameters()))
    buffers = mix({n: b for n, b in start.named_buffers() if b.is_floating_point()},
                  {n: b for n, b in model.named_buffers() if b.is_floating_point()})
    assert vm.losses[3] == pytest.approx(direct_loss(model, params, x, y, buffers=buffers), rel=1e-5)


def test_vmap_loss_that_cannot_be_vmapped_falls_back(small):
    """A loss calling .item() cannot run under vmap: the outputs are still batched, the loss runs per point."""
    model, data = small
    ls = lw.Landscape(model, lambda out, y: nn.functional.cross_entropy(out, y).item(), data, device="cpu")
    vm = ls.line(steps=6, progress=False, evaluator="vmap")
    loop = ls.line(steps=6, progress=False, evaluator="loop")
    np.testing.assert_allclose(vm.losses, loop.losses, rtol=1e-5)


def test_vmap_halves_chunk_on_out_of_memory(small, monkeypatch):
    model, data = small
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    surf = ls.line(steps=9, progress=False, evaluator="loop")
    private = ls.problem.private()
    ev = VmapEvaluator(private, ls.data, ls.loss_fn, moving(ls, private, [surf.direction]), chunk_size=8)
    real = VmapEvaluator._chunk_losses
    sizes = []

    def fake(self, c, x, y):
        sizes.append(len(c))
        if len(c) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return real(self, c, x, y)

    monkeypatch.setattr(VmapEvaluator, "_chunk_losses", fake)
    got = run_points(ev, surf.alphas[:, None], tile_size=9)
    assert sizes[:3] == [8, 4, 2] and ev.record().chunks == [2, 2, 2, 2, 1] and ev.chunk_size == 2
    np.testing.assert_allclose(got, surf.losses, rtol=1e-5)


def test_vmap_oom_at_one_point_is_raised(small, monkeypatch):
    model, data = small
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")

    def fake(self, c, x, y):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(VmapEvaluator, "_chunk_losses", fake)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        ls.line(steps=3, progress=False, evaluator="vmap")


def test_vmap_tiles_and_cancel(small):
    model, data = small
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    stop = threading.Event()
    seen = []

    def on_tile(tile):
        seen.append(tile)
        stop.set()

    with pytest.raises(lw.Cancelled):
        # vmap tiles hold about batched.TILE_POINTS points: two tiles here
        ls.plane(resolution=(70, 8), progress=False, evaluator="vmap", callback=on_tile, cancel=stop)
    assert len(seen) == 1 and seen[0].start == 0 and np.isfinite(seen[0].values).all()


def test_vmap_nan_is_data(small):
    model, data = small
    ls = lw.Landscape(model, lambda out, y: nn.functional.cross_entropy(out, y) * float("nan"), data, device="cpu")
    assert np.isnan(ls.line(steps=3, progress=False, evaluator="vmap").losses).all()


def test_evaluator_choice_and_errors(small):
    model, data = small
    assert isinstance(choose("auto", "cpu"), LoopExecutor)
    assert isinstance(choose("auto", "cuda"), VmapExecutor) and choose("auto", "cuda").autotune
    assert isinstance(choose("auto", "cuda", buffers="recompute"), LoopExecutor)
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    with pytest.raises(ValueError, match="evaluator='fast'.*'auto', 'loop', 'vmap'"):
        ls.plane(resolution=3, progress=False, evaluator="fast")
    with pytest.raises(ValueError, match="evaluator='loop'"):
        ls.interpolate(SmallNet(seed=3), steps=3, buffers="recompute", progress=False, evaluator="vmap")
    private = ls.problem.private()
    with pytest.raises(ValueError, match="chunk_size"):
        VmapEvaluator(private, ls.data, ls.loss_fn, [], chunk_size=0)


@pytest.mark.slow
def test_vmap_digits_cnn_matches_loop():
    x, y = examples.digits(flat=False)
    x, y = x[:300], y[:300]
    ls = lw.Landscape(examples.digits_cnn(), nn.CrossEntropyLoss(), (x, y), device="cpu")
    loop = ls.plane(resolution=(4, 3), progress=False, evaluator="loop")
    vm = ls.plane(resolution=(4, 3), progress=False, evaluator="vmap")
    np.testing.assert_allclose(vm.losses, loop.losses, rtol=1e-5, atol=1e-6)



@pytest.mark.parametrize("peak_mib, oom, want", [(2, False, batched.MAX_CHUNK), (200, False, 40), (0, True, 1)])
def test_auto_chunk_from_free_cuda_memory(small, monkeypatch, peak_mib, oom, want):
    """The CUDA branch with torch.cuda's memory queries faked: half of 8 GiB free over the probe's per-point peak."""
    model, data = small
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    private = ls.problem.private()
    line = ls.line(steps=3, progress=False, evaluator="loop")
    ev = VmapEvaluator(private, ls.data, ls.loss_fn, moving(ls, private, [line.direction]))
    mib = 2 ** 20
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8192 * mib, 16384 * mib))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: peak_mib * mib)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    if oom:
        def fake(self, c, x, y):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        monkeypatch.setattr(VmapEvaluator, "_chunk_losses", fake)
    monkeypatch.setattr(private, "device", torch.device("cuda"))
    (x, y, _n), = ls.data.batches("cpu")
    assert ev._auto_chunk(torch.zeros(5, 1, dtype=torch.float64), x, y) == want


@pytest.mark.parametrize("loop_faster", [True, False])
def test_autotune_keeps_the_faster_path_and_the_values(small, monkeypatch, loop_faster, tune_small_tiles):
    """evaluator="auto" on CUDA times vmap against the loop on its first tile; both paths give the same values."""
    import landscape_widgets.batched as B

    model, (x, y) = small
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y), device="cpu")
    surf = ls.plane(resolution=(6, 9), progress=False, evaluator="loop")
    private = ls.problem.private()
    dirs = [{n: t.clone() for n, t in d.items()} for d in surf.directions]
    # a fake clock: each point costs `slow` ticks on one path and `fast` on the other
    slow, fast = (1000.0, 1.0) if loop_faster else (1.0, 1000.0)
    ticks = {"t": 0.0}
    ev = VmapEvaluator(private, ls.data, ls.loss_fn, moving(ls, private, dirs), autotune=True, **tune_small_tiles,
                       clock=lambda: ticks["t"])
    real_vmap, real_loop = VmapEvaluator._vmap_tile, B.PointEvaluator.evaluate

    def vmap_tile(self, coords):
        ticks["t"] += slow * len(coords)
        return real_vmap(self, coords)

    def loop_tile(self, coords):
        ticks["t"] += fast * len(coords)
        return real_loop(self, coords)

    monkeypatch.setattr(VmapEvaluator, "_vmap_tile", vmap_tile)
    monkeypatch.setattr(B.PointEvaluator, "evaluate", loop_tile)
    coords = np.stack(np.meshgrid(surf.alphas, surf.betas, indexing="ij"), -1).reshape(-1, 2)
    got = run_points(ev, coords, tile_size=36).reshape(surf.losses.shape)
    assert ev.mode == ("loop" if loop_faster else "vmap")
    np.testing.assert_allclose(got, surf.losses, rtol=1e-5, atol=1e-7)
