"""Direction kinds are objects: a new kind is one class, and Landscape, the surface widget, the trust panel and the
front end follow its declarations (what it needs, its span, its controls) without naming it."""
import numpy as np
import pytest
import torch
from torch import nn

import landscape_widgets as lw
from helpers import SmallNet, direct_loss, small_data
from landscape_widgets import directions as D
from landscape_widgets.directions import DirectionKind, Made
from landscape_widgets.results import Marks


class AxisKind(DirectionKind):
    """Two coordinate directions: the first and the last entry of the first moved parameter."""

    name = "axis-test"
    default_normalization = "none"
    chooses_span = True

    def make(self, private, count, **options):
        name = private.names[0]
        dirs = []
        for k in range(count):
            d = {n: torch.zeros_like(private.base[n]) for n in private.names}
            d[name].view(-1)[0 if k == 0 else -1] = 1.0
            dirs.append(d)
        return Made(dirs, {"direction_kind": self.name, "seed": None, "normalization": "none", "ignore": None},
                    span=((-2.0, 2.0),) * count)

    def describe(self, meta, span=None):
        return "two coordinate axes"

    def axis_labels(self, meta):
        return "first entry", "last entry"

    def marks(self, meta):
        return Marks(["first", "last"], [[1.0, 0.0], [0.0, 1.0]])


@pytest.fixture
def axis_kind():
    kind = D.register(AxisKind())
    yield kind
    del D.KINDS[kind.name]


def test_a_new_kind_is_one_class(axis_kind):
    model, (x, y) = SmallNet(), small_data()
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y))
    surf = ls.plane(directions="axis-test", resolution=5, progress=False)
    assert surf.span == ((-2.0, 2.0), (-2.0, 2.0))  # the kind's own grid
    name = ls.moved[0]
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    for i, a in enumerate(surf.alphas):
        for j, b in enumerate(surf.betas):
            at = {n: t.clone() for n, t in params.items()}
            at[name].view(-1)[0] += a
            at[name].view(-1)[-1] += b
            assert surf.losses[i, j] == pytest.approx(direct_loss(model, at, x, y), rel=1e-5, abs=1e-6)
    assert surf.meta["direction_kind"] == "axis-test" and surf.path is None


def test_a_new_kind_labels_its_axes_and_marks_its_points_in_plots(axis_kind, tmp_path):
    """plot() asks the plane's kind for its axis labels, also for a surface loaded from its file; the points the
    kind marks are evaluated and drawn."""
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, (x, y) = SmallNet(), small_data()
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y))
    surf = ls.plane(directions="axis-test", resolution=3, progress=False)
    assert surf.models.labels == ["first", "last"] and surf.meta["models"] == surf.models
    at = {n: p.detach().clone() for n, p in model.named_parameters()}
    at[ls.moved[0]].view(-1)[0] += 1.0  # the first mark, (1, 0)
    assert surf.models.losses[0] == pytest.approx(direct_loss(model, at, x, y), rel=1e-5, abs=1e-6)
    for shown in (surf, lw.load(surf.save(tmp_path / "axes.npz"))):
        ax = shown.plot()
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("first entry", "last entry")
        assert [t.get_text() for t in ax.texts if t.get_gid() == "model-label"] == ["first", "last"]
        plt.close(ax.figure)
    ax = lw.Surface(surf.alphas, surf.betas, surf.losses).plot()  # no kind: the plain axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("α", "β")
    plt.close(ax.figure)


def test_the_widget_ships_the_kinds_declaration(axis_kind):
    model, data = SmallNet(), small_data()
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data)
    w = lw.SurfaceWidget(ls, directions="axis-test", resolution=5, trust=False)
    try:
        spec = w._controls
        assert spec["kind"]["name"] == "axis-test" and spec["kind"]["controls"] == []
        assert spec["limits"]["resolution"] == [5, 201] and spec["normalizations"] == list(D.NORMALIZATIONS)
        assert w.surface.span == ((-2.0, 2.0), (-2.0, 2.0))  # the kind chooses its grid until the span is set
        assert "two coordinate axes" in w._status
        w.span = 0.5
        w.wait()
        assert w.surface.span == ((-0.5, 0.5), (-0.5, 0.5))
    finally:
        w.close()


def test_random_kind_declares_its_controls_and_seed():
    kind = D.KINDS["random"]
    assert kind.controls == ("seed", "normalization", "seeds") and kind.seeded and not kind.chooses_span
    assert D.KINDS["hessian"].needs == ("loss",) and D.KINDS["pca"].needs == ("trajectory",)
    assert D.kind_of({"w": torch.zeros(1)}) is D.EXPLICIT


def test_register_checks_the_declarations():
    class Bad(DirectionKind):
        name = "bad-test"
        needs = ("gpu",)

    with pytest.raises(ValueError, match="unknown needs or controls"):
        D.register(Bad())
    with pytest.raises(TypeError, match="DirectionKind"):
        D.register(object())
    assert "bad-test" not in D.KINDS


def test_a_function_kind_still_registers():
    def fn(private, count, **options):
        dirs = [{n: torch.ones_like(private.base[n]) * (k + 1) for n in private.names} for k in range(count)]
        return dirs, {"seed": None, "normalization": "none", "default_span": [(-0.1, 0.1)] * count}

    D.register("ones-test", fn)
    try:
        model, data = SmallNet(), small_data()
        surf = lw.Landscape(model, nn.CrossEntropyLoss(), data).plane(directions="ones-test", resolution=3,
                                                                      progress=False)
        assert surf.span == ((-0.1, 0.1), (-0.1, 0.1)) and surf.meta["direction_kind"] == "ones-test"
        assert np.isfinite(surf.losses).all()
    finally:
        del D.KINDS["ones-test"]


def test_trajectory_goes_only_to_kinds_that_need_it():
    model, data = SmallNet(), small_data()
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data)
    with pytest.raises(ValueError, match="only used by direction kinds that follow a path"):
        ls.plane(directions="random", trajectory=lw.Trajectory(), resolution=3, progress=False)


def test_a_surface_gives_its_directions_record_grid_and_path_again(tmp_path):
    """plane(directions=surface): the same directions, kind record, grid and path, nothing recomputed; also after
    save and load."""
    model, data = SmallNet(), small_data()
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data)
    first = ls.plane(directions="hessian", resolution=3, progress=False)
    again = ls.plane(directions=first, resolution=5, progress=False)
    assert again.span == first.span and again.meta["direction_kind"] == "hessian"
    assert again.meta["lambda_max"] == first.meta["lambda_max"] and "eigen_hvps" in again.direction_meta
    for d_first, d_again in zip(first.directions, again.directions):
        assert all(torch.equal(d_first[n], d_again[n]) for n in d_first)
    np.testing.assert_allclose(again.losses[::2, ::2], first.losses, rtol=1e-6)  # the 3x3 points among the 5x5
    loaded = lw.load(first.save(tmp_path / "h.npz"))
    assert loaded.direction_meta == first.direction_meta
    np.testing.assert_array_equal(ls.plane(directions=loaded, resolution=3, progress=False).losses, first.losses)
    bare = lw.Surface(first.alphas, first.betas, first.losses)
    with pytest.raises(ValueError, match="has no 2 directions"):
        ls.plane(directions=bare, resolution=3, progress=False)


def test_the_surface_widget_says_which_stage_runs():
    model, data = SmallNet(), small_data()
    w = lw.SurfaceWidget(lw.Landscape(model, nn.CrossEntropyLoss(), data), directions="hessian", resolution=5,
                         trust=False)
    try:
        assert w._pending_status(w._params()) == ("finding the Hessian's extreme eigenvectors (Lanczos), then "
                                                  "computing 5×5…")
        w.directions = "random"  # the kind is fixed at construction; only its declaration is read here
        assert w._pending_status(w._params()) == "computing 5×5…"
    finally:
        w.close()
