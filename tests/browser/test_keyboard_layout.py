"""Keyboard and layout inside a real JupyterLab: every control kind takes its own keys (real key presses on a
focused control, not trait assignments), the notebook's cell selection stays where it was, and the widget does not
shrink while it recomputes (the trust panel keeps its place)."""
from __future__ import annotations

import json

import nbformat
import pytest
from conftest import close_notebook, kernel_print, open_notebook, run_all, small_surface_cell, wait_idle_after_run

pytestmark = pytest.mark.browser

FIRST_RENDER_MS = 240_000
SURFACE = ".jp-Notebook .jp-OutputArea .lw-widget[data-view='surface']"
WIDGET_CELL = small_surface_cell("keyboard")


def keyboard_notebook(lab, name):
    """A heading, the widget, and a cell below: what ArrowLeft / ArrowDown would act on in command mode."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# A heading that must stay open"),
                                         nbformat.v4.new_code_cell(WIDGET_CELL),
                                         nbformat.v4.new_code_cell("print('below')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, lab.root / name)


def kernel_traits(page):
    return json.loads(kernel_print(page, "import json\nprint(json.dumps([surface.resolution, surface.seed, "
                                         "surface.normalization]))"))


def notebook_state(page):
    return page.evaluate("""() => { const nb = window.__lwNotebook.content;
        return [nb.activeCellIndex, nb.mode, document.querySelectorAll('.jp-Notebook .jp-Cell').length,
                document.querySelectorAll('.jp-Notebook .jp-Cell:not(.lm-mod-hidden)').length]; }""")


def open_rendered(page, lab, name):
    """The keyboard notebook opened, run, its plane and trust panel drawn, the kernel idle."""
    keyboard_notebook(lab, name)
    open_notebook(page, lab, name)
    run_all(page)
    page.wait_for_selector(f"{SURFACE} .lw-plot[data-rows='9'][data-state='done']", timeout=FIRST_RENDER_MS)
    page.wait_for_selector(f"{SURFACE} .lw-trust:not([hidden])", timeout=FIRST_RENDER_MS)
    wait_idle_after_run(page)


def test_every_control_takes_its_own_keys(lab, page, artifacts):
    try:
        open_rendered(page, lab, "keyboard.ipynb")

        slider = page.locator(f"{SURFACE} .lw-resolution")
        slider.click()  # mouse focus, as a user does
        page.evaluate("() => { window.__lwNotebook.content.activeCellIndex = 1; }")
        before = notebook_state(page)
        page.keyboard.press("ArrowRight")
        page.wait_for_selector(f"{SURFACE} .lw-plot[data-rows='{int(slider.input_value())}'][data-state='done']")
        after_right = int(slider.input_value())
        page.keyboard.press("ArrowLeft")
        page.keyboard.press("ArrowLeft")
        page.wait_for_selector(f"{SURFACE} .lw-plot[data-rows='{after_right - 2}'][data-state='done']")
        assert notebook_state(page) == before  # same cell, nothing collapsed or hidden

        select = page.locator(f"{SURFACE} .lw-normalization")
        select.focus()
        page.keyboard.press("ArrowDown")
        page.wait_for_function(f"() => document.querySelector(\"{SURFACE} .lw-normalization\").value === 'layer'")
        assert notebook_state(page) == before

        seed = page.locator(f"{SURFACE} .lw-seed")
        seed.focus()
        page.keyboard.press("ArrowUp")
        page.keyboard.press("Enter")
        page.wait_for_function(f"() => document.querySelector(\"{SURFACE} .lw-seed\").value === '1'")
        assert notebook_state(page) == before

        page.locator(f"{SURFACE} .lw-new-seed").focus()
        page.keyboard.press("Space")  # a button: Space presses it
        page.wait_for_function(f"() => document.querySelector(\"{SURFACE} .lw-seed\").value !== '1'")
        page.wait_for_selector(f"{SURFACE} .lw-plot[data-state='done']")
        wait_idle_after_run(page)
        resolution, seed_value, normalization = kernel_traits(page)
        assert resolution == after_right - 2 and seed_value not in (0, 1) and normalization == "layer"
        assert notebook_state(page) == before
        page.locator(SURFACE).screenshot(path=str(artifacts / "lab-keyboard.png"))
        assert page.recorder.errors == []
    finally:
        close_notebook(page)


def test_the_widget_does_not_shrink_while_it_recomputes(lab, page, artifacts):
    try:
        open_rendered(page, lab, "layout.ipynb")
        page.wait_for_timeout(300)
        height = page.locator(SURFACE).bounding_box()["height"]
        # sample the widget's height every animation frame from the change until the trust panel is back
        page.evaluate(f"""() => {{ window.__lwHeights = []; window.__lwUpdating = [];
            const el = document.querySelector("{SURFACE}");
            const trust = el.querySelector(".lw-trust");
            new MutationObserver(() => window.__lwUpdating.push(trust.dataset.updating))
              .observe(trust, {{ attributes: true, attributeFilter: ["data-updating"] }});
            const tick = () => {{ window.__lwHeights.push(el.getBoundingClientRect().height);
                                  if (window.__lwHeights.length < 100000) requestAnimationFrame(tick); }};
            requestAnimationFrame(tick); }}""")
        page.locator(f"{SURFACE} .lw-resolution").fill("15")
        page.wait_for_selector(f"{SURFACE} .lw-plot[data-rows='15'][data-state='done']")
        page.wait_for_selector(f"{SURFACE} .lw-trust[data-updating='false']:not([hidden])", timeout=120_000)
        assert "true" in page.evaluate("() => window.__lwUpdating")  # it said "updating" in its place
        page.locator(SURFACE).screenshot(path=str(artifacts / "lab-trust-after-update.png"))
        heights = page.evaluate("() => window.__lwHeights")
        assert len(heights) > 5
        assert min(heights) >= height - 1, (height, min(heights))
        assert page.recorder.errors == []
    finally:
        close_notebook(page)
