"""SpectrumWidget exported with ``to_html`` and opened from disk in chromium: the density, the eigenvalue marks,
the trace error bar and the trust panel's saddle warning render offline with zero requests (issue 4)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import landscape_widgets as lw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _hessian_cases import classification_data, small_mlp  # noqa: E402
from test_offline_export import assert_no_requests, offline  # noqa: E402

pytestmark = pytest.mark.browser


def test_spectrum_page_renders_offline_with_the_trust_panel(page, tmp_path, artifacts):
    model = small_mlp()
    x, y = classification_data(model)
    ls = lw.Landscape(model, torch.nn.CrossEntropyLoss(), (x, y))
    surf = ls.plane(resolution=5, progress=False)
    w = lw.SpectrumWidget(ls, k=3, bottom=1, steps=20, runs=2, surface=surf, title="spectrum <b>x</b>").wait(300)
    assert w.trust["hides_saddle"]
    path = Path(w.to_html(tmp_path / "spectrum.html"))
    blocked = offline(page)
    page.goto(path.as_uri())
    root = ".lw-widget[data-view='spectrum']"
    page.wait_for_selector(f"{root} .lw-plot[data-state='offline'][data-eigenvalues='4']")
    assert page.is_visible(f"{root} .lw-warning") and "saddle" in page.inner_text(f"{root} .lw-warning")
    assert page.get_attribute(f"{root} .lw-spectrum-panel", "data-hides-saddle") == "true"
    traces = page.evaluate(f"""() => document.querySelector("{root} .lw-plot").data.map(t => ({{
        name: t.name, x: Array.from(t.x), y: Array.from(t.y)}}))""")
    by_name = {t["name"]: t for t in traces}
    dens = np.array([np.nan if v is None else v for v in by_name["density (SLQ)"]["y"]], dtype=float)
    shown = ~np.isnan(dens)
    np.testing.assert_allclose(dens[shown], w.spectrum.density[shown], rtol=1e-6)
    np.testing.assert_allclose(by_name["top eigenvalues"]["x"], w.spectrum.top_eigenvalues, rtol=1e-6)
    np.testing.assert_allclose(by_name["κ of the surface's directions"]["x"], w.trust["kappa"], rtol=1e-6)
    assert by_name["tr(H)/N"]["y"][0] == pytest.approx(w.spectrum.trace / 160, rel=1e-6)
    assert page.is_disabled(f"{root} .lw-k") and page.is_enabled(f"{root} .lw-log")
    assert page.inner_text(f"{root} .lw-title") == "spectrum <b>x</b>"
    page.screenshot(path=str(artifacts / "offline-spectrum.png"), full_page=True)
    assert_no_requests(page, blocked)
