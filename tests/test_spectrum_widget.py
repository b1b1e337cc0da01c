"""SpectrumWidget (issue 4): its numbers equal Landscape.spectrum / Landscape.trust with the same settings (which
tests/test_hessian.py checks against dense Hessians), trait changes recompute, a new surface reuses the spectrum,
progress and cancellation in a running event loop, validation, JSON-safe offline state."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch
from torch import nn

import landscape_widgets as lw
from _hessian_cases import classification_data, small_mlp
from helpers import assert_same, snapshot

CE = nn.CrossEntropyLoss()
FAST = {"k": 3, "bottom": 1, "steps": 20, "runs": 2}


def f32(buf):
    return np.frombuffer(bytes(buf), dtype="<f4")


@pytest.fixture(scope="module")
def case():
    model = small_mlp()
    x, y = classification_data(model)
    ls = lw.Landscape(model, CE, (x, y))
    surf = ls.plane(resolution=5, progress=False)
    w = lw.SpectrumWidget(ls, surface=surf, title="spectrum", **FAST)
    return model, ls, surf, w


def test_widget_shows_the_spectrum_and_the_trust_panel(case):
    _, ls, surf, w = case
    ref = ls.spectrum(**FAST)
    assert w._state == "done" and w.error == ""
    assert w._top == list(ref.top_eigenvalues) and w._bottom == list(ref.bottom_eigenvalues)
    assert w._trace["trace"] == ref.trace and w._trace["stderr"] == ref.trace_stderr
    assert w._trace["per_parameter"] == pytest.approx(ref.trace / 160)
    np.testing.assert_array_equal(f32(w._density), ref.density.astype(np.float32))
    np.testing.assert_array_equal(f32(w._grid), ref.density_grid.astype(np.float32))
    panel = ls.trust(surf, spectrum=ref)
    assert w._trust["kappa"] == panel["kappa"] and w._trust["hides_saddle"] == panel["hides_saddle"] is True
    assert w._trust["of"] == "filter-normalized random plane, seed 0"  # which plane the panel is about
    assert w.trust["lambda_min"] == ref.lambda_min < 0
    assert w._info["hvps"] == ref.meta["hvps_total"]


def test_trait_changes_recompute_and_a_new_surface_reuses_the_spectrum(case):
    model, ls, _, _ = case
    sw = lw.SurfaceWidget(ls, resolution=5)
    w = lw.SpectrumWidget(ls, surface=sw, **FAST)
    spec, kappa = w.spectrum, w._trust["kappa"]
    assert w._trust["of"] == "filter-normalized random plane, seed 0"  # an untitled widget: its surface's settings
    sw.title = "my plane"
    sw.seed = 4  # the surface widget finishes a new surface: only the trust panel is recomputed
    assert w._trust["of"] == "my plane"
    assert w.spectrum is spec and w._trust["kappa"] != kappa
    assert w._trust["kappa"] == ls.trust(sw.surface, spectrum=spec)["kappa"]
    w.k = 2
    assert len(w._top) == 2 and w.spectrum is not spec
    w.density = False
    assert w._density == b"" and w.spectrum.density is None
    with torch.no_grad():  # the user trains on: the cached spectrum no longer describes the model
        model[0].bias.add_(0.01)
    try:
        w.k = 2
        sw.seed = 5
        assert w.spectrum.meta["model_sha256"] == w._ls.problem.private().fingerprint()
    finally:
        with torch.no_grad():
            model[0].bias.sub_(0.01)


def test_state_is_json_ready_even_with_a_zero_direction(case, tmp_path):
    model, ls, _, _ = case
    zero = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    one = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    surf = ls.plane(directions=(one, zero), resolution=3, span=0.1, progress=False)
    w = lw.SpectrumWidget(ls, surface=surf, **FAST)
    assert w._trust["kappa"][1] is None and np.isnan(w.trust["kappa"][1])  # NaN in Python, null in JSON
    json.dumps(w.export_state()["_trust"], allow_nan=False)
    page = w.to_html(tmp_path / "spectrum.html")
    assert '"_view":"spectrum"' in open(page).read()


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"k": 0}, ValueError, "k=0"), ({"k": 161}, ValueError, "k=161"), ({"bottom": -1}, ValueError, "bottom"),
    ({"steps": 5}, ValueError, "steps"), ({"runs": 0}, ValueError, "runs"), ({"seed": -1}, ValueError, "seed"),
    ({"surface": "plane"}, TypeError, "surface"),
])
def test_python_side_values_raise_clear_errors(case, kwargs, exc, words):
    _, ls, _, _ = case
    with pytest.raises(exc, match=words):
        lw.SpectrumWidget(ls, **{**FAST, **kwargs})


def test_browser_values_are_clamped_or_rejected(case):
    _, ls, _, _ = case
    w = lw.SpectrumWidget(ls, density=False, k=1, bottom=0, steps=10, runs=1)
    w.set_state({"k": 500})
    assert w.k == 50 and "clamped" in w.error and len(w._top) == 50
    w.set_state({"runs": "many"})
    assert w.runs == 1 and "runs" in w.error
    w.set_state({"density": 1})
    assert w.density is False and "density" in w.error


def test_progress_and_cancellation_in_a_running_loop(case):
    model, ls, _, _ = case
    snap = snapshot(model)
    state = torch.get_rng_state()

    async def go():
        w = lw.SpectrumWidget(ls, k=2, bottom=1, steps=60, runs=3)
        seen = []
        w.observe(lambda ch: seen.append((w._state, w._status)), names="_status")
        await asyncio.sleep(0)
        w.k = 1  # supersedes the running job: its results are never shown
        while w._finished < w._generation:
            await asyncio.sleep(0.01)
        w._drain()
        return w, seen

    w, seen = asyncio.run(asyncio.wait_for(go(), 300))
    assert w._state == "done" and len(w._top) == 1 and w.spectrum.meta["k"] == 1
    assert any(state == "partial" for state, _ in seen)
    assert any("SLQ density" in status or "Lanczos" in status for _, status in seen)
    assert torch.equal(torch.get_rng_state(), state)
    assert_same(model, snap)


def test_errors_are_shown_in_the_widget(case):
    model, _, _, _ = case
    x, y = classification_data(model)
    bad = lw.Landscape(model, lambda out, t: torch.tensor(1.0), (x, y))
    w = lw.SpectrumWidget(bad, **FAST)
    assert w._state == "error" and "differentiable" in w.error
