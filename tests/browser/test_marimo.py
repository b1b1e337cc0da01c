"""The widgets in marimo (``mo.ui.anywidget(w)``), driven through Debian's chromium: the view renders (styled,
inside marimo's shadow DOM), a key press on the focused slider recomputes in marimo's kernel, and a cell that
depends on the widget sees the new grid."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import ROOT, free_port

pytestmark = pytest.mark.browser

APP = '''import marimo

app = marimo.App()


@app.cell
def _():
    import marimo as mo
    import torch
    import landscape_widgets as lw
    from landscape_widgets import examples
    x, y = examples.digits()
    ls = lw.Landscape(examples.digits_mlp(seed=0), torch.nn.CrossEntropyLoss(), (x[:256], y[:256]), device="cpu")
    surface = mo.ui.anywidget(lw.SurfaceWidget(ls, resolution=9, trust=False, title="marimo"))
    surface
    return mo, surface


@app.cell
def _(mo, surface):
    w = surface.widget
    w.wait(120)
    mo.md(f"kernel: resolution {w.resolution}, grid {list(w.surface.losses.shape)}")
    return
'''


@pytest.fixture
def marimo_app(tmp_path):
    pytest.importorskip("marimo")
    (tmp_path / "app.py").write_text(APP)
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    log = open(tmp_path / "marimo.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "marimo", "run", "app.py", "--headless", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.3)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_marimo_renders_and_recomputes(marimo_app, page, artifacts):
    page.goto(marimo_app)
    plot = ".lw-widget[data-view='surface'] .lw-plot"
    page.wait_for_selector(f"{plot}[data-rows='9'][data-state='done']", timeout=240_000)
    page.wait_for_selector("text=kernel: resolution 9, grid [9, 9]")
    # styled inside marimo's shadow root: the widget's stylesheet reached it (its controls are a flex row)
    assert page.locator(".lw-widget .lw-controls").evaluate("el => getComputedStyle(el).display") == "flex"
    slider = page.locator(".lw-widget .lw-resolution")
    slider.focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_selector(f"{plot}[data-rows='10'][data-cols='10'][data-state='done']")
    page.wait_for_selector("text=kernel: resolution 10, grid [10, 10]")
    page.screenshot(path=str(artifacts / "marimo.png"))
    assert page.recorder.errors == []
