"""A notebook saved with its widget state stores the front-end bundle once (each widget's _esm is a small loader
that takes it from one shared Bundle widget), stays small with five widgets, and renders again from the saved
state when it is reopened."""
from __future__ import annotations

import json

import nbformat
import pytest
from conftest import close_notebook, open_notebook, run_all, wait_idle_after_run

pytestmark = pytest.mark.browser

FIRST_RENDER_MS = 240_000
FIVE = """import torch
from IPython.display import display
import landscape_widgets as lw
from landscape_widgets import examples
x, y = examples.digits()
ls = lw.Landscape(examples.digits_mlp(seed=0), torch.nn.CrossEntropyLoss(), (x[:256], y[:256]), device="cpu")
widgets = [lw.SurfaceWidget(ls, resolution=7, seed=k, trust=False, title=f"plane {k}") for k in range(4)]
widgets.append(lw.CurveWidget(ls, steps=11, title="line"))
for w in widgets:
    display(w)"""


def test_saved_notebook_stores_the_bundle_once_and_reopens(lab, page, artifacts):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(FIVE)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = lab.root / "saved.ipynb"
    nbformat.write(nb, path)
    open_notebook(page, lab, "saved.ipynb")
    try:
        run_all(page)
        page.wait_for_function("() => document.querySelectorAll(\".lw-widget .lw-plot[data-state='done']\").length "
                               "=== 5", timeout=FIRST_RENDER_MS)
        wait_idle_after_run(page)
        page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
        page.wait_for_function("() => !window.__lwNotebook.context.model.dirty")
    finally:
        close_notebook(page)
    saved = json.loads(path.read_text())
    size = path.stat().st_size
    state = saved["metadata"]["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    esms = [m["state"].get("_esm", "") for m in state.values() if m["model_name"] == "AnyModel"]
    sources = [m["state"]["source"] for m in state.values() if "source" in m["state"]]
    assert len(sources) == 1 and len(sources[0]) > 1_000_000  # the bundle, once
    assert sum(len(e) > 10_000 for e in esms) == 0  # no widget carries it again
    assert size < 2.2e6, size
    (artifacts / "saved-notebook-size.txt").write_text(f"{size} bytes with 5 widgets\n")

    # reopened without the computations: the widgets render from the saved state (the shared bundle included)
    open_notebook(page, lab, "saved.ipynb")
    try:
        page.wait_for_function("() => document.querySelectorAll(\".lw-widget .lw-plot[data-rows]\").length === 5",
                               timeout=120_000)
        rows = page.evaluate("() => Array.from(document.querySelectorAll('.lw-widget[data-view=surface] .lw-plot'),"
                             " p => p.dataset.rows)")
        assert rows == ["7"] * 4
        page.screenshot(path=str(artifacts / "lab-saved-reopened.png"))
        assert page.recorder.errors == []
    finally:
        close_notebook(page)
