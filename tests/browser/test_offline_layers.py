"""The layers of an exported page, driven with real mouse and keyboard events in Debian's chromium, offline: the
plane through three models with its marks, the metric beside the loss and the curvature map (surface widget), the
metric of a curve and a Bézier curve beside its straight line; each drawn array equals the kernel's."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_offline_export import assert_no_requests, open_offline

import landscape_widgets as lw
from landscape_widgets import examples

pytestmark = pytest.mark.browser


def accuracy(out, y):
    return (out.argmax(-1) == y).double().mean()


@pytest.fixture(scope="module")
def layers(tmp_path_factory):
    out = tmp_path_factory.mktemp("layers")
    x, y = examples.digits()
    x, y = x[:256], y[:256]
    models = []
    for seed in (0, 1, 2):
        m = examples.digits_mlp(seed=seed)
        examples.train(m, (x, y), epochs=5)
        models.append(m)
    ls = lw.Landscape(models[0], torch.nn.CrossEntropyLoss(), (x, y), device="cpu", metrics={"accuracy": accuracy})
    surface = lw.SurfaceWidget(ls, directions=(models[1], models[2]), resolution=11, trust=False,
                               show="curvature", title="three digits MLPs")
    surface.wait(300)
    surface.show = "loss"
    curve = lw.CurveWidget(ls, models[1].state_dict(), steps=11, span=(0.0, 1.0), title="model_b → model")
    curve.connect(models[1], epochs=1)
    curve.wait(120)
    assert surface.curvature_map is not None
    return {"surface": Path(surface.to_html(out / "surface.html")), "plane": surface.surface,
            "curvature": surface.curvature_map, "curve": Path(curve.to_html(out / "curve.html")),
            "line": curve.curve, "bezier": curve.curves[1]}


def drawn_z(page):
    return np.array(page.evaluate("""() => document.querySelector('.lw-plot').data[0].z
        .map(row => Array.from(row, v => v === null || v === undefined ? NaN : Number(v)))"""), dtype=float)


def test_models_plane_metric_and_curvature_layers_offline(page, layers, artifacts):
    blocked = open_offline(page, layers["surface"])
    plane, cmap = layers["plane"], layers["curvature"]
    page.locator(".lw-view-select").select_option("contour")
    page.wait_for_function("() => document.querySelector('.lw-plot').data[0].type === 'contour'")
    # the three models at their marks, labelled, with their losses
    marks = page.evaluate("""() => { const t = document.querySelector('.lw-plot').data.find(d => d.name === 'models');
        return {x: Array.from(t.x), y: Array.from(t.y), text: Array.from(t.text)}; }""")
    coords = np.array(plane.meta["models"]["coords"], dtype=float)
    np.testing.assert_allclose(marks["x"], coords[:, 0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(marks["y"], coords[:, 1], rtol=1e-6, atol=1e-7)
    assert marks["text"] == plane.meta["models"]["labels"]
    np.testing.assert_allclose(drawn_z(page), np.log10(plane.losses).T, rtol=1e-5, atol=1e-6)

    # the user picks the metric with the keyboard: focus the select, ArrowDown
    show = page.locator(".lw-show")
    assert [o for o in show.evaluate("s => Array.from(s.options, o => o.value)")] == ["loss", "accuracy", "curvature"]
    show.focus()
    page.keyboard.press("ArrowDown")
    page.wait_for_function("() => document.querySelector('.lw-plot').data[0].colorbar.title.text === 'accuracy'")
    np.testing.assert_allclose(drawn_z(page), plane.metrics["accuracy"].T, rtol=1e-6, atol=1e-7)
    page.locator(".lw-plot").screenshot(path=str(artifacts / "offline-models-accuracy.png"))

    # and the curvature map with the mouse (select_option clicks the option)
    show.select_option("curvature")
    page.wait_for_function("() => document.querySelector('.lw-plot').data[0].z.length === %d" % cmap.ratio.shape[1])
    np.testing.assert_allclose(drawn_z(page), cmap.ratio.T, rtol=1e-5, atol=1e-7)
    assert page.evaluate("() => document.querySelector('.lw-plot').data[0].colorbar.title.text") == "|λmin/λmax|"
    page.locator(".lw-plot").screenshot(path=str(artifacts / "offline-curvature-map.png"))
    assert_no_requests(page, blocked)


def test_curve_metric_offline(page, layers):
    blocked = open_offline(page, layers["curve"])
    line, bezier = layers["line"], layers["bezier"]
    # the Bézier curve and its straight line beside the interpolation, barriers in the legend
    traces = page.evaluate("() => document.querySelector('.lw-plot').data.map(t => [t.name, Array.from(t.y)])")
    assert [name.split(" (")[0] for name, _ in traces] == ["interpolation", "Bézier curve", "straight line"]
    np.testing.assert_allclose(traces[1][1], bezier.losses, rtol=1e-6)
    np.testing.assert_allclose(traces[2][1], bezier.meta["line_losses"], rtol=1e-6)
    page.locator(".lw-show").select_option("accuracy")
    page.wait_for_function("() => document.querySelector('.lw-plot').layout.yaxis.title.text === 'accuracy'")
    y = page.evaluate("() => Array.from(document.querySelector('.lw-plot').data[0].y)")
    np.testing.assert_allclose(y, line.metrics["accuracy"], rtol=1e-6, atol=1e-7)
    assert_no_requests(page, blocked)
