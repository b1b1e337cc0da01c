"""What the surface widget can show besides the loss: the Landscape's metrics (computed in the same passes) and
Li et al.'s curvature map, each checked against an independent computation at the points shown."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import landscape_widgets as lw
from helpers import assert_same, f32, snapshot
from landscape_widgets.widgets import surface as surface_mod

CE = nn.CrossEntropyLoss()


def accuracy(out, y):
    return (out.argmax(-1) == y).float().mean()


@pytest.fixture
def ls(small):
    model, data = small
    return lw.Landscape(model, CE, data, device="cpu", metrics={"accuracy": accuracy})


def point_accuracy(model, surf, i, j, x, y):
    """Accuracy at theta + a d1 + b d2 by a plain forward of the model with those weights (eval mode)."""
    params = {n: p.detach() + surf.alphas[i] * surf.directions[0][n] + surf.betas[j] * surf.directions[1][n]
              for n, p in model.named_parameters()}
    buffers = {n: b for n, b in model.named_buffers()}
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = torch.func.functional_call(model, {**params, **buffers}, (x,))
    finally:
        model.train(was)
    return float((out.argmax(-1) == y).double().mean())


def test_the_widget_ships_each_metric_beside_the_loss(small, ls):
    model, (x, y) = small
    snap = snapshot(model)
    w = lw.SurfaceWidget(ls, resolution=5, trust=False, preview_samples=None)
    surf = w.surface
    assert w._controls["quantities"] == ["loss", "accuracy", "curvature"]
    assert list(w._metrics) == ["accuracy"]
    shown = f32(w._metrics["accuracy"], (5, 5))
    np.testing.assert_array_equal(shown, surf.metrics["accuracy"].astype(np.float32))
    for i, j in [(0, 0), (2, 2), (4, 1), (1, 3)]:
        assert shown[i, j] == pytest.approx(point_accuracy(model, surf, i, j, x, y), abs=1e-6)
    w.show = "accuracy"  # a display switch: nothing is recomputed
    assert w.surface is surf
    exported = w.export_state()
    assert exported["show"] == "accuracy" and set(exported["_metrics"]) == {"accuracy"}
    assert_same(model, snap)


def test_metrics_stream_with_the_tiles_and_the_preview_fills_the_rest(ls):
    seen = []
    w = lw.SurfaceWidget(ls, resolution=11, trust=False, preview_samples=None, send_interval=0)
    w.observe(lambda c: seen.append((w._state, dict(w._metrics))), names=["_metrics"])
    w.resolution = 13
    partial = [m for state, m in seen if state == "partial"]
    assert partial and all(set(m) == {"accuracy"} for m in partial)
    last = f32(partial[-1]["accuracy"], (13, 13))
    assert np.isfinite(last).all()  # rows still computing show the preview's (upsampled) accuracy
    np.testing.assert_array_equal(f32(w._metrics["accuracy"], (13, 13)),
                                  w.surface.metrics["accuracy"].astype(np.float32))


def test_show_is_validated_from_python_and_from_the_browser(ls):
    w = lw.SurfaceWidget(ls, resolution=5, trust=False, preview_samples=None)
    with pytest.raises(Exception, match="show='f1' is not known; pass one of 'loss', 'accuracy', 'curvature'"):
        w.show = "f1"
    w.set_state({"show": "<img src=x>"})
    assert w.show == "loss" and "show" in w.error
    with pytest.raises(ValueError, match="show="):
        lw.SurfaceWidget(ls, resolution=5, trust=False, show="f1")


def test_the_curvature_layer_is_li_et_al_map_of_the_plane_shown(small, ls):
    model, _ = small
    snap = snapshot(model)
    w = lw.SurfaceWidget(ls, resolution=7, trust=False, preview_samples=None)
    surf = w.surface
    assert w._curvature == {} and w.curvature_map is None
    w.show = "curvature"  # computed now, on the plane shown (not recomputed)
    assert w.surface is surf and w.curvature_map is not None
    n = surface_mod.CURVATURE_RESOLUTION
    ref = ls.curvature_map(surf, resolution=n, progress=False)
    np.testing.assert_array_equal(w.curvature_map.ratio, ref.ratio)
    np.testing.assert_array_equal(f32(w._curvature["ratio"], (n, n)), ref.ratio.astype(np.float32))
    assert w._curvature["shape"] == [n, n]
    np.testing.assert_array_equal(f32(w._curvature["alphas"]), ref.alphas.astype(np.float32))
    assert "curvature map 7×7" in w._status and "computing" not in w._status
    # a new plane while the layer is shown: the plane, then its own map
    w.seed = 3
    assert w.surface is not surf and w.curvature_map.meta["model_sha256"] == surf.meta["model_sha256"]
    fresh = ls.curvature_map(w.surface, resolution=n, progress=False)
    np.testing.assert_array_equal(w.curvature_map.ratio, fresh.ratio)
    # back to the loss and to the curvature of the same plane: nothing is computed again
    kept = w.curvature_map
    w.show = "loss"
    w.show = "curvature"
    assert w.curvature_map is kept
    assert_same(model, snap)


def test_a_curvature_map_that_fails_leaves_the_plane(ls, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no double backward here")

    w = lw.SurfaceWidget(ls, resolution=5, trust=False, preview_samples=None)
    monkeypatch.setattr(w._ls, "curvature_map", broken)
    w.show = "curvature"
    assert w._state == "done" and w.surface is not None and w._curvature == {}
    assert w.curvature_error and "no double backward" in w.curvature_error
    assert "curvature map unavailable" in w._status


def test_an_offline_page_keeps_the_metrics_and_the_map(ls, tmp_path):
    w = lw.SurfaceWidget(ls, resolution=5, trust=False, preview_samples=None, show="curvature")
    state = w.export_state()
    assert state["show"] == "curvature" and set(state["_metrics"]) == {"accuracy"}
    assert state["_curvature"]["ratio"] == surface_mod.f32(w.curvature_map.ratio)
    text = open(w.to_html(tmp_path / "page.html"), encoding="utf-8").read()
    assert all(k in text for k in ('"_curvature":', '"_metrics":', '"show":"curvature"')), text[:200]


def test_the_curve_widget_ships_each_curves_metrics(small, ls):
    model, (x, y) = small
    start = {n: torch.zeros_like(p) for n, p in model.state_dict().items()}
    plain = lw.Landscape(model, CE, (x, y), device="cpu")  # no metrics: its curve has none to show
    w = lw.CurveWidget(ls, start, steps=7, span=(0.0, 1.0), show="accuracy")
    w.add(None, landscape=plain, label="plain")
    w.wait()
    assert w._quantities == ["loss", "accuracy"]
    first, second = w._curves
    assert set(first["metrics"]) == {"accuracy"} and second["metrics"] == {}
    curve = w.curves[0]
    np.testing.assert_array_equal(f32(first["metrics"]["accuracy"]), curve.metrics["accuracy"].astype(np.float32))
    # at alpha = 1 the interpolation is the model itself: the accuracy of a plain forward in eval mode
    was = model.training
    model.eval()
    with torch.no_grad():
        want = float((model(x).argmax(-1) == y).double().mean())
    model.train(was)
    assert curve.alphas[-1] == 1.0 and curve.metrics["accuracy"][-1] == pytest.approx(want, abs=1e-6)
    with pytest.raises(Exception, match="show='f1' is not known"):
        w.show = "f1"


def test_the_curve_widget_shows_a_bezier_curve_beside_its_straight_line():
    """CurveWidget.connect: the bend is trained once, then the steps control only evaluates; the two drawn curves
    are Landscape.connect's with that bend, and the user's models stay as they were."""
    from helpers import SmallNet, small_data
    x, y = small_data(n=32)
    model, other = SmallNet(seed=0).eval(), SmallNet(seed=1).eval()
    snaps = [snapshot(model), snapshot(other)]
    ls = lw.Landscape(model, CE, (x, y), device="cpu")
    w = lw.CurveWidget(ls, None, steps=5, span=(-1.0, 1.0))
    w.connect(other, epochs=1, batch_size=16, seed=0)
    w.wait()
    bend = w._specs[1]["connect"]["bend"]
    random_line, bezier, straight = w._curves
    ref = ls.connect(other, bend=bend, steps=5, progress=False, epochs=1, batch_size=16, seed=0)
    np.testing.assert_array_equal(f32(bezier["losses"]), ref.losses.astype(np.float32))
    np.testing.assert_array_equal(f32(straight["losses"]), np.asarray(ref.meta["line_losses"], dtype=np.float32))
    np.testing.assert_array_equal(f32(bezier["alphas"]), np.linspace(0, 1, 5).astype(np.float32))
    assert bezier["label"].startswith("Bézier curve (barrier") and straight["label"].startswith("straight line")
    assert bezier["kind"] == straight["kind"] == "connect" and random_line["kind"] == "line"
    w.steps = 7  # evaluates again with the same bend: no new training
    assert w._specs[1]["connect"]["bend"] is bend and len(f32(w._curves[1]["losses"])) == 7
    for m, snap in zip((model, other), snaps):
        assert_same(m, snap)
    with pytest.raises(TypeError, match="connect\\(\\) sets 'steps' itself"):
        w.connect(other, steps=3)
