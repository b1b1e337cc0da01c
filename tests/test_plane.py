"""Planes and lines against direct evaluations of a deep copy (independent of the evaluator)."""
import numpy as np
import pytest
import torch
from torch import nn

import landscape_widgets as lw
from landscape_widgets.driver import run_points
from helpers import SmallNet, assert_same, direct_loss, loop_evaluator, small_data, snapshot

CE = nn.CrossEntropyLoss()


def test_centre_equals_loss_and_cells_equal_direct_evaluation(small):
    model, (x, y) = small
    ls = lw.Landscape(model, CE, (x, y), device="cpu")
    surf = ls.plane(resolution=(7, 5), span=((-1.0, 1.0), (-0.5, 0.5)), progress=False)
    assert surf.losses.shape == (7, 5) and surf.alphas.shape == (7,) and surf.betas.shape == (5,)
    assert surf.losses[3, 2] == pytest.approx(ls.loss(), rel=1e-6)
    assert ls.loss() == pytest.approx(direct_loss(model, dict(model.named_parameters()), x, y), rel=1e-6)
    d1, d2 = surf.directions
    base = {n: p.detach() for n, p in model.named_parameters()}
    for i, j in [(0, 0), (6, 4), (1, 3), (5, 1), (2, 0)]:
        a, b = surf.alphas[i], surf.betas[j]
        params = {n: base[n] + a * d1[n] + b * d2[n] for n in base}
        assert surf.losses[i, j] == pytest.approx(direct_loss(model, params, x, y), rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(surf.alphas, np.linspace(-1, 1, 7))
    np.testing.assert_allclose(surf.betas, np.linspace(-0.5, 0.5, 5))


def test_line_matches_direct_and_plane_d1(small):
    model, (x, y) = small
    ls = lw.Landscape(model, CE, (x, y), device="cpu")
    line = ls.line(steps=9, span=2.0, seed=3, progress=False)
    surf = ls.plane(resolution=3, seed=3, progress=False)
    for n in line.direction:  # a line's direction is the plane's d1 for the same seed
        assert torch.equal(line.direction[n], surf.directions[0][n])
    base = {n: p.detach() for n, p in model.named_parameters()}
    for i in (0, 4, 8):
        params = {n: base[n] + line.alphas[i] * line.direction[n] for n in base}
        assert line.losses[i] == pytest.approx(direct_loss(model, params, x, y), rel=1e-5)


def test_tensors_and_dataloader_give_the_same_values(small):
    model, (x, y) = small
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=13)  # uneven batches
    a = lw.Landscape(model, CE, (x, y)).plane(resolution=5, progress=False)
    b = lw.Landscape(model, CE, loader).plane(resolution=5, progress=False)
    c = lw.Landscape(model, CE, [(x[:7], y[:7]), (x[7:], y[7:])]).plane(resolution=5, progress=False)
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-5)
    np.testing.assert_allclose(a.losses, c.losses, rtol=1e-5)
    assert b.meta["data"]["num_samples"] == 40 and b.meta["data"]["num_batches"] == 4


def test_seeds_are_reproducible_and_private(small):
    model, data = small
    ls = lw.Landscape(model, CE, data)
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    s1 = ls.plane(resolution=5, seed=7, progress=False)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG must be untouched"
    s2 = lw.Landscape(SmallNet(), CE, data).plane(resolution=5, seed=7, progress=False)
    s3 = ls.plane(resolution=5, seed=8, progress=False)
    np.testing.assert_array_equal(s1.losses, s2.losses)
    assert not np.allclose(s1.losses, s3.losses)
    assert s1.meta["seed"] == 7 and s1.meta["direction_kind"] == "random"
    assert s1.meta["normalization"] == "filter" and s1.meta["ignore"] == "biasbn"
    d1, d2 = s1.directions
    dot = sum(float((d1[n].double() * d2[n].double()).sum()) for n in d1)
    nrm = [sum(float((d[n].double() ** 2).sum()) for n in d) ** 0.5 for d in (d1, d2)]
    assert s1.meta["cosine"] == pytest.approx(dot / (nrm[0] * nrm[1]), rel=1e-9)


def test_explicit_directions_are_used_as_given(small):
    model, (x, y) = small
    gen = torch.Generator().manual_seed(5)
    d1 = {n: torch.randn(p.shape, generator=gen) * 0.1 for n, p in model.named_parameters()}
    d2 = {n: torch.randn(p.shape, generator=gen) * 0.1 for n, p in model.named_parameters()}
    surf = lw.Landscape(model, CE, (x, y)).plane(directions=(d1, d2), resolution=3, progress=False)
    assert surf.meta["normalization"] == "none" and surf.meta["direction_kind"] == "explicit"
    for n in d1:
        if model.get_parameter(n).dim() <= 1:  # ignore="biasbn" zeroes biases / BN affine
            assert not surf.directions[0][n].any()
        else:
            assert torch.equal(surf.directions[0][n], d1[n])
    base = {n: p.detach() for n, p in model.named_parameters()}
    params = {n: base[n] + surf.directions[0][n] - surf.directions[1][n] for n in base}
    assert surf.losses[2, 0] == pytest.approx(direct_loss(model, params, x, y), rel=1e-5)


def test_nan_and_inf_losses_are_data():
    model = nn.Sequential(nn.Linear(2, 1))
    x = torch.tensor([[1.0, 2.0], [0.5, -1.0]])
    y = torch.zeros(2, 1)

    def log_loss(out, target):  # log of a value that turns negative on part of the plane: NaN there
        return torch.log(out + 10.0).mean() + 0 * target.sum()

    with torch.no_grad():
        model[0].weight.fill_(1.0)
    gen = torch.Generator().manual_seed(0)
    d = {n: torch.randn(p.shape, generator=gen) for n, p in model.named_parameters()}
    surf = lw.Landscape(model, log_loss, (x, y)).plane(directions=(d, d), ignore=None, resolution=9, span=30.0,
                                                       progress=False)
    assert np.isnan(surf.losses).any() and np.isfinite(surf.losses).any()


def test_model_unchanged_after_success_error_and_interrupt(small):
    model, data = small
    model.fc1.weight.requires_grad_(False)  # mixed requires_grad must survive too
    model(data[0]).sum().backward()  # and existing .grad
    snap = snapshot(model)
    ls = lw.Landscape(model, CE, data)
    ls.plane(resolution=3, progress=False)
    ls.interpolate(SmallNet(seed=3), steps=3, buffers="recompute", progress=False)
    assert_same(model, snap)

    calls = {"n": 0}

    def exploding(out, target):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("boom")
        return CE(out, target)

    with pytest.raises(RuntimeError, match="boom"):
        lw.Landscape(model, exploding, data).plane(resolution=3, progress=False)
    assert_same(model, snap)

    calls["n"] = 0

    def interrupted(out, target):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return CE(out, target)

    with pytest.raises(KeyboardInterrupt):
        lw.Landscape(model, interrupted, data).interpolate(SmallNet(seed=3), steps=5, progress=False)
    assert_same(model, snap)
    assert model.training


def test_results_save_load_and_xarray(small, tmp_path):
    model, data = small
    ls = lw.Landscape(model, CE, data)
    surf = ls.plane(resolution=(4, 3), progress=False)
    path = surf.save(tmp_path / "plane")
    back = lw.load(path)
    assert isinstance(back, lw.Surface)
    np.testing.assert_array_equal(back.losses, surf.losses)
    np.testing.assert_array_equal(back.alphas, surf.alphas)
    for k in range(2):
        for n in surf.directions[k]:
            assert torch.equal(back.directions[k][n], surf.directions[k][n])
    assert back.meta["seed"] == surf.meta["seed"] and back.meta["model_sha256"] == surf.meta["model_sha256"]
    xr = pytest.importorskip("xarray")
    da = back.to_xarray()
    assert isinstance(da, xr.DataArray) and da.dims == ("alpha", "beta")
    assert float(da.sel(alpha=surf.alphas[1], beta=surf.betas[2])) == surf.losses[1, 2]
    curve = ls.line(steps=5, progress=False)
    c2 = lw.load(curve.save(tmp_path / "line.npz"))
    np.testing.assert_array_equal(c2.losses, curve.losses)
    assert c2.to_xarray().dims == ("alpha",)


def test_tiles_stream_and_cancel(small):
    model, data = small
    ls = lw.Landscape(model, CE, data)
    tiles = []
    surf = ls.plane(resolution=(6, 40), progress=False, callback=tiles.append)
    assert len(tiles) > 1 and tiles[-1].done == tiles[-1].total == 240
    flat = np.concatenate([t.values for t in tiles])
    np.testing.assert_array_equal(flat, surf.losses.ravel())
    assert all(t.start % 40 == 0 for t in tiles)  # whole rows

    import threading
    ev = threading.Event()
    seen = []

    def cb(tile):
        seen.append(tile)
        ev.set()

    with pytest.raises(lw.Cancelled):
        ls.plane(resolution=(6, 40), progress=False, callback=cb, cancel=ev)
    assert len(seen) == 1  # cancelled within one tile


def test_exact_accelerations_do_not_change_values(small):
    """The input-affine shortcut and the channels-last layout are exact up to float rounding."""
    from landscape_widgets.loop import LoopExecutor

    model, data = small
    conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(),
                         nn.Linear(4 * 36, 4))
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 9), nn.ReLU(), nn.Linear(9, 4))
    for m in (model, conv, mlp):
        for ignore in ("biasbn", None):
            ls = lw.Landscape(m, CE, data)
            fast = ls.plane(resolution=4, ignore=ignore, progress=False)
            slow = ls.plane(resolution=4, ignore=ignore, progress=False, evaluator=LoopExecutor(accelerate=False))
            np.testing.assert_allclose(fast.losses, slow.losses, rtol=2e-6, atol=1e-7)


def test_point_writes_go_through_one_flat_buffer_and_leave_no_trace(small):
    """A point is written into views of one flat buffer; afterwards the private copy has its own contiguous,
    non-inference tensors again (a leftover channels-last weight once changed a later run's rounding), and the
    order of computations does not change any value."""
    from landscape_widgets.accelerations import FlatWrites

    model, data = small
    ls = lw.Landscape(model, CE, data)
    start = SmallNet(seed=4)
    alone = ls.interpolate(start, steps=6, buffers="recompute", progress=False).losses
    seen = []
    real = FlatWrites.write

    def spy(plan, c):
        seen.append([(t.data_ptr() - plan.groups[0][0].data_ptr()) // 4 for t, _own in plan.swapped])
        return real(plan, c)

    FlatWrites.write = spy
    try:
        ls.plane(resolution=3, ignore=None, progress=False)  # channels-last (a conv net), shortcuts
    finally:
        FlatWrites.write = real
    assert seen and all(off == sorted(off) and len(set(off)) == len(off) for off in seen)  # distinct slices
    assert all(o % 16 == 0 for o in seen[0])  # each view 64-byte aligned
    private = ls.problem.private()
    for t in list(private.params.values()) + list(private.buffers.values()):
        assert t.is_contiguous() and not t.is_inference()
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()  # its own storage, not a view
    again = ls.interpolate(start, steps=6, buffers="recompute", progress=False).losses
    np.testing.assert_array_equal(again, alone)


def test_input_affine_shortcut_is_found_and_used():
    from landscape_widgets.accelerations import input_layers
    from landscape_widgets.objective import Objective

    forward = Objective(loss_fn=nn.CrossEntropyLoss())
    mlp = nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    assert input_layers(mlp, forward, x) == [(mlp[0], x)]
    flat_first = nn.Sequential(nn.Flatten(), nn.Linear(5, 2))  # input reshaped first: not the data itself
    assert input_layers(flat_first, forward, x.reshape(4, 1, 5)) == []


def test_allocator_is_warmed_once_per_process_on_cpus_only(monkeypatch):
    """One 30 MiB block, allocated and freed untouched, before the first CPU run (see runtime.warm_allocator)."""
    import platform

    import landscape_widgets.runtime as E

    calls = []
    real = torch.empty
    monkeypatch.setattr(E, "_warmed", False)
    monkeypatch.setattr(E.torch, "empty", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    E.warm_allocator("cuda")
    assert calls == [] and not E._warmed
    E.warm_allocator(torch.device("cpu"))
    E.warm_allocator("cpu")
    glibc = platform.libc_ver()[0] == "glibc"
    assert E._warmed and calls == ([((E.WARM_BYTES,), {"dtype": torch.uint8})] if glibc else [])


class _BatchCoupled(nn.Module):
    """Centres each batch by its own mean: the loss of a batch is not the weighted mean of its chunks' losses."""

    def __init__(self):
        super().__init__()
        self.net = SmallNet()

    def forward(self, x):
        return self.net(x - x.mean(0, keepdim=True))


def _whole_batch_only(out, y):
    assert len(y) == 40, "this loss takes the whole batch only"
    return CE(out, y)


@pytest.mark.parametrize("coupled", [False, True, "loss"])
def test_micro_batches_only_where_they_equal_the_full_batch(monkeypatch, coupled):
    """Thresholds lowered so that the small test batch (40 samples) is cut into chunks of 8: the plane must equal
    a direct full-batch evaluation; a model that couples the samples of a batch must not be micro-batched."""
    import landscape_widgets.loop as E
    from landscape_widgets.accelerations import Tuning

    chunks_of_8 = E.LoopExecutor(tuning=Tuning(micro_min_bytes=0, micro_bytes=1, micro_min_samples=8))
    used = []
    real = E.PointEvaluator._plan_micro_batches

    def spy(self):
        chunks = real(self)
        used.append(None if chunks is None else [n for _x, _y, n in chunks])
        return chunks

    monkeypatch.setattr(E.PointEvaluator, "_plan_micro_batches", spy)
    model = _BatchCoupled() if coupled is True else SmallNet()
    x, y = small_data()
    ls = lw.Landscape(model, _whole_batch_only if coupled == "loss" else CE, (x, y))
    surf = ls.plane(resolution=3, ignore=None, progress=False, evaluator=chunks_of_8)
    assert used == [None] if coupled else used == [[8] * 5]
    base = {n: p.detach() for n, p in model.named_parameters()}
    for i, j in [(0, 0), (1, 2), (2, 1)]:
        params = {n: base[n] + surf.alphas[i] * surf.directions[0][n] + surf.betas[j] * surf.directions[1][n]
                  for n in base}
        assert surf.losses[i, j] == pytest.approx(direct_loss(model, params, x, y), rel=1e-6)


@pytest.mark.slow
def test_digits_cnn_is_micro_batched_and_exact():
    """The real case: the digits CNN's 15 MB activation on all 1797 digits is evaluated in cache-sized chunks."""
    import landscape_widgets.loop as E
    from landscape_widgets import examples

    x, y = examples.digits(flat=False)
    model = examples.digits_cnn()
    ls = lw.Landscape(model, CE, (x, y))
    private = ls.problem.private()
    d = [{n: torch.randn(t.shape, generator=torch.Generator().manual_seed(k)) * 0.01 for n, t in private.base.items()}
         for k in (1, 2)]
    ev = loop_evaluator(ls, private, d)
    coords = np.array([[0.0, 0.0], [1.0, -0.5], [-2.0, 1.5]])
    seen = []
    real = E.PointEvaluator.evaluate

    def spy(self, c):
        seen.append(None if self._micro is None else len(self._micro))
        return real(self, c)

    E.PointEvaluator.evaluate = spy
    try:
        got = run_points(ev, coords)
    finally:
        E.PointEvaluator.evaluate = real
    assert seen and all(k is not None and k >= 2 for k in seen)
    for (a, b), value in zip(coords, got):
        params = {n: private.base[n] + a * d[0][n] + b * d[1][n] for n in private.base}
        assert value == pytest.approx(direct_loss(model, params, x, y), rel=1e-5)


@pytest.mark.parametrize("micro", [True, False])
def test_probes_run_once_per_evaluator(monkeypatch, micro):
    """A Dask worker runs one evaluator once per tile (run_points): the micro-batch plan and the input-layer trace
    are made on the first run only, and later runs give the values of a fresh evaluator."""
    import landscape_widgets.accelerations as A
    import landscape_widgets.loop as E

    micro_settings = {"micro_min_bytes": 0, "micro_bytes": 1, "micro_min_samples": 8} if micro else {}
    tuning = A.Tuning(shortcut_min_fan_in=0, **micro_settings)  # SmallNet's input layers take the shortcut
    calls = {"plan": 0, "trace": 0}
    real_plan, real_trace = E.PointEvaluator._plan_micro_batches, A.input_layers
    monkeypatch.setattr(E.PointEvaluator, "_plan_micro_batches",
                        lambda self: calls.__setitem__("plan", calls["plan"] + 1) or real_plan(self))
    monkeypatch.setattr(A, "input_layers", lambda *a: calls.__setitem__("trace", calls["trace"] + 1) or real_trace(*a))
    model = SmallNet()
    ls = lw.Landscape(model, CE, small_data())
    private = ls.problem.private()
    d = [{n: torch.randn(t.shape, generator=torch.Generator().manual_seed(k)) for n, t in private.base.items()}
         for k in (1, 2)]
    ev = loop_evaluator(ls, private, d, tuning=tuning)
    coords = np.array([[0.0, 0.0], [1.0, -0.5], [-2.0, 1.5], [0.5, 0.5]])
    first, second = run_points(ev, coords[:2]), run_points(ev, coords[2:])
    assert calls == {"plan": 1, "trace": 0 if micro else 1}  # shortcuts are not used with micro-batches
    fresh = run_points(loop_evaluator(ls, ls.problem.private(), d, tuning=tuning), coords)
    np.testing.assert_array_equal(np.concatenate([first, second]), fresh)


def test_model_fingerprint_is_sha256_of_names_shapes_dtypes_and_bytes():
    """meta["model_sha256"] (run provenance; a store made at other weights is refused by it) against hashlib over
    the model's own tensors, parameters then buffers, each sorted by name; one ulp in one weight changes it."""
    import hashlib

    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    model[1].running_mean.add_(0.25)

    def reference(m):
        h = hashlib.sha256()
        for group in (dict(m.named_parameters()), dict(m.named_buffers())):
            for n in sorted(group):
                t = group[n].detach()
                h.update(n.encode() + str(tuple(t.shape)).encode() + str(t.dtype).encode())
                h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()

    ls = lw.Landscape(model, CE, (torch.randn(8, 4), torch.randint(0, 2, (8,))))
    before = ls.plane(resolution=2, progress=False).meta["model_sha256"]
    assert before == ls.problem.private().fingerprint() == reference(model)
    with torch.no_grad():
        model[2].weight[1, 2] = torch.nextafter(model[2].weight[1, 2], torch.tensor(1.0))
    after = ls.plane(resolution=2, progress=False).meta["model_sha256"]
    assert after == reference(model) != before


def test_a_plane_on_a_fixed_subset_of_the_samples(small):
    """plane(samples=n): the loss on the same n samples at every point and call (a private generator: the global
    RNG untouched), equal to the plane of a Landscape built on exactly those samples."""
    model, (x, y) = small
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y))
    rng = torch.get_rng_state()
    sub = ls.plane(resolution=5, samples=16, progress=False)
    assert torch.equal(rng, torch.get_rng_state())
    assert sub.meta["data"]["num_samples"] == 16 and sub.meta["data"]["subset_of"] == len(x)
    np.testing.assert_array_equal(ls.plane(resolution=5, samples=16, progress=False).losses, sub.losses)
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:16].sort().values
    ref = lw.Landscape(model, nn.CrossEntropyLoss(), (x[idx], y[idx])).plane(resolution=5, progress=False)
    np.testing.assert_array_equal(sub.losses, ref.losses)
    full = ls.plane(resolution=5, progress=False)
    assert "subset_of" not in full.meta["data"] and not np.array_equal(full.losses, sub.losses)
    assert ls.plane(resolution=5, samples=10_000, progress=False).meta["data"]["num_samples"] == len(x)  # all
    batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, len(x), 8)]
    first = lw.Landscape(model, nn.CrossEntropyLoss(), batches).plane(resolution=3, samples=12, progress=False)
    two = lw.Landscape(model, nn.CrossEntropyLoss(), batches[:2]).plane(resolution=3, progress=False)
    np.testing.assert_array_equal(first.losses, two.losses)  # an iterable: its first batches, 16 >= 12 samples
    with pytest.raises(ValueError, match="samples"):
        ls.plane(resolution=3, samples=0, progress=False)


def test_the_surface_widget_previews_on_a_subset_and_says_so(small):
    model, (x, y) = small
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y))
    w = lw.SurfaceWidget(ls, resolution=13, preview_samples=16, trust=False)
    try:
        assert w.preview.meta["data"]["num_samples"] == 16 and w.surface.meta["data"]["num_samples"] == len(x)
        assert "subset_of" not in w.surface.meta["data"]
    finally:
        w.close()
    from landscape_widgets.widgets.surface import _on_subset
    assert _on_subset(w.preview) == f" on 16 of {len(x)} samples" and _on_subset(w.surface) == ""


def test_auto_preview_size_follows_the_time_of_one_pass(small):
    """preview_samples="auto": as many samples as make 81 points take about ``preview_seconds`` (one timed pass);
    all of them when that is more than there are."""
    model, (x, y) = small
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y))
    w = lw.SurfaceWidget(ls, resolution=5, trust=False, preview_seconds=float("inf"))  # time for more than all
    assert w._preview_size() is None
    w.close()
    w = lw.SurfaceWidget(ls, resolution=13, trust=False, preview_seconds=1e-9)  # as on a very slow model
    try:
        assert w._preview_size() == 1 and w.preview.meta["data"]["num_samples"] == 1
        assert w.surface.meta["data"]["num_samples"] == len(x)
    finally:
        w.close()
