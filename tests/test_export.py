"""Offline pages (``w.to_html``): escaping of user strings, no network references, the data embedded exactly."""
from __future__ import annotations

import base64
import html.parser
import json
import re

import numpy as np
import pytest
from torch import nn

import landscape_widgets as lw
from landscape_widgets import export
from landscape_widgets.export import BUNDLE

EVIL = '</script><script>alert("x")</script><!-- & <b>bold</b>'


class Page(html.parser.HTMLParser):
    """Collects tags, attributes and the text of each <script>."""

    def __init__(self):
        super().__init__()
        self.tags, self.scripts, self._in = [], [], None
        self.text = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._in = dict(attrs)
            self.scripts.append([dict(attrs), ""])

    def handle_endtag(self, tag):
        if tag == "script":
            self._in = None

    def handle_data(self, data):
        if self._in is not None:
            self.scripts[-1][1] += data
        else:
            self.text.append(data)


def parse(text):
    p = Page()
    p.feed(text)
    return p


@pytest.fixture
def ls(small):
    model, data = small
    return lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")


def states(page):
    return [json.loads(body) for attrs, body in page.scripts if "data-lw-state" in attrs]


def decode(buf):
    return np.frombuffer(base64.b64decode(buf["$b64"]), dtype="<f4")


def test_user_strings_stay_text(ls, tmp_path):
    w = lw.SurfaceWidget(ls, resolution=5, title=EVIL)
    path = w.to_html(tmp_path / "s.html")
    text = open(path, encoding="utf-8").read()
    page = parse(text)
    # exactly the scripts we wrote: one state, the bundle, the loader; the title injected none
    kinds = [a.get("type") for a, _ in page.scripts]
    assert kinds == ["application/json", "application/json", "module"]
    assert "alert(" not in "".join(body for a, body in page.scripts if a.get("type") == "module")
    assert text.count("</script>") == 3 and "<!-- &" not in text and "<b>bold" not in text
    assert page.tags.count(("b", {})) == 0
    assert EVIL in "".join(page.text)  # shown as text in <title> and <h1>
    (state,) = states(page)
    assert state["title"] == EVIL  # and handed to the view unchanged (it sets textContent)


def test_no_network_references_and_csp(ls, tmp_path):
    w = lw.SurfaceWidget(ls, resolution=5)
    text = open(w.to_html(tmp_path / "s.html"), encoding="utf-8").read()
    page = parse(text)
    for tag, attrs in page.tags:
        assert "src" not in attrs and "href" not in attrs, (tag, attrs)
        assert tag not in ("link", "iframe", "img", "object", "embed", "base"), tag
    csp = [a["content"] for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0] and "connect-src 'none'" in csp[0]
    # outside the bundle (whose plotly.js strings hold namespace URIs such as the SVG one) nothing names a URL
    outside = "".join(body for a, body in page.scripts if a.get("id") != "lw-bundle") + "".join(page.text)
    assert not re.search(r"https?:", outside)
    for attrs, body in page.scripts:
        if attrs.get("id") == "lw-bundle":
            bundle = json.loads(body)
            assert bundle == BUNDLE.read_text(encoding="utf-8")
            assert not re.search(r"""(import\s*\(|from\s*)["']https?:""", bundle)  # no remote module


def test_data_embedded_exactly(ls, tmp_path):
    s = lw.SurfaceWidget(ls, resolution=7, span=0.5, title="surface")
    c = lw.CurveWidget(ls, None, steps=9, title="line")
    c.add(None, label="again")
    text = open(export.write_html(tmp_path / "p.html", [c, s], title="both"), encoding="utf-8").read()
    cs, ss = states(parse(text))
    assert cs["_view"] == "curve" and ss["_view"] == "surface"
    assert cs["_offline"] is True and ss["_offline"] is True
    np.testing.assert_array_equal(decode(ss["_losses"]).reshape(7, 7), s.surface.losses.astype(np.float32))
    np.testing.assert_array_equal(decode(ss["_alphas"]), np.linspace(-0.5, 0.5, 7).astype(np.float32))
    assert ss["_shape"] == [7, 7] and ss["_state"] == "done"
    assert [e["label"] for e in cs["_curves"]] == ["random line", "again"]
    for e, curve in zip(cs["_curves"], c.curves):
        np.testing.assert_array_equal(decode(e["losses"]), curve.losses.astype(np.float32))


def test_nan_and_inf_losses_travel_as_float32():
    # NaN / inf are data: they must reach the page as IEEE values (drawn as gaps), not break the JSON
    from landscape_widgets.widgets._base import f32
    raw = f32([1.0, np.nan, np.inf, -np.inf])
    back = decode(export._encode(raw))
    assert back[0] == 1 and np.isnan(back[1]) and back[2] == np.inf and back[3] == -np.inf


def test_script_json_escapes_everything_that_could_close_a_script():
    s = export.script_json({"a": "</script><!--<script>&amp;", "b": [1, 2.5]})
    assert "<" not in s and ">" not in s and "&" not in s
    assert json.loads(s) == {"a": "</script><!--<script>&amp;", "b": [1, 2.5]}


def test_bad_arguments(ls, tmp_path):
    with pytest.raises(TypeError, match="widgets"):
        export.page_html([])
    with pytest.raises(TypeError, match="widgets"):
        export.page_html(["not a widget"])
    w = lw.SurfaceWidget(ls, resolution=5)
    with pytest.raises(TypeError, match="title"):
        w.to_html(tmp_path / "x.html", title=3)


@pytest.mark.slow
def test_demo_page_holds_the_dashboard(tmp_path):
    from landscape_widgets.demo import run_demo

    path = run_demo(tmp_path / "demo.html", resolution=9, epochs=3, progress=False)
    page = parse(open(path, encoding="utf-8").read())
    views = [s["_view"] for s in states(page)]
    assert views == ["curve", "surface", "surface", "spectrum", "trajectory"]
    assert decode(states(page)[2]["_path"]).size == 2 * 4  # the PCA plane carries the path: init + 3 epochs
    surface = states(page)[1]
    assert surface["_shape"] == [9, 9] and np.isfinite(decode(surface["_losses"])).all()
