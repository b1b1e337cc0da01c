"""The widgets in Jupyter Notebook 7 (the other Jupyter front end), driven through Debian's chromium: the notebook
runs, a focused slider takes its arrow key, the kernel recomputes and the plot shows the kernel's grid."""
from __future__ import annotations

import json

import nbformat
import numpy as np
import pytest
from conftest import (cell_errors, close_notebook, kernel_print, open_notebook, run_all, small_surface_cell,
                      wait_idle_after_run)

pytestmark = pytest.mark.browser

SURFACE = ".jp-Notebook .jp-OutputArea .lw-widget[data-view='surface']"
CELL = small_surface_cell("Notebook 7")


def test_notebook7_renders_and_recomputes(notebook7, page, artifacts):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(CELL)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, notebook7.root / "nb7.ipynb")
    open_notebook(page, notebook7, "nb7.ipynb")
    # Notebook 7 itself reports one error while it starts with the test server's JupyterLab settings (a plugin
    # schema it does not have), before any widget exists: what counts is that the widgets add none
    before = list(page.recorder.errors)
    try:
        run_all(page)
        page.wait_for_selector(f"{SURFACE} .lw-plot[data-rows='9'][data-state='done']", timeout=240_000)
        wait_idle_after_run(page)
        assert cell_errors(page) == []
        slider = page.locator(f"{SURFACE} .lw-resolution")
        slider.click()  # the mouse focuses it (and sets it where it was clicked)
        page.wait_for_selector(f"{SURFACE} .lw-plot[data-rows='{slider.input_value()}'][data-state='done']")
        want = int(slider.input_value()) + 1
        page.keyboard.press("ArrowRight")
        page.wait_for_selector(f"{SURFACE} .lw-plot[data-rows='{want}'][data-cols='{want}'][data-state='done']")
        resolution, grid = json.loads(kernel_print(page, "import json, numpy as np\nprint(json.dumps("
                                                         "[surface.resolution, np.log10(surface.surface.losses)"
                                                         ".tolist()]))"))
        z = page.evaluate(f"""() => document.querySelector("{SURFACE} .lw-plot").data.find(t => t.z).z
                                 .map(r => Array.from(r, v => v == null ? NaN : Number(v)))""")
        assert resolution == want
        np.testing.assert_allclose(np.array(z, dtype=float), np.array(grid).T, rtol=1e-5, atol=1e-6)
        page.screenshot(path=str(artifacts / "notebook7.png"))
        assert page.recorder.errors == before
        assert page.recorder.external([notebook7.url]) == []
    finally:
        close_notebook(page)
