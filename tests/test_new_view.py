"""Views are plug-ins: a new view is one Python file (a LiveWidget with its controls spec, job and event handlers)
and one JS file in js/src/views/ (bundled by name), and the job controller, the status line, the browser checks,
the offline export and the front end's view lookup follow it without naming it."""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shlex
import shutil
import subprocess

import numpy as np
import pytest
from torch import nn

import landscape_widgets as lw
from helpers import SmallNet, small_data

ROOT = pathlib.Path(__file__).resolve().parents[1]
JS = ROOT / "js"

VIEW_PY = '''
"""A loss profile along a random line: a view made outside the package."""
import time

import numpy as np
import traitlets as t

from landscape_widgets.widgets._base import RandomDirectionWidget, f32, private_landscape
from landscape_widgets.widgets.controls import ControlSpec, IntRange, common_controls
from landscape_widgets.widgets.jobs import Done, Preview
from landscape_widgets.widgets.status import Status

STEPS = (3, 99)


class LineTestWidget(RandomDirectionWidget):
    _view = t.Unicode("line_test").tag(sync=True)
    steps = t.Int(9).tag(sync=True)
    _losses = t.Bytes(b"").tag(sync=True)
    _compute_traits = ("steps", "seed")
    _display_traits = RandomDirectionWidget._display_traits + ("_losses",)

    def __init__(self, ls, *, steps=9):
        self._ls = private_landscape(ls)
        self.line = None
        spec = ControlSpec({**common_controls(seed=True, normalization=True), "steps": IntRange(*STEPS)},
                           redraw=("_losses", "_state"))
        super().__init__(steps=steps, controls=spec)
        self._schedule()

    def _params(self):
        return {"steps": self.steps, "seed": self.seed}

    def _job(self, p, emit, cancel):
        emit(Preview(self._ls.line(steps=3, seed=p["seed"], progress=False, cancel=cancel)))
        emit(Done(self._ls.line(steps=p["steps"], seed=p["seed"], progress=False, cancel=cancel)))

    def _event_handlers(self):
        return {**super()._event_handlers(), Preview: self._on_line, Done: self._on_line}

    def _on_line(self, event, p, t0):
        final = isinstance(event, Done)
        if final:
            self.line = event.result
        with self.complete_sync():
            self._state = "done" if final else "preview"
            self._set_status(Status(f"{len(event.result.losses)} points", stage=event.kind)
                             .note("max", f"max loss {np.max(event.result.losses):.3g}"))
            self._losses = f32(event.result.losses)
'''

VIEW_JS = '''// A loss profile along a random line: a view made outside the package.
import { toFloat32 } from "../codec.js";
import { viewControls } from "../controls.js";
import { baseLayout } from "../figure.js";
import { createFrame } from "../view.js";

export function render({ model, el }) {
  const f = createFrame({ model, el, view: "line_test" });
  const c = viewControls(model.get("_controls"));
  f.range("steps", "lw-steps", "steps", c.limits("steps"));
  let drawn = 0;
  f.setBuild((theme) => {
    const ys = Array.from(toFloat32(model.get("_losses")));
    if (!ys.length) return null;
    drawn = ys.length;
    return { data: [{ type: "scatter", mode: "lines+markers", y: ys }], layout: baseLayout(theme) };
  }, (plotDiv) => { plotDiv.dataset.points = String(drawn); });
  for (const k of c.redraw) f.listen(`change:${k}`, f.request);
  return f.dispose;
}
'''


def load_view(tmp_path):
    """The new view's Python file, imported from outside the package."""
    path = tmp_path / "line_test_view.py"
    path.write_text(VIEW_PY)
    spec = importlib.util.spec_from_file_location("line_test_view", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_bundle(out_dir) -> str:
    """The front-end bundle built as ``npm run build`` builds it, from a copy of js/src with the new view's JS file
    added; returns its text (skips without esbuild)."""
    esbuild = JS / "node_modules" / ".bin" / "esbuild"
    if not esbuild.exists() or shutil.which("node") is None:
        pytest.skip("the front end's build tools are not installed (cd js && npm ci)")
    src = out_dir / "src"
    shutil.copytree(JS / "src", src)
    (src / "views" / "line_test.js").write_text(VIEW_JS)
    os.symlink(JS / "node_modules", out_dir / "node_modules")  # plotly.js, resolved as from js/
    script = json.loads((JS / "package.json").read_text())["scripts"]["build"].split("&&")[0]
    args = [a for a in shlex.split(script)[1:] if not a.startswith("--outfile=")]
    outfile = out_dir / "widget.js"
    subprocess.run([str(esbuild), *args, f"--outfile={outfile}"], cwd=out_dir, check=True, capture_output=True)
    return outfile.read_text(encoding="utf-8")


@pytest.fixture
def ls():
    return lw.Landscape(SmallNet(), nn.CrossEntropyLoss(), small_data(), device="cpu")


def test_a_new_view_is_one_python_file(tmp_path, ls):
    view = load_view(tmp_path)
    w = view.LineTestWidget(ls, steps=7)
    try:
        assert w._state == "done" and w.error == "" and len(w.line.losses) == 7
        np.testing.assert_array_equal(w.line.losses, ls.line(steps=7, seed=0, progress=False).losses)
        assert w._status.startswith("7 points · max loss ") and w._status_line["notes"][0][0] == "max"
        # its controls spec is what the browser may send and what the front end shows
        assert w._controls["limits"]["steps"] == [3, 99] and w._controls["redraw"] == ["_losses", "_state"]
        assert [v for v, _ in w._controls["choices"]["normalization"]] == ["filter", "layer", "model", "none"]
        w.set_state({"steps": 1000})
        assert w.steps == 99 and "clamped to 99" in w.error and len(w.line.losses) == 99
        w.set_state({"span": 3})
        assert "span cannot be set from the browser" in w.error
        state = w.export_state()
        assert state["_view"] == "line_test" and state["_controls"]["limits"]["steps"] == [3, 99]
    finally:
        w.close()


def test_a_new_view_is_one_js_file_in_the_bundle(tmp_path):
    bundle = build_bundle(tmp_path)
    assert "./views/line_test.js" in bundle and "./views/surface.js" in bundle
    assert "A loss profile along a random line" not in (ROOT / "landscape_widgets" / "static" / "widget.js").read_text()
