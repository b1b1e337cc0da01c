"""The widgets in a real JupyterLab, driven through Debian's chromium: run the notebooks, move the controls, and
check that the plot shows the grid the kernel computed (test hooks data-rows/data-cols, plotly's gd.data)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import (cell_errors, close_notebook, kernel_print, open_notebook, run_all, small_surface_cell,
                      wait_idle_after_run)

pytestmark = pytest.mark.browser

# the first render includes kernel start, imports (and in the quickstart, training): minutes when the 2 cores are
# shared with other jobs, so it gets more than the 60 s default
FIRST_RENDER_MS = 240_000
CELL_SURFACE = ".jp-Notebook .jp-OutputArea .lw-widget[data-view='surface']"
CELL_CURVE = ".jp-Notebook .jp-OutputArea .lw-widget[data-view='curve']"


def plot_z(page, root_selector, index=0):
    """The z rows plotly holds for the surface in the ``index``-th widget matching ``root_selector``."""
    return page.evaluate("""([sel, i]) => {
      const gd = document.querySelectorAll(sel + " .lw-plot")[i];
      const trace = gd.data.find(t => t.z);
      return trace.z.map(row => Array.from(row, v => v === null || v === undefined ? null : Number(v)));
    }""", [root_selector, index])


def kernel_log_losses(page, name="surface"):
    out = kernel_print(page, f"import json, numpy as np\nprint(json.dumps([{name}.resolution, "
                             f"np.log10({name}.surface.losses).tolist()]))")
    resolution, grid = json.loads(out)
    return resolution, np.array(grid)


def assert_plot_is_kernel_grid(page, selector, n, index=0):
    z = np.array(plot_z(page, selector, index), dtype=float)
    assert z.shape == (n, n)
    resolution, log_losses = kernel_log_losses(page)
    assert resolution == n and log_losses.shape == (n, n)
    # the figure holds rows of beta (z[j][i]); float32 on the wire
    np.testing.assert_allclose(z, log_losses.T, rtol=1e-5, atol=1e-6)


def test_quickstart_slider_recomputes_in_the_kernel(lab, page, artifacts):
    open_notebook(page, lab, "quickstart.ipynb")
    try:
        run_all(page)
        page.wait_for_selector(f"{CELL_SURFACE} .lw-plot[data-rows='21'][data-cols='21'][data-state='done']",
                               timeout=FIRST_RENDER_MS)
        page.wait_for_selector(f"{CELL_CURVE} .lw-plot[data-rows='2'][data-cols='51'][data-state='done']",
                               timeout=FIRST_RENDER_MS)
        wait_idle_after_run(page)
        assert cell_errors(page) == []
        assert_plot_is_kernel_grid(page, CELL_SURFACE, 21)
        renders = int(page.get_attribute(f"{CELL_SURFACE} .lw-plot", "data-renders"))

        page.locator(f"{CELL_SURFACE} .lw-resolution").fill("31")
        page.wait_for_selector(f"{CELL_SURFACE} .lw-plot[data-rows='31'][data-cols='31'][data-state='done']")
        assert int(page.get_attribute(f"{CELL_SURFACE} .lw-plot", "data-renders")) > renders
        assert_plot_is_kernel_grid(page, CELL_SURFACE, 31)
        assert page.locator(f"{CELL_SURFACE} .lw-error").is_hidden()
        assert "31×31" in page.inner_text(f"{CELL_SURFACE} .lw-status")

        # the curve widget's steps slider recomputes both curves in the kernel
        page.locator(f"{CELL_CURVE} .lw-steps").fill("21")
        page.wait_for_selector(f"{CELL_CURVE} .lw-plot[data-rows='2'][data-cols='21'][data-state='done']")
        ys = page.evaluate(f"""() => document.querySelector("{CELL_CURVE} .lw-plot").data
                                 .map(t => Array.from(t.y, v => v === null ? NaN : v))""")
        kernel = json.loads(kernel_print(page, "import json\n"
                                               "print(json.dumps([c.losses.tolist() for c in curve.curves]))"))
        assert len(ys) == len(kernel) == 2
        for y, losses in zip(ys, kernel):
            assert len(losses) == 21
            np.testing.assert_allclose(np.array(y, dtype=float), losses, rtol=1e-5)

        # a view change needs no kernel round trip but must redraw as a WebGL surface
        page.locator(f"{CELL_SURFACE} .lw-view-select").select_option("surface")
        page.wait_for_selector(f"{CELL_SURFACE} .lw-plot .gl-container canvas")
        page.locator(f"{CELL_SURFACE}").scroll_into_view_if_needed()
        page.wait_for_timeout(500)  # let WebGL finish its first frame before the screenshot
        page.screenshot(path=str(artifacts / "lab-quickstart.png"), full_page=False)
        page.locator(CELL_SURFACE).screenshot(path=str(artifacts / "lab-quickstart-surface.png"))
        page.locator(CELL_CURVE).screenshot(path=str(artifacts / "lab-quickstart-curve.png"))

        # saved with its widget state, the quickstart keeps the front-end bundle once
        page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
        page.wait_for_function("() => !window.__lwNotebook.context.model.dirty")
        saved = lab.root / "quickstart.ipynb"
        state = json.loads(saved.read_text())["metadata"]["widgets"][
            "application/vnd.jupyter.widget-state+json"]["state"]
        assert sum(len(json.dumps(m["state"])) > 1_000_000 for m in state.values()) == 1
        assert saved.stat().st_size < 2.2e6, saved.stat().st_size
        (artifacts / "saved-quickstart-size.txt").write_text(f"{saved.stat().st_size} bytes\n")

        assert page.recorder.errors == []
        assert page.recorder.external([lab.url]) == []  # no CDN, ever
    finally:
        close_notebook(page)


def test_sidecar_panel_renders_and_resizes(lab, page, artifacts):
    open_notebook(page, lab, "sidepanel.ipynb")
    panel = ".lm-DockPanel .lm-Widget:not(.jp-NotebookPanel) .lw-widget[data-view='surface']"
    try:
        run_all(page)
        wait_idle_after_run(page)
        assert cell_errors(page) == []
        page.wait_for_selector(f"{panel} .lw-plot[data-rows='31'][data-state='done'] .gl-container canvas")
        # the widget lives in the side panel, not in the notebook
        assert page.locator(".jp-Notebook .lw-widget").count() == 0
        assert_plot_is_kernel_grid(page, panel, 31)
        page.wait_for_selector(f"{panel} .lw-trust .lw-trust-item")
        assert clipped(page, panel) == []  # at 1280 x 900: controls, plot, trust line and status all in view

        width = lambda: page.evaluate(f"() => document.querySelector(\"{panel} .lw-plot\")._fullLayout.width")
        grown = f"""w => {{
          const gd = document.querySelector("{panel} .lw-plot");
          return gd._fullLayout.width > w + 50 && Math.abs(gd._fullLayout.width - gd.clientWidth) < 4;
        }}"""
        # the window grows: the panel and then the plot follow (ResizeObserver -> Plotly resize)
        before = width()
        page.set_viewport_size({"width": 1700, "height": 900})
        page.wait_for_function(grown, arg=before)
        # the user drags the split between notebook and panel 300 px to the left
        handle = page.locator("#jp-main-dock-panel > .lm-DockPanel-handle[data-orientation='horizontal']:visible")
        assert handle.count() == 1
        box = handle.bounding_box()
        before = width()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] / 2 - 300, box["y"] + box["height"] / 2, steps=10)
        page.mouse.up()
        page.wait_for_function(grown, arg=before)
        # outside a notebook the plot takes the panel's height too
        height = page.evaluate(f"() => document.querySelector(\"{panel} .lw-plot\")._fullLayout.height")
        assert height > 0.6 * page.viewport_size["height"]
        page.wait_for_timeout(300)
        page.wait_for_function(f"() => ({SCENE_FITS})(document.querySelector(\"{panel} .lw-plot\"))", timeout=10_000)
        assert_scene_drawn_whole(page, panel)
        page.screenshot(path=str(artifacts / "lab-sidepanel.png"))
        # the user drags the split until the panel is 300 px wide: the widget fits what it is given
        box = handle.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        right = page.evaluate("() => document.querySelector('#jp-main-dock-panel').getBoundingClientRect().right")
        page.mouse.move(right - 300 - box["width"] / 2, box["y"] + box["height"] / 2, steps=10)
        page.mouse.up()
        page.wait_for_function(f"""() => {{
          const gd = document.querySelector("{panel} .lw-plot");
          return gd._fullLayout.width < 320 && Math.abs(gd._fullLayout.width - gd.clientWidth) < 4
                 && gd._fullData[0].colorbar.orientation === "h";
        }}""")
        page.wait_for_timeout(300)
        dock = page.evaluate(f"() => document.querySelector(\"{panel}\").closest('.lm-DockPanel-widget')"
                             ".getBoundingClientRect().width")
        assert 290 <= dock <= 310, dock
        assert clipped(page, panel) == []
        page.wait_for_function(f"() => ({SCENE_FITS})(document.querySelector(\"{panel} .lw-plot\"))", timeout=10_000)
        assert_scene_drawn_whole(page, panel)
        page.screenshot(path=str(artifacts / "lab-sidepanel-300px.png"))
        assert page.recorder.errors == []
    finally:
        close_notebook(page)


# the 3-D scene's WebGL canvas covers the plot area (_size: after plotly's automargin)
SCENE_FITS = """gd => {
  const area = gd._fullLayout._size, c = gd.querySelector(".gl-container canvas");
  return !!c && Math.abs(c.clientHeight - area.h) <= 2 && Math.abs(c.clientWidth - area.w) <= 2;
}"""


def assert_scene_drawn_whole(page, widget):
    """The coloured surface fills a good part of the 3-D plot area and is not cut at its sides (after a resize
    the scene once drew tiny in a corner, or cut at the left, with its canvas the right size)."""
    import io

    from PIL import Image
    plot = page.locator(f"{widget} .lw-plot")
    area = plot.evaluate("gd => gd._fullLayout._size")
    img = np.asarray(Image.open(io.BytesIO(plot.screenshot())).convert("RGB")).astype(int)
    scene = img[int(area["t"]):int(area["t"] + area["h"]), int(area["l"]):int(area["l"] + area["w"])]
    coloured = (scene.max(axis=2) - scene.min(axis=2)) > 60  # the viridis surface; axes and text are grey
    cols, rows = np.flatnonzero(coloured.any(axis=0)), np.flatnonzero(coloured.any(axis=1))
    assert cols.size and rows.size, "no surface drawn"
    width, height = cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1
    assert width >= 0.35 * area["w"] and height >= 0.25 * area["h"], (width, height, area)
    assert cols[0] > 2 and cols[-1] < scene.shape[1] - 3, (cols[0], cols[-1], scene.shape)


def clipped(page, widget):
    """The parts of ``widget`` (controls, plot, trust panel, status) that are cut: wider than their box, or not
    inside the visible area of the panel that holds the widget."""
    return page.evaluate("""sel => {
      const root = document.querySelector(sel);
      let view = root.parentElement;  // the nearest ancestor that clips: the panel (or the window)
      while (view && getComputedStyle(view).overflow === "visible") view = view.parentElement;
      const vb = (view || document.documentElement).getBoundingClientRect();
      const out = [];
      for (const el of root.querySelectorAll(".lw-controls, .lw-plot, .lw-trust, .lw-status")) {
        const b = el.getBoundingClientRect();
        // a one-line status may end in an ellipsis when its whole text is its tooltip (wide widgets only)
        const ellipsized = el.classList.contains("lw-status") && el.title === el.textContent
                           && getComputedStyle(el).textOverflow === "ellipsis";
        if (!ellipsized && el.scrollWidth > el.clientWidth + 1) out.push(`${el.className}: content ${el.scrollWidth} > ${el.clientWidth} px`);
        if (b.left < vb.left - 1 || b.right > vb.right + 1 || b.top < vb.top - 1 || b.bottom > vb.bottom + 1)
          out.push(`${el.className}: [${b.left}, ${b.right}] x [${b.top}, ${b.bottom}] outside the panel's `
                   + `[${vb.left}, ${vb.right}] x [${vb.top}, ${vb.bottom}]`);
      }
      return out;
    }""", widget)


VIEWS_NB = small_surface_cell("two views of one model")


def small_notebook(lab, name):
    """A one-cell notebook with a fast widget (untrained MLP, 256 samples) in the server's root."""
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(VIEWS_NB)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, lab.root / name)


def test_second_view_of_the_output_follows_and_zoom_survives(lab, page, artifacts):
    """JupyterLab's "Create New View for Output": two views of the same model, both redrawn by one kernel update;
    a zoom survives the update (constant uirevision); closing the second view leaves the first intact."""
    small_notebook(lab, "views.ipynb")
    page.set_viewport_size({"width": 1280, "height": 1500})  # room for both views
    open_notebook(page, lab, "views.ipynb")
    linked = ".jp-LinkedOutputView .lw-widget[data-view='surface']"
    try:
        run_all(page)
        page.wait_for_selector(f"{CELL_SURFACE} .lw-plot[data-rows='9'][data-state='done']",
                               timeout=FIRST_RENDER_MS)
        wait_idle_after_run(page)
        page.evaluate("""() => { const nb = window.__lwNotebook;
                                 nb.content.activeCellIndex = 0;
                                 return window.jupyterapp.commands.execute('notebook:create-output-view'); }""")
        page.wait_for_selector(f"{linked} .lw-plot[data-rows='9'][data-state='done']")
        assert page.locator(".lw-widget[data-view='surface']").count() == 2

        # zoom the second view with the mouse: drag a box on the plot (top part: the panel may cut the bottom)
        drag = page.locator(f"{linked} .lw-plot .nsewdrag")
        drag.scroll_into_view_if_needed()
        box = drag.bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.1)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.4, steps=8)
        page.mouse.up()
        xrange = f"() => Array.from(document.querySelector(\"{linked} .lw-plot\")._fullLayout.xaxis.range)"
        page.wait_for_function(f"() => ({xrange})()[1] < 0.9")
        zoomed = page.evaluate(xrange)

        # the slider in the second view drives the one kernel model; both views redraw the new grid
        page.locator(f"{linked} .lw-resolution").fill("13")
        for sel in (CELL_SURFACE, linked):
            page.wait_for_selector(f"{sel} .lw-plot[data-rows='13'][data-cols='13'][data-state='done']")
        assert_plot_is_kernel_grid(page, CELL_SURFACE, 13)
        assert_plot_is_kernel_grid(page, linked, 13)
        np.testing.assert_allclose(page.evaluate(xrange), zoomed)  # uirevision kept the zoom
        page.screenshot(path=str(artifacts / "lab-output-views.png"))

        # close the second view: its plot is purged, the cell's view keeps working
        closed = page.evaluate("""() => { let n = 0;
          for (const w of Array.from(window.jupyterapp.shell.widgets('main')))
            if (w !== window.__lwNotebook && (w.node.classList.contains('jp-LinkedOutputView')
                                              || w.node.querySelector('.jp-LinkedOutputView'))) { w.close(); n++; }
          return n; }""")
        assert closed == 1
        page.wait_for_function("() => document.querySelectorAll('.lw-widget').length === 1")
        page.locator(f"{CELL_SURFACE} .lw-resolution").fill("7")
        page.wait_for_selector(f"{CELL_SURFACE} .lw-plot[data-rows='7'][data-state='done']")
        assert page.recorder.errors == []
    finally:
        close_notebook(page)


def test_bad_value_from_the_browser_is_shown_and_a_valid_one_completes(lab, page, artifacts):
    small_notebook(lab, "errors.ipynb")
    open_notebook(page, lab, "errors.ipynb")
    try:
        run_all(page)
        page.wait_for_selector(f"{CELL_SURFACE} .lw-plot[data-rows='9'][data-state='done']",
                               timeout=FIRST_RENDER_MS)
        wait_idle_after_run(page)
        error = page.locator(f"{CELL_SURFACE} .lw-error")
        assert error.is_hidden()

        page.locator(f"{CELL_SURFACE} .lw-span").fill("0")
        page.locator(f"{CELL_SURFACE} .lw-span").press("Enter")  # Lab must not swallow the Enter
        page.wait_for_selector(f"{CELL_SURFACE} .lw-error:not([hidden])")
        assert "span" in error.inner_text()
        # the control shows the kernel's value again (a separate message, after the error)
        page.wait_for_function(f"() => document.querySelector(\"{CELL_SURFACE} .lw-span\").value === '1'")
        assert kernel_print(page, "print(surface.span)").strip() == "1.0"

        page.locator(f"{CELL_SURFACE} .lw-span").fill("0.5")
        page.locator(f"{CELL_SURFACE} .lw-span").press("Enter")
        page.wait_for_function(f"""() => {{ const gd = document.querySelector("{CELL_SURFACE} .lw-plot");
          return gd.dataset.state === 'done' && Math.abs(gd.data[0].x[0] + 0.5) < 1e-6; }}""")
        assert error.is_hidden()
        assert_plot_is_kernel_grid(page, CELL_SURFACE, 9)

        # JupyterLab's dark theme: the plot follows without a kernel round trip, and back to light
        bg = f"() => document.querySelector(\"{CELL_SURFACE} .lw-plot\")._fullLayout.paper_bgcolor"
        light = page.evaluate(bg)
        try:
            page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', "
                          "{theme: 'JupyterLab Dark'})")
            page.wait_for_function(f"() => ({bg})() !== {json.dumps(light)}", timeout=30_000)
            assert luminance(page.evaluate(bg)) < 0.3 < luminance(light)
            page.wait_for_timeout(1600)  # the widget's last delayed theme re-read
            page.locator(CELL_SURFACE).screenshot(path=str(artifacts / "lab-dark-theme.png"))
        finally:
            page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', "
                          "{theme: 'JupyterLab Light'})")
        page.wait_for_function(f"() => ({bg})() === {json.dumps(light)}", timeout=30_000)
        assert page.recorder.errors == []

        # the axes follow the new span: nobody zoomed, so the plot must show exactly alpha, beta in [-0.5, 0.5]
        ranges = page.evaluate(f"""() => {{ const l = document.querySelector("{CELL_SURFACE} .lw-plot")._fullLayout;
                                             return [Array.from(l.xaxis.range), Array.from(l.yaxis.range)]; }}""")
        np.testing.assert_allclose(ranges, [[-0.5, 0.5], [-0.5, 0.5]], atol=0.05)
    finally:
        close_notebook(page)


def luminance(css_colour: str) -> float:
    """Relative brightness 0..1 of an rgb()/rgba()/#rrggbb colour."""
    c = css_colour.strip()
    if c.startswith("#"):
        rgb = [int(c[i:i + 2], 16) for i in (1, 3, 5)]
    else:
        rgb = [float(v) for v in c[c.index("(") + 1:c.index(")")].split(",")[:3]]
    return (0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]) / 255


RECORD_PLOT = """sel => {
  // every state the plot and the progress bar go through, in order (polling could miss a short preview)
  const root = document.querySelector(sel);
  const gd = root.querySelector('.lw-plot'), bar = root.querySelector('.lw-progress');
  window.__lwLog = [];
  const note = () => window.__lwLog.push({state: gd.dataset.state, rows: +gd.dataset.rows,
    renders: +gd.dataset.renders, status: root.querySelector('.lw-status').textContent,
    progress: bar.hidden ? null : +bar.value});
  window.__lwObserver = new MutationObserver(note);
  window.__lwObserver.observe(gd, {attributes: true, attributeFilter: ['data-state', 'data-rows', 'data-renders']});
  window.__lwObserver.observe(bar, {attributes: true, attributeFilter: ['value', 'hidden']});
}"""


def test_preview_first_then_tiles_and_a_newer_change_wins(lab, page):
    small_notebook(lab, "protocol.ipynb")
    open_notebook(page, lab, "protocol.ipynb")
    plot = f"{CELL_SURFACE} .lw-plot"
    try:
        run_all(page)
        page.wait_for_selector(f"{plot}[data-rows='9'][data-state='done']", timeout=FIRST_RENDER_MS)
        wait_idle_after_run(page)
        page.evaluate(RECORD_PLOT, CELL_SURFACE)
        page.locator(f"{CELL_SURFACE} .lw-resolution").fill("61")
        page.wait_for_selector(f"{plot}[data-rows='61'][data-state='done']")
        log = page.evaluate("window.__lwLog")
        renders0 = log[0]["renders"]
        redraws = [e for e in log if e["renders"] > renders0]
        first_61 = next(i for i, e in enumerate(redraws) if e["rows"] == 61)
        # once the change is under way the old grid is only redrawn marked "stale", then the preview
        assert {e["state"] for e in redraws[:first_61]} <= {"stale", "preview"}, log
        assert redraws[0]["state"] == "stale", log
        # a coarse preview, labelled as such, is drawn before any of the full grid
        assert any(e["state"] == "preview" and 1 < e["rows"] < 61 for e in redraws[:first_61]), log
        assert any("preview" in e["status"].lower() for e in log), log
        # then the full grid streams in: partial draws of the 61 x 61 grid, the progress bar moving, then done
        after = redraws[first_61:]
        assert all(e["rows"] == 61 and e["state"] in ("partial", "done") for e in after), log
        assert [e["state"] for e in after].count("partial") >= 2 and after[-1]["state"] == "done", log
        assert any(e["progress"] is not None and 0 < e["progress"] < 1 for e in log), log
        assert page.locator(f"{CELL_SURFACE} .lw-progress").is_hidden()

        # two changes in a row: the newer one owns the display, the older result is never drawn as done
        page.evaluate(RECORD_PLOT, CELL_SURFACE)
        page.locator(f"{CELL_SURFACE} .lw-resolution").fill("101")
        page.locator(f"{CELL_SURFACE} .lw-resolution").fill("15")
        page.wait_for_selector(f"{plot}[data-rows='15'][data-state='done']")
        page.wait_for_timeout(1500)  # a stale 101 x 101 result would arrive after this
        log = page.evaluate("window.__lwLog")
        assert not [e for e in log if e["state"] == "done" and e["rows"] == 101], log
        assert page.get_attribute(plot, "data-rows") == "15"
        assert_plot_is_kernel_grid(page, CELL_SURFACE, 15)
        assert page.recorder.errors == []
    finally:
        close_notebook(page)
