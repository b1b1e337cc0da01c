"""A trust panel or spectrum that cannot be computed never hides the plane: the plane stays drawn and usable, the
panel's place says why, and a later panel clears the reason.  The failures are real where they can be (a loss
without a double backward, as a fused attention kernel has none) and patched where the case is narrow."""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch
from torch import nn

import landscape_widgets as lw
from helpers import assert_same, snapshot
from landscape_widgets.driver import Cancelled
from landscape_widgets.widgets.status import REASON_CHARS, failure_panel, failure_reason

CE = nn.CrossEntropyLoss()
FAST = {"k": 2, "bottom": 1, "steps": 10, "runs": 1}


class _NoSecond(torch.autograd.Function):
    """The identity on a gradient, whose own derivative is missing (as a fused kernel's backward has none)."""

    @staticmethod
    def forward(ctx, grad):
        return grad.clone()

    @staticmethod
    def backward(ctx, _):
        raise RuntimeError("derivative for _Identity's backward is not implemented")


class _Identity(torch.autograd.Function):
    """The identity with a first derivative only: Hessian-vector products through it fail.  (once_differentiable
    would not do: its error node hangs off a detached copy, so autograd.grad(..., inputs) never reaches it.)"""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return _NoSecond.apply(grad)


def switchable_loss(broken):
    """Cross entropy whose double backward fails while ``broken`` is set."""
    def loss_fn(out, y):
        return CE(_Identity.apply(out) if broken.is_set() else out, y)
    return loss_fn


def assert_plane_shown(w, n):
    assert w._state == "done" and w.error == ""
    assert w.surface.losses.shape == (n, n) and np.isfinite(w.surface.losses).all()
    assert w._shape == [n, n]
    shown = np.frombuffer(bytes(w._losses), dtype="<f4").reshape(n, n)
    np.testing.assert_array_equal(shown, w.surface.losses.astype(np.float32))


def assert_trust_unavailable(w, kind, words=""):
    """The reason shown starts with the exception's type; ``words`` are in the whole message (the reason is its
    first line, cut short)."""
    assert w.trust is None and w.trust_error.startswith(f"{kind}: ") and words in w._trust["detail"]
    assert len(w.trust_error) <= REASON_CHARS and "\n" not in w.trust_error
    assert w.surface.meta["trust_error"] == w.trust_error and "trust" not in w.surface.meta
    assert w._trust["error"] == w.trust_error and w._trust["detail"].startswith(w.trust_error.rstrip("…"))
    assert "trust panel unavailable" in w._status and "trust panel: computing" not in w._status


def assert_trust_shown(w):
    assert w.trust_error is None and w.trust is not None and len(w.trust["kappa"]) == 2
    assert w.surface.meta["trust"] is w.trust and "trust_error" not in w.surface.meta
    assert "error" not in w._trust and w._trust["kappa"] == w.trust["kappa"]
    assert "trust panel unavailable" not in w._status


def test_reason_is_one_short_line():
    assert failure_reason(RuntimeError("derivative for x is not implemented\nat line 3")) == (
        "RuntimeError: derivative for x is not implemented")
    long = failure_reason(ValueError("y" * 1000))
    assert len(long) == REASON_CHARS and long.startswith("ValueError: yyy") and long.endswith("…")
    assert failure_reason(KeyError()) == "KeyError"
    panel = failure_panel(RuntimeError("first line\nwhat to change"))  # the whole message goes along for hover
    assert panel == {"error": "RuntimeError: first line", "detail": "RuntimeError: first line\nwhat to change"}


def test_plane_stays_when_the_panel_has_no_double_backward(small):
    model, data = small
    before = snapshot(model)
    broken = threading.Event()
    broken.set()
    ls = lw.Landscape(model, switchable_loss(broken), data, device="cpu")
    w = lw.SurfaceWidget(ls, resolution=5, span=0.5)
    assert_plane_shown(w, 5)
    np.testing.assert_array_equal(w.surface.losses, ls.plane(resolution=5, span=0.5, progress=False).losses)
    assert_trust_unavailable(w, "RuntimeError", "derivative for _Identity")
    w.resolution = 7  # the controls still recompute the plane, and the panel fails again, as quietly
    assert_plane_shown(w, 7)
    assert_trust_unavailable(w, "RuntimeError", "derivative for _Identity")
    broken.clear()
    w.seed = 1  # a panel that can be computed clears the reason
    assert_plane_shown(w, 7)
    assert w.surface.meta["seed"] == 1
    assert_trust_shown(w)
    assert_same(model, before)
    w.close()


def test_plane_stays_in_a_running_loop_and_a_later_panel_clears_the_reason(small, monkeypatch):
    model, data = small
    ls = lw.Landscape(model, CE, data, device="cpu")
    real, failing = ls.trust, threading.Event()
    failing.set()

    def trust(*args, **kwargs):
        if failing.is_set():
            raise ValueError("no curvature today\n" + "second line " * 50)
        return real(*args, **kwargs)

    monkeypatch.setattr(ls, "trust", trust)  # the widget's private copy shares the instance's attributes

    async def finished(w):
        while w._finished < w._generation:
            await asyncio.sleep(0.005)
        w._drain()

    async def main():
        w = lw.SurfaceWidget(ls, resolution=11)  # preview first, then the full grid, then the panel
        await finished(w)
        assert_plane_shown(w, 11)
        assert_trust_unavailable(w, "ValueError", "no curvature today")
        assert "second line" not in w.trust_error
        w.span = 0.5
        await finished(w)
        assert_plane_shown(w, 11)
        assert w.surface.alphas[-1] == 0.5
        assert_trust_unavailable(w, "ValueError", "no curvature today")
        failing.clear()
        w.seed = 3
        await finished(w)
        return w

    w = asyncio.run(asyncio.wait_for(main(), 120))
    assert_plane_shown(w, 11)
    assert_trust_shown(w)
    w.close()


def test_a_cancelled_panel_is_not_a_failure(small, monkeypatch):
    model, data = small
    ls = lw.Landscape(model, CE, data, device="cpu")

    def trust(*args, **kwargs):
        raise Cancelled()

    monkeypatch.setattr(ls, "trust", trust)
    w = lw.SurfaceWidget(ls, resolution=5)
    assert_plane_shown(w, 5)
    assert w.trust is None and w.trust_error is None and w._trust == {} and "trust_error" not in w.surface.meta
    w.close()


def test_seed_spread_keeps_its_median_when_the_panel_fails(small):
    model, data = small
    broken = threading.Event()
    broken.set()
    w = lw.SurfaceWidget(lw.Landscape(model, switchable_loss(broken), data, device="cpu"), resolution=5, seeds=2)
    assert w.spread is not None and w.surface.meta["kind"] == "seed_median"
    assert_plane_shown(w, 5)
    assert_trust_unavailable(w, "RuntimeError", "derivative for _Identity")
    w.close()


def test_exported_page_says_why(small, tmp_path):
    model, data = small
    broken = threading.Event()
    broken.set()
    w = lw.SurfaceWidget(lw.Landscape(model, switchable_loss(broken), data, device="cpu"), resolution=5)
    assert_trust_unavailable(w, "RuntimeError", "derivative for _Identity")
    page = open(w.to_html(tmp_path / "plane.html"), encoding="utf-8").read()
    assert '"_trust":{"error":' in page.replace(" ", "")  # the offline page shows the reason too
    w.close()


def test_spectrum_shows_the_reason_its_trust_panel_failed(small, monkeypatch):
    model, data = small
    ls = lw.Landscape(model, CE, data, device="cpu")
    surf = ls.plane(resolution=5, progress=False)
    real, failing = ls.trust, threading.Event()
    failing.set()

    def trust(*args, **kwargs):
        if failing.is_set():
            raise RuntimeError("panel broke")
        return real(*args, **kwargs)

    monkeypatch.setattr(ls, "trust", trust)
    w = lw.SpectrumWidget(ls, surface=surf, **FAST)
    assert w._state == "done" and w.error == "" and w.spectrum is not None and len(w._top) == 2
    assert w.spectrum_error is None and w.trust is None and w.trust_error == "RuntimeError: panel broke"
    assert w._trust == {"error": "RuntimeError: panel broke", "detail": "RuntimeError: panel broke",
                        "of": "filter-normalized random plane, seed 0"}
    assert "trust panel unavailable" in w._status
    failing.clear()
    w.seed = 1
    assert w.trust_error is None and w.trust["kappa"] and "error" not in w._trust
    w.close()


def test_spectrum_failure_stays_in_its_view_and_the_dashboard_carries_on(small):
    model, data = small
    broken = threading.Event()
    broken.set()
    ls = lw.Landscape(model, switchable_loss(broken), data, device="cpu")
    d = lw.Dashboard(ls, resolution=5, spectrum_options=FAST).wait(timeout=300)
    for view in (d.curve, d.surface):
        assert view._state == "done" and view.error == ""
    assert_plane_shown(d.surface, 5)
    assert np.isfinite(d.curve.curve.losses).all()
    s = d.spectrum
    assert s._state == "error" and "derivative for _Identity" in s.error
    assert s.spectrum_error.startswith("RuntimeError: ") and s.spectrum_error[:-1] in s.error
    assert len(s.spectrum_error) <= REASON_CHARS and s.spectrum is None and s.trust is None
    assert d.error.startswith("Hessian spectrum: ") and "Filter-normalized" not in d.error  # only the spectrum's
    d.surface.seed = 2  # the plane still recomputes; the spectrum follows it and says why again
    d.wait(timeout=300)
    assert_plane_shown(d.surface, 5)
    assert d.surface.surface.meta["seed"] == 2
    assert s._state == "error" and s.spectrum_error.startswith("RuntimeError: ")
    broken.clear()
    d.surface.seed = 3  # once the products can be computed, the spectrum and its panel come back
    d.wait(timeout=300)
    assert s._state == "done" and s.error == "" and s.spectrum_error is None and s.spectrum is not None
    assert s.trust["kappa"] and s._trust["of"] == "Filter-normalized random plane"
    d.close()
    broken.set()
    alone = lw.Dashboard(ls, resolution=5, spectrum=False).wait(timeout=300)  # the panel under the plane instead
    assert alone.error == ""
    assert_plane_shown(alone.surface, 5)
    assert_trust_unavailable(alone.surface, "RuntimeError", "derivative for _Identity")
    alone.close()
