"""Live widgets: trait change -> recompute -> new result, preview / partial / done, cancellation by a newer change,
validation of browser values, errors shown in the widget, and a real kernel staying responsive while it computes.

Numbers are checked against ``Landscape.plane`` / ``line`` / ``interpolate`` and a direct evaluation of a deep copy.
"""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch
from torch import nn

import landscape_widgets as lw
from helpers import assert_same, direct_loss, f32, snapshot
from landscape_widgets import export
from landscape_widgets.widgets import _base, curve as curve_mod, surface as surface_mod

CE = nn.CrossEntropyLoss()


@pytest.fixture
def ls(small):
    model, data = small
    return lw.Landscape(model, CE, data, device="cpu")


def run_async(coro_fn, timeout=120):
    """Run ``coro_fn()`` on a fresh event loop: widgets made inside it compute in their worker thread."""
    return asyncio.run(asyncio.wait_for(coro_fn(), timeout))


async def finished(w):
    while w._finished < w._generation:
        await asyncio.sleep(0.005)
    w._drain()


# -- results and their binary encoding ------------------------------------------------------------------------
def test_surface_equals_plane_and_direct_loss(small, ls):
    model, (x, y) = small
    w = lw.SurfaceWidget(ls, resolution=5, span=0.5, seed=2, title="t")
    ref = ls.plane(resolution=5, span=0.5, seed=2, progress=False)
    assert w._state == "done" and w.error == ""
    np.testing.assert_array_equal(w.surface.losses, ref.losses)
    assert w._shape == [5, 5]
    np.testing.assert_array_equal(f32(w._losses, (5, 5)), ref.losses.astype(np.float32))
    np.testing.assert_array_equal(f32(w._alphas), np.linspace(-0.5, 0.5, 5).astype(np.float32))
    np.testing.assert_array_equal(f32(w._betas), np.linspace(-0.5, 0.5, 5).astype(np.float32))
    d1, d2 = w.surface.directions
    base = {n: p.detach() for n, p in model.named_parameters()}
    for i, j in [(0, 4), (2, 2), (4, 1)]:
        a, b = w.surface.alphas[i], w.surface.betas[j]
        params = {n: base[n] + a * d1[n] + b * d2[n] for n in base}
        assert w.surface.losses[i, j] == pytest.approx(direct_loss(model, params, x, y), rel=1e-5, abs=1e-6)


def test_trait_changes_from_python_recompute(ls):
    w = lw.SurfaceWidget(ls, resolution=5)
    first = w.surface
    w.resolution = 7
    assert w.surface.losses.shape == (7, 7) and w._shape == [7, 7]
    w.seed = 3
    assert w.surface.meta["seed"] == 3
    assert not np.allclose(w.surface.losses, ls.plane(resolution=7, seed=0, progress=False).losses)
    w.normalization = "layer"
    assert w.surface.meta["normalization"] == "layer"
    w.span = 0.25
    np.testing.assert_allclose(w.surface.alphas, np.linspace(-0.25, 0.25, 7))
    np.testing.assert_array_equal(w.surface.losses,
                                  ls.plane(resolution=7, seed=3, normalization="layer", span=0.25,
                                           progress=False).losses)
    assert w.surface is not first and w._state == "done"
    # display-only traits do not recompute
    gen = w._generation
    w.log_scale = False
    w.view = "surface"
    assert w._generation == gen


def test_preview_then_partial_rows_then_done(ls):
    seen = []

    async def main():
        # all the data (compared with a plane on it below); every tile sent
        w = lw.SurfaceWidget(ls, resolution=17, preview_samples=None, send_interval=0)
        w.observe(lambda c: seen.append((w._state, list(w._shape), w._done, f32(w._losses).copy())), "_losses")
        await finished(w)
        return w

    w = run_async(main)
    states = [s for s, *_ in seen]
    assert states[0] == "preview" and seen[0][1] == [9, 9]
    preview = ls.plane(resolution=9, progress=False).losses
    np.testing.assert_array_equal(w.preview.losses, preview)
    np.testing.assert_array_equal(seen[0][3].reshape(9, 9), preview.astype(np.float32))
    assert states[-1] == "done" and seen[-1][1] == [17, 17]
    partial = [s for s in seen if s[0] == "partial"]
    assert partial, "the full grid must stream tile by tile"
    for _, shape, done, z in partial:
        rows_done = done // 17
        z = z.reshape(17, 17)
        assert shape == [17, 17] and 0 < done < 17 * 17
        np.testing.assert_array_equal(z[:rows_done], w.surface.losses[:rows_done].astype(np.float32))
        # rows still pending show the preview: on the 9x9 nodes (every 2nd point of 17) exactly its values
        pending = np.arange(rows_done, 17)
        nodes = pending[pending % 2 == 0]
        np.testing.assert_allclose(z[nodes][:, ::2], preview[nodes // 2].astype(np.float32), rtol=1e-6)
    assert w._status.startswith("17×17")


def test_newer_change_cancels_running_computation(ls):
    events = []

    async def main():
        w = lw.SurfaceWidget(ls, resolution=5)
        await finished(w)
        handle = w._handle
        w._handle = lambda msg: (events.append((msg.generation, msg.event.kind)), handle(msg))[1]
        fired = []

        def newer_change(change):
            if w._done > 0 and not fired and w.resolution == 41:
                fired.append(w._generation)
                w.seed = 5  # a newer change arrives while the 41x41 grid is half done
        w.observe(newer_change, "_done")
        w.resolution = 41
        await finished(w)
        return w, fired[0]

    w, old = run_async(main)
    assert (old, "done") not in events  # the old job stopped: never completed, never shown
    old_tiles = [e for e in events if e == (old, "tile")]
    assert 0 < len(old_tiles) < 21  # 41x41 in tiles of 2 rows: 21 tiles; it stopped long before
    assert w.surface.meta["seed"] == 5 and w.surface.losses.shape == (41, 41)
    np.testing.assert_array_equal(f32(w._losses, (41, 41)), w.surface.losses.astype(np.float32))
    np.testing.assert_array_equal(w.surface.losses, ls.plane(resolution=41, seed=5, progress=False).losses)
    assert "seed 5" in w._status and w._state == "done"


def test_recompute_marks_the_shown_result_stale_and_the_final_message_is_complete(ls):
    sent, states = [], []

    async def main():
        w = lw.SurfaceWidget(ls, resolution=5)
        await finished(w)
        orig = w.send_state
        w.send_state = lambda key=None: (sent.append(set(key) if key is not None else None), orig(key))[1]
        w.observe(lambda c: states.append(c["new"]), "_state")
        w.seed = 1
        assert w._state == "stale" and w._status == "computing 5×5…"  # before any new value arrived
        await finished(w)
        return w

    w = run_async(main)
    assert states[0] == "stale" and states[-1] == "done"
    # the last message re-sends everything that is drawn, changed or not (nbclient misses messages between cells)
    assert set(w._display_traits) <= sent[-1]
    assert {"_alphas", "_betas", "_shape", "_losses", "_total"} <= sent[-1]


# -- values from the browser ----------------------------------------------------------------------------------
def test_bad_browser_values_are_rejected_or_clamped_and_shown(ls):
    w = lw.SurfaceWidget(ls, resolution=5)
    sent = []
    w.send_state = lambda key=None: sent.append(key)
    w.set_state({"resolution": 0})
    assert w.resolution == 5 and "clamped to 5" in w.error and w._state == "done"
    gen = w._generation
    for bad in ("abc", None, 7.5, True, float("nan"), [7]):
        w.set_state({"resolution": bad})
        assert w.resolution == 5 and "resolution" in w.error, bad
        assert sent[-1] == ["resolution"]  # the browser's control is put back
    for key, bad in [("span", float("nan")), ("span", None), ("span", -1.0), ("span", "1"),
                     ("span", float("inf")), ("normalization", "evil"), ("seed", 1.5), ("view", "3d"),
                     ("log_scale", "yes"), ("_losses", b"\0\0\0\0"), ("_state", "done"), ("title", 3)]:
        w.set_state({key: bad})
        assert key in w.error, (key, bad)
        assert sent[-1] == [key]
    assert w._generation == gen  # nothing was recomputed for rejected values
    assert (w.span, w.normalization, w.seed, w.view) == (1.0, "filter", 0, "contour")
    w.set_state({"seed": -3})
    assert w.seed == 0 and "clamped" in w.error
    w.set_state({"seed": 4, "span": 0.5})  # a valid change completes and clears the message
    assert w.error == "" and w._state == "done"
    assert w.surface.meta["seed"] == 4 and w.surface.alphas[-1] == 0.5


def test_huge_resolution_from_browser_is_clamped_then_cancelled_by_next_change(ls):
    async def main():
        w = lw.SurfaceWidget(ls, resolution=5)
        await finished(w)
        w.set_state({"resolution": 10 ** 7})
        assert w.resolution == surface_mod.RESOLUTION[1] and "clamped to 201" in w.error
        await asyncio.sleep(0.05)
        w.set_state({"resolution": 9})
        await finished(w)
        return w

    w = run_async(main)
    assert w.surface.losses.shape == (9, 9) and w.error == "" and w._state == "done"


def test_python_side_values_raise_clear_errors(ls):
    w = lw.SurfaceWidget(ls, resolution=5)
    with pytest.raises(ValueError, match="resolution"):
        w.resolution = 1000
    with pytest.raises(ValueError, match="span"):
        w.span = float("nan")
    with pytest.raises(ValueError, match="normalization"):
        w.normalization = "bogus"
    with pytest.raises(ValueError, match="view"):
        w.view = "3d"
    assert w.resolution == 5 and w.span == 1.0
    with pytest.raises(TypeError, match="Landscape"):
        lw.SurfaceWidget("not a landscape")
    with pytest.raises(ValueError, match="span"):
        lw.SurfaceWidget(ls, span=-1)
    with pytest.raises(ValueError, match="view"):
        lw.SurfaceWidget(ls, view="pie")


def test_error_is_shown_and_the_next_change_recovers(small):
    model, data = small
    boom = threading.Event()

    def loss_fn(out, y):
        if boom.is_set():
            raise RuntimeError("loss exploded on purpose")
        return CE(out, y)

    ls = lw.Landscape(model, loss_fn, data, device="cpu")

    async def main():
        w = lw.SurfaceWidget(ls, resolution=5)
        await finished(w)
        boom.set()
        w.seed = 1
        await finished(w)
        assert w._state == "error" and "loss exploded on purpose" in w.error
        boom.clear()
        w.seed = 2
        await finished(w)
        return w

    w = run_async(main)
    assert w._state == "done" and w.error == "" and w.surface.meta["seed"] == 2


def test_nan_and_inf_losses_are_data_not_errors(small):
    model, data = small

    def loss_fn(out, y):  # inf far out, NaN in a band: what a diverging model gives
        loss = CE(out, y)
        if loss > 3.0:
            return loss * float("inf")
        return loss * float("nan") if 2.0 < loss < 2.2 else loss

    ls = lw.Landscape(model, loss_fn, data, device="cpu")
    w = lw.SurfaceWidget(ls, resolution=15, span=3.0)
    ref = ls.plane(resolution=15, span=3.0, progress=False).losses
    assert w._state == "done" and w.error == ""
    n_nan, n_inf = int(np.isnan(ref).sum()), int(np.isinf(ref).sum())
    assert n_nan > 0 and n_inf > 0
    sent = f32(w._losses, (15, 15))
    np.testing.assert_array_equal(np.isnan(sent), np.isnan(ref))
    np.testing.assert_array_equal(np.isposinf(sent), np.isposinf(ref))
    np.testing.assert_array_equal(sent[np.isfinite(ref)], ref[np.isfinite(ref)].astype(np.float32))
    assert f"{n_nan} NaN, {n_inf} inf points drawn as gaps" in w._status


def test_model_and_global_rng_untouched(small, ls):
    model, _ = small
    snap = snapshot(model)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    w = lw.SurfaceWidget(ls, resolution=5)
    w.seed, w.normalization = 7, "model"
    c = lw.CurveWidget(ls, None, steps=5)
    c.seed = 9
    assert_same(model, snap)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
               for a, b in zip(np.random.get_state(), np_state))


def test_worker_is_a_daemon_thread_that_close_stops(ls):
    before = set(threading.enumerate())

    async def main():
        w = lw.SurfaceWidget(ls, resolution=5)
        await finished(w)
        return w

    w = run_async(main)
    (worker,) = set(threading.enumerate()) - before
    assert worker.daemon and worker.name == "lw-widget"  # never holds up a kernel shutdown
    w.close()
    worker.join(10)
    assert not worker.is_alive()


def test_widget_uses_its_own_private_copy(ls):
    ls.plane(resolution=3, progress=False)
    w = lw.SurfaceWidget(ls, resolution=5)
    assert w._ls.problem is not ls.problem and w._ls.model is ls.model


# -- curves ---------------------------------------------------------------------------------------------------
def test_curve_widget_interpolation_line_and_overlay(small, ls):
    model, (x, y) = small
    start = {n: torch.zeros_like(p) for n, p in model.state_dict().items()}
    start.update({n: b.clone() for n, b in model.named_buffers()})
    w = lw.CurveWidget(ls, start, steps=7, span=(0.0, 1.0), title="init → trained")
    ref = ls.interpolate(start, steps=7, span=(0.0, 1.0), progress=False)
    np.testing.assert_array_equal(w.curve.losses, ref.losses)
    assert w.curve.losses[-1] == pytest.approx(ls.loss(), rel=1e-6)  # a = 1 is the model itself
    (entry,) = w._curves
    assert entry["label"] == "interpolation" and entry["kind"] == "interpolation"
    np.testing.assert_array_equal(f32(entry["losses"]), ref.losses.astype(np.float32))
    assert w._random is False
    w.add(None, label="random line")
    assert [e["label"] for e in w._curves] == ["interpolation", "random line"] and w._random
    line = ls.line(steps=7, span=(0.0, 1.0), seed=0, progress=False)
    np.testing.assert_array_equal(w.curves[1].losses, line.losses)
    base = {n: p.detach() for n, p in model.named_parameters()}
    params = {n: base[n] + 0.5 * line.direction[n] for n in base}
    assert w.curves[1].losses[3] == pytest.approx(direct_loss(model, params, x, y), rel=1e-5)
    w.seed = 4
    np.testing.assert_array_equal(w.curves[1].losses,
                                  ls.line(steps=7, span=(0.0, 1.0), seed=4, progress=False).losses)
    np.testing.assert_array_equal(w.curves[0].losses, ref.losses)  # the interpolation has no seed
    w.steps = 9
    assert [len(c.losses) for c in w.curves] == [9, 9] and w._state == "done"


def test_curve_widget_other_landscape_and_preview(small, ls):
    model, (x, y) = small
    test_ls = lw.Landscape(model, CE, (x[:20], y[:20]), device="cpu")
    seen = []

    async def main():
        w = lw.CurveWidget(ls, None, steps=31, send_interval=0)
        w.add(None, landscape=test_ls, label="test split")
        w.observe(lambda c: seen.append((w._state, [len(e["losses"]) // 4 for e in w._curves])), "_curves")
        await finished(w)
        return w

    w = run_async(main)
    assert seen[0] == ("preview", [11, 11]) and seen[-1] == ("done", [31, 31])
    assert any(s == "partial" for s, _ in seen)
    np.testing.assert_array_equal(w.curves[1].losses, test_ls.line(steps=31, span=(-0.5, 1.5),
                                                                   progress=False).losses)


def test_curve_widget_validation(ls):
    w = lw.CurveWidget(ls, None, steps=5)
    with pytest.raises(ValueError, match="span"):
        w.span = [1.0, 0.0]
    with pytest.raises(ValueError, match="steps"):
        w.steps = 1
    with pytest.raises(TypeError, match="label"):
        w.add(None, label=3)
    sent = []
    w.send_state = lambda key=None: sent.append(key)
    gen = w._generation
    for bad in ([1.0, 0.0], [float("nan"), 1.0], [0.0], "0,1", None, [0, 1e9]):
        w.set_state({"span": bad})
        assert "span" in w.error and sent[-1] == ["span"], bad
    assert w._generation == gen and w.span == [-0.5, 1.5]
    w.set_state({"steps": 10 ** 6})
    assert w.steps == curve_mod.STEPS[1] and "clamped" in w.error
    w.set_state({"steps": 6})
    assert w.error == "" and len(w.curve.losses) == 6


# -- export state ---------------------------------------------------------------------------------------------
def test_export_state_is_json_ready_and_offline(ls):
    w = lw.SurfaceWidget(ls, resolution=5, title="x")
    s = w.export_state()
    assert s["_offline"] is True and s["_view"] == "surface" and "_esm" not in s and "layout" not in s
    assert isinstance(s["_losses"], bytes) and s["_shape"] == [5, 5]


def test_bundle_is_built_and_is_an_esm_module():
    src = export.bundle_source()
    assert "export{" in src.replace(" ", "") and len(src) < 2.5e6


# -- a real kernel --------------------------------------------------------------------------------------------
KERNEL_SETUP = """
import asyncio, torch, landscape_widgets as lw
from torch import nn
g = torch.Generator().manual_seed(0)
x = torch.randn(500, 32, generator=g); y = torch.randint(0, 5, (500,), generator=g)
model = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 5))
ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y), device="cpu")
w = lw.SurfaceWidget(ls, resolution=5)
events = []
_handle = w._handle
def _record(msg):
    events.append((msg.generation, msg.event.kind))
    _handle(msg)
w._handle = _record
"""


@pytest.mark.slow
def test_real_kernel_stays_responsive_and_newer_change_wins(tmp_path, monkeypatch):
    """Browser messages (comm 'update') to a real ipykernel: the kernel answers execute requests while the
    widget computes, a newer change cancels the older one, and bad values are reported in the widget."""
    jupyter_client = pytest.importorskip("jupyter_client")
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    km, kc = jupyter_client.manager.start_new_kernel(kernel_name="python3")
    try:
        def run(code, timeout=120):
            reply = kc.execute_interactive(code, timeout=timeout, store_history=False,
                                           output_hook=lambda msg: None)
            assert reply["content"]["status"] == "ok", reply["content"]
            return reply

        def value(expr):
            reply = kc.execute_interactive("", user_expressions={"v": expr}, timeout=60,
                                           output_hook=lambda msg: None)
            v = reply["content"]["user_expressions"]["v"]
            assert v["status"] == "ok", v
            return eval(v["data"]["text/plain"])  # noqa: S307 - our own repr of ints/strings/tuples

        def browser_update(state):
            msg = kc.session.msg("comm_msg", content={"comm_id": comm_id, "data": {
                "method": "update", "state": state, "buffer_paths": []}})
            kc.shell_channel.send(msg)

        run(KERNEL_SETUP)
        run("w.wait(60)")
        comm_id = value("w.comm.comm_id")
        assert value("(w._state, w._shape)") == ("done", [5, 5])

        # a browser change starts a long computation; the kernel still answers right away
        browser_update({"resolution": 41})
        run("import time; t_busy = time.perf_counter()")
        state = value("(w.resolution, w._state, w._finished < w._generation)")
        assert state[0] == 41 and state[2] is True, state  # executed while the grid was still computing
        gen_old = value("w._generation")
        browser_update({"seed": 5})  # newer change: cancels the 41x41 job
        run("w.wait(120)")
        assert value("(w._state, w._shape, w.surface.meta['seed'], w.error)") == ("done", [41, 41], 5, "")
        ev = value("events")
        assert (gen_old, "done") not in ev
        assert sum(1 for e in ev if e == (gen_old, "tile")) < 21

        # bad values from the browser: rejected or clamped, shown, and the next valid change completes
        browser_update({"resolution": "abc"})
        assert "resolution" in value("w.error") and value("w.resolution") == 41
        browser_update({"resolution": 0})
        run("w.wait(60)")
        assert "clamped to 5" in value("w.error") and value("w._shape") == [5, 5]
        browser_update({"span": None})
        assert "span" in value("w.error")
        browser_update({"resolution": 7})
        run("w.wait(60)")
        assert value("(w._state, w._shape, w.error)") == ("done", [7, 7], "")
        # a change from Python inside a cell recomputes in the background too
        run("w.resolution = 9")
        run("w.wait(60)")
        assert value("w._shape") == [9, 9]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_auto_preview_takes_the_subset_its_time_allows(small):
    """preview_samples="auto" on the real path: two timed passes over the data size the preview's subset so that
    its 81 points take about ``preview_seconds``."""
    from landscape_widgets.widgets.status import status_log

    model, (x, y) = small
    ls = lw.Landscape(model, CE, (x, y), device="cpu")
    lines = []
    with status_log(lambda w, status: lines.append(status)):
        w = lw.SurfaceWidget(ls, resolution=13, trust=False, preview_seconds=1e-9)  # as on a very slow model
    assert w.preview.meta["data"]["num_samples"] == 1 and w.surface.meta["data"]["num_samples"] == len(x)
    assert any(f"coarse 9×9 preview on 1 of {len(x)} samples" in s for s in lines)
    roomy = lw.SurfaceWidget(ls, resolution=13, trust=False, preview_seconds=1e9)
    assert "subset_of" not in roomy.preview.meta["data"]
    with pytest.raises(ValueError, match="preview_seconds"):
        lw.SurfaceWidget(ls, preview_seconds=0)
    w.close()
    roomy.close()


@pytest.mark.parametrize("bad", [-0.1, float("inf"), float("nan"), "0.1", True])
def test_send_interval_is_checked_where_it_is_given(ls, bad):
    for make in (lambda: lw.SurfaceWidget(ls, send_interval=bad), lambda: lw.CurveWidget(ls, send_interval=bad),
                 lambda: lw.SpectrumWidget(ls, send_interval=bad)):
        with pytest.raises(ValueError, match="send_interval must be a non-negative, finite number"):
            make()


def test_status_says_where_and_how_a_plane_ran(small):
    """A plane on the CPU's per-point loop (the default) says nothing more; a batched one names its device and
    rule (what "auto" chose on a GPU), as the surface's meta records it."""
    from landscape_widgets.driver import Execution
    from landscape_widgets.widgets._base import engine_note

    model, data = small
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    w = lw.SurfaceWidget(ls, resolution=5)
    assert w._status.startswith("5×5 in ") and " on cpu" not in w._status
    v = lw.SurfaceWidget(ls, resolution=5, compute={"evaluator": "vmap"})
    assert v.surface.meta["vmap_rule"] == "vmap" and " s on cpu, batched (vmap) · " in v._status
    done = v.surface.execution
    assert (done.executor, done.evaluator, done.rule, done.chunks) == ("vmap", "vmap", "vmap", [16, 9])
    on = lambda device, done: engine_note(lw.Surface([0], [0], [[0]], meta={"device": device}, execution=done))
    assert on("cuda:0", Execution("vmap", "auto: vmap", rule="triton")) == " on cuda:0, batched (triton)"
    assert on("cuda:0", Execution("loop", "auto: loop")) == " on cuda:0, per-point loop"
    assert on("cpu", Execution("dask", "auto", facts={"workers": 1}, where="1 Dask worker")) == " on 1 Dask worker"
    assert on("cpu", None) == ""  # a loaded result
    w.close()
    v.close()


def test_the_bundle_travels_once_unless_the_front_end_cannot_share_it(monkeypatch, ls):
    from landscape_widgets.widgets import bundle as base

    w1, w2 = lw.SurfaceWidget(ls, resolution=5, trust=False), lw.CurveWidget(ls, steps=5)
    try:
        assert len(w1._esm) < 2_000 and w1._bundle is w2._bundle and len(w1._bundle.source) > 1_000_000
        assert "_bundle" not in w1.export_state() and "_esm" not in w1.export_state()
        monkeypatch.setenv("LANDSCAPE_WIDGETS_SHARED_BUNDLE", "0")
        alone = lw.SurfaceWidget(ls, resolution=5, trust=False)
        assert alone._bundle is None and alone._esm == w1._bundle.source
        alone.close()
        monkeypatch.delenv("LANDSCAPE_WIDGETS_SHARED_BUNDLE")
        monkeypatch.setitem(__import__("sys").modules, "google.colab", object())
        assert not base.references_work()
    finally:
        w1.close()
        w2.close()
