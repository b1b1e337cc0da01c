"""A view added as one Python and one JS file (tests/test_new_view.py) renders in chromium: its offline page, built
with the bundle that includes its JS file, shows its plot, its controls from the kernel's spec and its status."""
from __future__ import annotations

import pytest
from torch import nn

import landscape_widgets as lw
from helpers import SmallNet, small_data
from landscape_widgets.export import page_html
from test_new_view import build_bundle, load_view

pytestmark = pytest.mark.browser


def test_new_view_renders_from_its_own_js_file(page, tmp_path):
    view = load_view(tmp_path)
    ls = lw.Landscape(SmallNet(), nn.CrossEntropyLoss(), small_data(), device="cpu")
    w = view.LineTestWidget(ls, steps=7).wait(60)  # the page's event loop runs: the widget computes in its worker
    path = tmp_path / "line.html"
    path.write_text(page_html([w], bundle=build_bundle(tmp_path / "build")), encoding="utf-8")
    w.close()
    page.goto(path.as_uri())
    root = ".lw-widget[data-view='line_test']"
    page.wait_for_selector(f"{root} .lw-plot[data-points='7']")
    assert page.inner_text(f"{root} .lw-status") == w._status
    slider = page.locator(f"{root} .lw-steps")
    assert (slider.get_attribute("min"), slider.get_attribute("max")) == ("3", "99")
    assert page.recorder.errors == []
