"""``w.to_html(path)`` opened from disk (file://) in Debian's chromium with every non-file request blocked and
recorded: the page must render offline (WebGL 3-D view, contour), make zero requests, keep user strings as text,
disable the controls that need a kernel and keep the others working."""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import landscape_widgets as lw
from landscape_widgets import examples

pytestmark = pytest.mark.browser

EVIL = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> & "q"'
KERNEL_ONLY = [".lw-resolution", ".lw-seed", ".lw-new-seed", ".lw-normalization", ".lw-span"]
# every securitypolicyviolation is recorded too: a request the page's CSP refuses never reaches the network layer,
# so "zero requests" also means "zero attempts"
RECORD_CSP = """window.__csp = [];
document.addEventListener('securitypolicyviolation',
                          e => window.__csp.push(e.blockedURI + ' ' + e.violatedDirective));"""


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """Two exported pages from widgets computed in this process (no kernel: the widgets compute synchronously)."""
    out = tmp_path_factory.mktemp("export")
    x, y = examples.digits()
    model = examples.digits_mlp(seed=0)
    ls = lw.Landscape(model, torch.nn.CrossEntropyLoss(), (x[:256], y[:256]), device="cpu")
    surface = lw.SurfaceWidget(ls, resolution=11, span=1.0, view="surface", title=EVIL)
    surface.wait(120)
    curve = lw.CurveWidget(ls, None, steps=21, span=(-1.0, 1.0), title="curve " + EVIL)
    curve.wait(120)
    spread = lw.SurfaceWidget(ls, resolution=9, seeds=3, span=0.5)
    spread.wait(120)
    assert surface.surface is not None and curve.curve is not None and spread.trust is not None
    return {"surface": Path(surface.to_html(out / "surface.html")), "surface_losses": surface.surface.losses,
            "surface_trust": surface.trust,
            "spread": Path(spread.to_html(out / "spread.html")), "spread_trust": spread.trust,
            "curve": Path(curve.to_html(out / "curve.html")), "curve_losses": curve.curve.losses}


def offline(page):
    """Block and record every request that is not file:, blob: or data:."""
    blocked = []

    def handle(route):
        url = route.request.url
        if url.startswith(("file:", "blob:", "data:")):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()
    page.context.route("**/*", handle)
    page.context.add_init_script(RECORD_CSP)
    return blocked


def open_offline(page, path):
    blocked = offline(page)
    page.goto(path.as_uri())
    page.wait_for_selector(".lw-widget[data-offline='true'] .lw-plot[data-state='offline']")
    return blocked


def assert_no_requests(page, blocked):
    assert blocked == []
    assert page.recorder.external() == []
    assert page.evaluate("window.__csp") == []
    assert page.recorder.errors == []


def canvas_colours(page, selector) -> int:
    from PIL import Image
    img = Image.open(io.BytesIO(page.locator(selector).first.screenshot())).convert("RGB")
    return len(img.getcolors(maxcolors=1 << 20) or [])


def test_surface_page_renders_offline_with_webgl(page, pages, artifacts):
    blocked = open_offline(page, pages["surface"])
    root = ".lw-widget[data-view='surface']"
    page.wait_for_selector(f"{root} .lw-plot[data-rows='11'][data-cols='11'] .gl-container canvas")
    assert page.evaluate("() => !!document.createElement('canvas').getContext('webgl')")
    page.wait_for_timeout(500)  # the first WebGL frame
    # a blank canvas has one or two colours; a drawn surface with a colour scale has hundreds
    assert canvas_colours(page, f"{root} .gl-container canvas") > 50
    z = np.array(page.evaluate(f"""() => document.querySelector("{root} .lw-plot").data[0].z
                                   .map(r => Array.from(r))"""), dtype=float)
    np.testing.assert_allclose(z, np.log10(pages["surface_losses"]).T, rtol=1e-5)
    # the trust panel computed in the kernel travels with the page: kappa(d1), kappa(d2), lambda_max, ...
    box = page.locator(f"{root} .lw-trust")
    assert box.is_visible()
    items = dict(page.evaluate(f"""() => Array.from(document.querySelectorAll("{root} .lw-trust-item"))
        .filter(e => e.children.length === 2).map(e => [e.children[0].textContent, e.children[1].textContent])"""))
    trust = pages["surface_trust"]
    for label, value in (("κ(d1)", trust["kappa"][0]), ("κ(d2)", trust["kappa"][1]), ("λmax", trust["lambda_max"]),
                         ("λmin", trust["lambda_min"]), ("|λmin/λmax|", trust["eig_ratio"])):
        assert float(items[label].split(" ")[0]) == pytest.approx(value, rel=1e-3)
    # each eigenvalue with its error bound; the ratio with the alarm's threshold; the trace with its estimator
    assert float(items["λmin"].split(" ± ")[1]) == pytest.approx(trust["lambda_min_error"], rel=0.05)
    assert items["|λmin/λmax|"].endswith(f"(alarm ≥ {trust['saddle_threshold']:g})")
    assert f"tr(H)/N, Hutch++ {trust['trace_samples']} HVPs" in items
    assert items["on"] == "all 256 samples"  # what the panel was computed on
    assert page.get_attribute(f"{root} .lw-trust", "data-hides-saddle") == str(trust["hides_saddle"]).lower()
    page.screenshot(path=str(artifacts / "offline-surface-3d.png"), full_page=True)
    assert_no_requests(page, blocked)


def test_seed_median_page_shows_kappa_ranges_over_its_seeds(page, pages, artifacts):
    blocked = open_offline(page, pages["spread"])
    root = ".lw-widget[data-view='surface']"
    page.wait_for_selector(f"{root} .lw-trust:not([hidden])")
    items = dict(page.evaluate(f"""() => Array.from(document.querySelectorAll("{root} .lw-trust-item"))
        .filter(e => e.children.length === 2).map(e => [e.children[0].textContent, e.children[1].textContent])"""))
    trust = pages["spread_trust"]
    for i, (lo, hi) in enumerate(trust["kappa_range"]):
        shown = [float(v) for v in items[f"κ(d{i + 1}), 3 seeds"].split(" … ")]
        assert shown == pytest.approx([lo, hi], rel=1e-3)
    warning = page.locator(f"{root} .lw-trust .lw-warning")
    assert warning.is_visible() == trust["hides_saddle"]
    if trust["hides_saddle"]:
        assert f"{len(trust['hides_saddle_seeds'])} of 3 seeds" in warning.inner_text()
    page.screenshot(path=str(artifacts / "offline-seed-median.png"), full_page=True)
    assert_no_requests(page, blocked)


def test_user_strings_stay_text(page, pages):
    blocked = open_offline(page, pages["surface"])
    assert page.evaluate("window.__pwned") is None
    assert page.title() == EVIL
    assert page.inner_text(".lw-widget .lw-title") == EVIL
    for heading in page.locator("h1").all():  # a page heading, if the export adds one, is text as well
        assert heading.inner_text() == EVIL
    assert page.locator("main script:not([type='application/json']), main img").count() == 0
    assert_no_requests(page, blocked)


def test_kernel_controls_disabled_view_and_log_work(page, pages, artifacts):
    blocked = open_offline(page, pages["surface"])
    root = ".lw-widget[data-view='surface']"
    note = page.locator(f"{root} .lw-offline-note")
    assert note.is_visible() and len(note.inner_text().splitlines()) == 1
    for cls in KERNEL_ONLY:
        assert page.locator(f"{root} {cls}").is_disabled(), f"{cls} should be disabled offline"
    for cls in (".lw-log", ".lw-view-select"):
        assert page.locator(f"{root} {cls}").is_enabled(), f"{cls} should work offline"

    renders = lambda: int(page.get_attribute(f"{root} .lw-plot", "data-renders"))
    trace = lambda: page.evaluate(f"""() => {{ const t = document.querySelector("{root} .lw-plot").data[0];
                                       return [t.type, t.z.map(r => Array.from(r))]; }}""")
    n = renders()
    page.select_option(f"{root} .lw-view-select", "contour")
    page.wait_for_function(f"() => +document.querySelector(\"{root} .lw-plot\").dataset.renders > {n}")
    page.wait_for_selector(f"{root} .lw-plot .contourlayer path")
    kind, z = trace()
    assert kind == "contour" and page.locator(f"{root} .lw-plot .gl-container canvas").count() == 0
    np.testing.assert_allclose(np.array(z, dtype=float), np.log10(pages["surface_losses"]).T, rtol=1e-5)
    page.screenshot(path=str(artifacts / "offline-surface-contour.png"), full_page=True)

    # hover and zoom need no kernel either: hover names alpha, beta and the loss; a dragged box zooms
    box = page.locator(f"{root} .lw-plot .nsewdrag").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.7)  # off the model's marker
    hover = page.locator(f"{root} .lw-plot .hoverlayer .hovertext")
    hover.wait_for()
    text = hover.text_content()
    m = re.search(r"α\s*(-?[\d.]+)\s*β\s*(-?[\d.]+)\s*loss\s*([\d.e+-]+)", text)
    assert m, text
    a, b, shown = (float(v) for v in m.groups())
    grid = np.linspace(-1, 1, 11)
    i, j = int(np.abs(grid - a).argmin()), int(np.abs(grid - b).argmin())
    assert abs(grid[i] - a) < 1e-3 and abs(grid[j] - b) < 1e-3
    np.testing.assert_allclose(shown, pages["surface_losses"][i, j], rtol=5e-3)  # the raw loss, not log10
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.6, steps=8)
    page.mouse.up()
    page.wait_for_function(f"() => document.querySelector(\"{root} .lw-plot\")._fullLayout.xaxis.range[1] < 0.5")

    n = renders()
    page.uncheck(f"{root} .lw-log")
    page.wait_for_function(f"() => +document.querySelector(\"{root} .lw-plot\").dataset.renders > {n}")
    kind, z = trace()
    np.testing.assert_allclose(np.array(z, dtype=float), pages["surface_losses"].T, rtol=1e-5)

    page.select_option(f"{root} .lw-view-select", "heatmap")
    page.wait_for_function(f"() => document.querySelector(\"{root} .lw-plot\").data[0].type === 'heatmap'")
    assert_no_requests(page, blocked)


def test_curve_page_renders_offline(page, pages, artifacts):
    blocked = open_offline(page, pages["curve"])
    root = ".lw-widget[data-view='curve']"
    page.wait_for_selector(f"{root} .lw-plot[data-rows='1'][data-cols='21'] .scatterlayer path.js-line")
    y = page.evaluate(f"() => Array.from(document.querySelector(\"{root} .lw-plot\").data[0].y)")
    np.testing.assert_allclose(np.array(y, dtype=float), pages["curve_losses"], rtol=1e-5)
    assert page.evaluate(f"() => document.querySelector(\"{root} .lw-plot\")._fullLayout.yaxis.type") == "log"
    page.uncheck(f"{root} .lw-log")
    page.wait_for_function(f"() => document.querySelector(\"{root} .lw-plot\")._fullLayout.yaxis.type === 'linear'")
    for cls in (".lw-steps", ".lw-seed", ".lw-new-seed", ".lw-normalization", ".lw-span-start", ".lw-span-stop"):
        assert page.locator(f"{root} {cls}").is_disabled(), f"{cls} should be disabled offline"
    page.screenshot(path=str(artifacts / "offline-curve.png"), full_page=True)
    assert_no_requests(page, blocked)


def test_negative_control_requests_are_recorded(page, pages, tmp_path):
    """The recording is not blind: a file:// page that does reach out is caught, both ways."""
    url = "http://127.0.0.1:9"  # never reached: the route aborts it (and nothing listens on the discard port)
    blocked = offline(page)
    probe = tmp_path / "probe.html"
    probe.write_text(f"<!doctype html><img src='{url}/static/probe.png'><script>fetch('{url}/api/status')"
                     ".catch(() => {{}})</script>")
    page.goto(probe.as_uri())
    page.wait_for_function("() => document.readyState === 'complete'")
    page.wait_for_timeout(300)
    assert f"{url}/static/probe.png" in blocked and f"{url}/api/status" in blocked
    assert len(page.recorder.external()) >= 2

    # and the exported page's CSP refusals are seen: an attempt from inside it is recorded as a violation
    page.goto(pages["surface"].as_uri())
    page.wait_for_selector(".lw-plot[data-state='offline']")
    page.evaluate(f"() => fetch('{url}/api/status').catch(() => null)")
    page.wait_for_function("() => window.__csp.length > 0")
    assert any(url in v for v in page.evaluate("window.__csp"))


@pytest.mark.parametrize("view", ["surface", "contour"])
def test_a_300_px_panel_shows_everything(page, pages, artifacts, view):
    """A side panel 300 px wide: nothing overflows or is cut (controls, plot, trust panel, status), and the plot
    gets the width: its colorbar lies under it."""
    page.set_viewport_size({"width": 300, "height": 900})
    blocked = open_offline(page, pages["surface"])
    if view == "contour":
        page.locator(".lw-view-select").select_option("contour")
        page.wait_for_function("() => document.querySelector('.lw-plot').data[0].type === 'contour'")
    page.wait_for_timeout(300)
    overflow = page.evaluate("""() => Array.from(document.querySelectorAll(
        '.lw-widget, .lw-controls, .lw-plot, .lw-trust, .lw-footer, .lw-status'))
        .filter(el => el.scrollWidth > el.clientWidth + 1).map(el => el.className)""")
    assert overflow == []
    widget = page.locator(".lw-widget").bounding_box()
    assert widget["x"] >= 0 and widget["x"] + widget["width"] <= 300
    assert page.evaluate("() => document.querySelector('.lw-plot')._fullData[0].colorbar.orientation") == "h"
    status = page.locator(".lw-status")
    assert status.evaluate("el => el.scrollHeight <= el.clientHeight + 1")  # wrapped, not cut
    page.screenshot(path=str(artifacts / f"offline-300px-{view}.png"), full_page=True)
    assert_no_requests(page, blocked)
