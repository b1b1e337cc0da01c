"""Static matplotlib figures (landscape_widgets.plot): the artists hold exactly the result's numbers.

Contour lines are checked geometrically: every vertex of the line at level c lies on a grid edge, where the linear
interpolation of the plotted array (computed here with scipy) equals c; a transposed or wrong array fails that.
"""
import pathlib
import sys
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib import colors  # noqa: E402
from matplotlib.contour import QuadContourSet  # noqa: E402
from mpl_toolkits.mplot3d.art3d import Poly3DCollection  # noqa: E402
from scipy.interpolate import RegularGridInterpolator  # noqa: E402

import landscape_widgets as lw  # noqa: E402
from landscape_widgets import plot  # noqa: E402
from landscape_widgets.embedding import Embedding  # noqa: E402

ARTIFACTS = pathlib.Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def save(ax, name):
    ARTIFACTS.mkdir(exist_ok=True)
    ax.figure.savefig(ARTIFACTS / f"plot-{name}.png", dpi=90, bbox_inches="tight")


def bowl(nx=13, ny=9):
    """A tilted, asymmetric bowl on a non-square grid (alphas != betas), so a transposed array shows."""
    a, b = np.linspace(-1.0, 1.5, nx), np.linspace(-0.5, 1.0, ny)
    A, B = np.meshgrid(a, b, indexing="ij")
    return a, b, 0.05 + 2.0 * (A - 0.3) ** 2 + (B + 0.1) ** 2 + 0.8 * A * B + np.exp(A)


@pytest.fixture
def surf():
    a, b, losses = bowl()
    s = lw.Surface(a, b, losses, meta={"models": {"labels": ["model", "init"], "coords": [[0.0, 0.0], [1.2, 0.7]]}},
                   path=np.column_stack([np.linspace(1.2, 0.0, 7), np.linspace(0.7, 0.0, 7) ** 2]))
    s.metrics = {"accuracy": 1.0 / (1.0 + losses)}
    return s


def contour_sets(ax):
    sets = [c for c in ax.collections if isinstance(c, QuadContourSet)]
    return [c for c in sets if c.filled], [c for c in sets if not c.filled]


def assert_lines_on_levels(lines, a, b, z):
    interp = RegularGridInterpolator((a, b), z)
    checked = skipped = 0
    for level, path in zip(lines.levels, lines.get_paths()):
        v = path.vertices
        # the ends of the gaps that inline labels cut are inside cells: only the vertices on grid lines count
        on_edge = (np.abs(v[:, :1] - a).min(1) < 1e-12) | (np.abs(v[:, 1:] - b).min(1) < 1e-12)
        if on_edge.any():
            np.testing.assert_allclose(interp(v[on_edge]), level, rtol=1e-9, atol=1e-9)
        checked, skipped = checked + on_edge.sum(), skipped + (~on_edge).sum()
    assert checked > 20 and skipped <= checked // 4


def test_contour_levels_and_data_are_li_et_al_s(surf):
    before = torch.get_rng_state()
    ax = surf.plot(vmin=1.5, vmax=6.0, vlevel=0.5)
    filled, lines = contour_sets(ax)
    assert len(filled) == 1 and len(lines) == 1
    expected = np.arange(1.5, 6.0, 0.5)  # plot_2D.py: levels=np.arange(vmin, vmax, vlevel)
    np.testing.assert_array_equal(filled[0].levels, expected)
    np.testing.assert_array_equal(lines[0].levels, expected)
    assert filled[0].zmin == surf.losses.min() and filled[0].zmax == surf.losses.max()
    assert filled[0].extend == "both"  # the data go below 1.5 and above 6.0: the colour bar says so
    assert_lines_on_levels(lines[0], surf.alphas, surf.betas, surf.losses)
    assert ax.get_xlim() == (surf.alphas[0], surf.alphas[-1]) and ax.get_ylim() == (surf.betas[0], surf.betas[-1])
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("α", "β")
    assert torch.equal(torch.get_rng_state(), before)
    save(ax, "surface-contour")


def test_default_levels_span_the_finite_values_and_nan_inf_are_blank(surf):
    ax = surf.plot(levels=9)
    np.testing.assert_array_equal(contour_sets(ax)[0][0].levels, np.linspace(surf.losses.min(),
                                                                              surf.losses.max(), 9))
    z = surf.losses.copy()
    z[2, 3], z[8, 5] = np.nan, np.inf
    holed = lw.Surface(surf.alphas, surf.betas, z)
    ax = holed.plot()
    (filled,), (lines,) = contour_sets(ax)
    finite = z[np.isfinite(z)]
    np.testing.assert_array_equal(filled.levels, np.linspace(finite.min(), finite.max(), plot.DEFAULT_LEVELS))
    assert (filled.zmin, filled.zmax) == (finite.min(), finite.max())
    drawn = ax.collections[0]
    assert drawn is filled
    empty = lw.Surface(surf.alphas, surf.betas, np.full_like(z, np.nan))
    ax = empty.plot()
    assert contour_sets(ax) == ([], []) and "no finite loss" in ax.texts[0].get_text()


def test_log_levels_are_geometric_on_the_unchanged_losses(surf):
    ax = surf.plot(log=True, levels=7)
    (filled,), (lines,) = contour_sets(ax)
    expected = np.geomspace(surf.losses.min(), surf.losses.max(), 7)
    np.testing.assert_allclose(filled.levels, expected, rtol=1e-15)
    assert isinstance(filled.norm, colors.LogNorm)
    assert_lines_on_levels(lines, surf.alphas, surf.betas, surf.losses)  # the data are the losses themselves
    assert "log scale" in ax.figure.axes[-1].get_ylabel()
    save(ax, "surface-log")
    with pytest.raises(ValueError, match="vmin > 0"):
        surf.plot(log=True, vmin=0.0)


def test_path_and_model_marks_hold_the_surface_s_numbers(surf):
    ax = surf.plot()
    (path,) = [ln for ln in ax.lines if ln.get_gid() == "path"]
    np.testing.assert_array_equal(path.get_xydata(), surf.path)
    (end,) = [ln for ln in ax.lines if ln.get_gid() == "path-end"]
    np.testing.assert_array_equal(end.get_xydata(), surf.path[-1:])
    (models,) = [ln for ln in ax.lines if ln.get_gid() == "models"]
    np.testing.assert_array_equal(models.get_xydata(), [[0.0, 0.0], [1.2, 0.7]])
    assert [t.get_text() for t in ax.texts if t.get_gid() == "model-label"] == ["model", "init"]
    bare = lw.Surface(surf.alphas, surf.betas, surf.losses)
    ax = bare.plot()
    assert not [ln for ln in ax.lines if ln.get_gid() in ("path", "models")]
    ax = surf.plot(path=False, models=False)
    assert not [ln for ln in ax.lines if ln.get_gid() in ("path", "models")]


def test_a_loaded_pca_surface_is_labelled_with_its_explained_variance(surf, tmp_path):
    pca = lw.Surface(surf.alphas, surf.betas, surf.losses, path=surf.path,
                     meta={"direction_kind": "pca", "explained_variance": [0.9536, 0.0312]})
    loaded = lw.load(pca.save(tmp_path / "pca.npz"))
    ax = loaded.plot()
    assert ax.get_xlabel() == "α  (1st PC: 95.36 %)" and ax.get_ylabel() == "β  (2nd PC: 3.12 %)"
    (path,) = [ln for ln in ax.lines if ln.get_gid() == "path"]
    np.testing.assert_array_equal(path.get_xydata(), surf.path)


def test_values_selects_a_metric_and_bad_names_list_the_available_ones(surf):
    acc = surf.metrics["accuracy"]
    ax = surf.plot(values="accuracy", levels=8)
    (filled,), (lines,) = contour_sets(ax)
    assert (filled.zmin, filled.zmax) == (acc.min(), acc.max())
    np.testing.assert_array_equal(filled.levels, np.linspace(acc.min(), acc.max(), 8))
    assert_lines_on_levels(lines, surf.alphas, surf.betas, acc)
    assert ax.figure.axes[-1].get_ylabel() == "accuracy"
    with pytest.raises(ValueError, match=r"values='acc'.*'loss', 'accuracy'"):
        surf.plot(values="acc")
    with pytest.raises(ValueError, match="shaped like"):
        surf.plot(values=np.zeros(3))
    no_metrics = lw.Surface(surf.alphas, surf.betas, surf.losses)
    with pytest.raises(ValueError, match=r"pass one of 'loss' \("):
        no_metrics.plot(values="accuracy")


@pytest.mark.parametrize("bad, match", [({"kind": "heatmap"}, "kind='heatmap'"),
                                        ({"levels": [2.0, 1.0]}, "increasing"),
                                        ({"vmin": 3.0, "vmax": 2.0}, "larger than vmin"),
                                        ({"vlevel": -1.0}, "positive step"),
                                        ({"levels": 5, "vlevel": 0.1}, "not both"),
                                        ({"vmax": float("nan")}, "finite number")])
def test_bad_options_say_what_to_pass(surf, bad, match):
    with pytest.raises(ValueError, match=match):
        surf.plot(**bad)


def test_3d_surface_polygons_are_the_grid_cells_clipped_at_vmax(surf):
    z = surf.losses.copy()
    z[4, 4] = np.nan
    holed = lw.Surface(surf.alphas, surf.betas, z)
    ax = holed.plot(kind="surface", vmax=4.0)
    (poly,) = [c for c in ax.collections if isinstance(c, Poly3DCollection)]
    shown = np.minimum(z, 4.0)
    corners = np.stack([shown[:-1, :-1], shown[1:, :-1], shown[:-1, 1:], shown[1:, 1:]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no all-NaN cell here, but nanmean warns per call
        expected = np.nanmean(corners, axis=0).ravel()  # matplotlib colours a cell by its corners' mean
    np.testing.assert_allclose(poly.get_array(), expected, rtol=1e-12)
    assert ax.get_zlabel() == "loss"
    save(ax, "surface-3d")
    ax = surf.plot(kind="surface", log=True)
    (poly,) = [c for c in ax.collections if isinstance(c, Poly3DCollection)]
    lz = np.log10(surf.losses)
    np.testing.assert_allclose(poly.get_array(),
                               ((lz[:-1, :-1] + lz[1:, :-1] + lz[:-1, 1:] + lz[1:, 1:]) / 4).ravel(), rtol=1e-12)
    assert ax.get_zlabel() == "log10 loss"
    fig, flat = plt.subplots()
    with pytest.raises(ValueError, match="projection='3d'"):
        surf.plot(kind="surface", ax=flat)


def test_plots_draw_on_the_axes_given(surf):
    fig, (left, right) = plt.subplots(1, 2)
    assert surf.plot(ax=left, colorbar=False) is left
    assert surf.plot(ax=right, values="accuracy", colorbar=False) is right
    assert contour_sets(left)[0][0].zmax == surf.losses.max()
    assert contour_sets(right)[0][0].zmax == surf.metrics["accuracy"].max()
    assert len(fig.axes) == 2


def test_curve_line_holds_the_losses_log_axis_and_metric_on_a_twin_axis():
    alphas = np.linspace(-0.5, 1.5, 21)
    losses = 0.1 + (alphas - 1.0) ** 2 * 3 + 0.5 * np.sin(3 * alphas) ** 2
    losses[4] = np.nan
    curve = lw.Curve(alphas, losses, meta={"kind": "interpolation"})
    curve.metrics = {"accuracy": np.clip(1 - losses / 10, 0, 1), "error": losses / 10}
    ax = curve.plot(log=True, metric="accuracy")
    (line,) = [ln for ln in ax.lines if ln.get_gid() == "loss"]
    np.testing.assert_array_equal(line.get_xdata(), alphas)
    np.testing.assert_array_equal(line.get_ydata(), losses)
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "α  (0: start, 1: model)"
    twin = [a for a in ax.figure.axes if a is not ax]
    assert len(twin) == 1
    (metric,) = twin[0].lines
    np.testing.assert_array_equal(metric.get_ydata(), curve.metrics["accuracy"])
    assert twin[0].get_ylabel() == "accuracy" and twin[0].get_yscale() == "linear"
    save(ax, "curve")
    with pytest.raises(ValueError, match=r"'loss', 'accuracy', 'error'"):
        curve.plot(metric="acc")
    marks = [ln.get_xdata()[0] for ln in ax.lines if ln.get_gid() == "model-mark"]
    assert marks == [0.0, 1.0]
    assert [t.get_text() for t in ax.texts if t.get_gid() == "model-label"] == ["start", "model"]
    ax = lw.Curve(alphas, losses).plot()
    assert ax.get_yscale() == "linear" and ax.get_xlabel() == "α" and len(ax.figure.axes) == 1
    assert not [ln for ln in ax.lines if ln.get_gid() == "model-mark"]
    through = lw.Curve(alphas, losses, meta={"models": {"labels": ["model", "model_b"], "coords": [0.0, 1.0]}})
    ax = through.plot()
    assert [ln.get_xdata()[0] for ln in ax.lines if ln.get_gid() == "model-mark"] == [0.0, 1.0]
    assert [t.get_text() for t in ax.texts if t.get_gid() == "model-label"] == ["model", "model_b"]


def spread_of(seeds=4):
    a, b, base = bowl(9, 7)
    gen = np.random.default_rng(0)
    losses = np.stack([base * (1 + 0.3 * gen.random(base.shape)) for _ in range(seeds)])
    losses[1, 2, 3] = np.nan
    return lw.SeedSpread(a, b, list(range(seeds)), losses, meta={"center_loss": 0.3})


def test_a_connect_curve_is_drawn_beside_its_straight_line():
    t = np.linspace(0, 1, 11)
    bezier, straight = 0.1 + 0.05 * np.sin(np.pi * t), 0.1 + np.sin(np.pi * t)
    curve = lw.Curve(t, bezier, meta={"kind": "connect", "line_losses": straight.tolist()})
    ax = curve.plot()
    (line,) = [ln for ln in ax.lines if ln.get_gid() == "loss"]
    (other,) = [ln for ln in ax.lines if ln.get_gid() == "straight-line"]
    np.testing.assert_array_equal(line.get_ydata(), bezier)
    np.testing.assert_array_equal(other.get_ydata(), straight)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Bézier curve", "straight line"]
    assert [t.get_text() for t in ax.texts if t.get_gid() == "model-label"] == ["model", "model_b"]
    assert ax.get_xlabel() == "t  (0: model, 1: model_b)"
    save(ax, "connect")


def test_seed_spread_median_contour_and_slice_band():
    spread = spread_of()
    median = np.nanmedian(spread.losses, axis=0)  # an independent median, NaN-aware
    ax = spread.plot(levels=10)
    (filled,), (lines,) = contour_sets(ax)
    assert (filled.zmin, filled.zmax) == (median.min(), median.max())
    assert_lines_on_levels(lines, spread.alphas, spread.betas, median)
    assert "median" in ax.figure.axes[-1].get_ylabel()
    save(ax, "seed-spread")
    ax = spread.plot(values="iqr")
    q = np.nanpercentile(spread.losses, [25, 75], axis=0)
    assert contour_sets(ax)[0][0].zmax == (q[1] - q[0]).max()
    ax = spread.plot(kind="slice", along="alpha")
    j = int(np.abs(spread.betas).argmin())
    rows = spread.losses[:, :, j]
    (med,) = [ln for ln in ax.lines if ln.get_gid() == "median"]
    np.testing.assert_array_equal(med.get_xdata(), spread.alphas)
    np.testing.assert_allclose(med.get_ydata(), np.nanmedian(rows, axis=0), rtol=1e-15)
    for k, s in enumerate(spread.seeds):
        (one,) = [ln for ln in ax.lines if ln.get_gid() == f"seed-{s}"]
        np.testing.assert_array_equal(one.get_ydata(), rows[k])
    (band,) = [c for c in ax.collections if c.get_gid() == "iqr"]
    lo, hi = np.nanpercentile(rows, [25, 75], axis=0)
    verts = {tuple(np.round(v, 12)) for v in band.get_paths()[0].vertices}
    for x, y0, y1 in zip(spread.alphas, lo, hi):
        assert tuple(np.round((x, y0), 12)) in verts and tuple(np.round((x, y1), 12)) in verts
    save(ax, "seed-spread-slice")
    with pytest.raises(ValueError, match="'alpha' or 'beta'"):
        spread.plot(kind="slice", along="gamma")
    with pytest.raises(ValueError, match="'median' or 'iqr'"):
        spread.plot(values="mean")


def test_spectrum_density_on_a_log_axis_with_the_eigenvalues_marked():
    grid = np.linspace(-1.0, 12.0, 400)
    density = np.exp(-grid ** 2 / 0.02) + 1e-3 * np.exp(-(grid - 10.0) ** 2 / 0.05)
    density /= np.trapezoid(density, grid)
    spec = lw.Spectrum([10.0, 4.5, 2.0], [-0.4], 37.5, 1.25, density_grid=grid, density=density)
    ax = spec.plot()
    (line,) = [ln for ln in ax.lines if ln.get_gid() == "density"]
    np.testing.assert_array_equal(line.get_xdata(), grid)
    np.testing.assert_array_equal(line.get_ydata(), density)
    assert ax.get_yscale() == "log"
    assert [ln.get_xdata()[0] for ln in ax.lines if ln.get_gid() == "top"] == [10.0, 4.5, 2.0]
    assert [ln.get_xdata()[0] for ln in ax.lines if ln.get_gid() == "bottom"] == [-0.4]
    assert ax.get_ylim()[0] == pytest.approx(density.max() * 1e-8)
    assert "37.5" in ax.texts[0].get_text()
    save(ax, "spectrum")
    bare = lw.Spectrum([3.0], [], float("nan"), float("nan"))
    ax = bare.plot()
    assert [ln.get_xdata()[0] for ln in ax.lines] == [3.0] and not ax.texts
    with pytest.raises(ValueError, match="floor"):
        spec.plot(floor=2.0)


def test_embedding_paths_are_the_coordinates_of_each_run():
    gen = np.random.default_rng(1)
    coords = np.cumsum(gen.normal(size=(11, 2)), axis=0)
    run = np.array([0] * 6 + [1] * 5)
    emb = Embedding(coords, np.r_[0:6, 0:5], np.ones(11), run, 0.93, 0.1, [0.71, 0.2],
                    meta={"method": "pca", "labels": ["sgd", "adam"]})
    ax = plot.plot_embedding(emb)
    for r in (0, 1):
        (line,) = [ln for ln in ax.lines if ln.get_gid() == f"run-{r}"]
        np.testing.assert_array_equal(line.get_xydata(), coords[run == r])
        assert line.get_label() == ["sgd", "adam"][r]
    assert ax.get_xlabel() == "1st PC: 71.00 %" and "0.930" in ax.get_title()
    save(ax, "embedding")
    emb1 = Embedding(coords[:, :1], np.arange(11), np.ones(11), np.zeros(11, int), 0.9, meta={"method": "umap"})
    ax = plot.plot_embedding(emb1)
    (line,) = [ln for ln in ax.lines if ln.get_gid() == "run-0"]
    np.testing.assert_array_equal(line.get_xydata(), np.column_stack([np.arange(11), coords[:, 0]]))
    assert ax.get_ylabel() == "umap 1"


def test_without_matplotlib_the_error_says_how_to_install_it(surf, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # import fails as if it were missing
    with pytest.raises(ImportError, match=r"pip install matplotlib.*landscape_widgets\[plot\]"):
        surf.plot()
