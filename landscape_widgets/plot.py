"""Static matplotlib figures of results, as the papers print them (no browser, no widget).

- :func:`plot_surface`: filled contours and labelled contour lines of a plane (Li et al. 2018, arXiv 1712.09913,
  Fig. 5 and ``plot_2D.py``: levels ``arange(vmin, vmax, vlevel)``), the projected optimization path (§7, Fig. 9),
  or the 3-D surface (``kind="surface"``).
- :func:`plot_curve`: a 1-D profile (Goodfellow et al. 2015 interpolation; Li et al. §3), a metric on a twin axis.
- :func:`plot_seed_spread`: the median plane over seeds, its IQR, or a slice with the 25-75 % band.
- :func:`plot_spectrum`: the SLQ spectral density on a log axis (Ghorbani et al. 2019, arXiv 1901.10159, Fig. 1)
  with the extreme eigenvalues marked.
- :func:`plot_embedding`: embedded optimization paths (PCA, UMAP, autoencoder).

Every function takes ``ax=`` (a new figure when None) and returns the Axes it drew on; the drawn artists hold the
result's own numbers (log options set a log norm, log levels or a log axis; only the 3-D surface, whose z-axis
cannot be logarithmic, draws ``log10`` of the values).  NaN and inf cells are left blank in contour plots.
matplotlib is imported on first use: ``pip install matplotlib`` or ``pip install 'landscape_widgets[plot]'``.
"""
from __future__ import annotations

import numbers
import warnings

import numpy as np

KINDS = ("contour", "surface")
DEFAULT_LEVELS = 20
PATH_COLOR = "#d62728"
PC_NAMES = ("1st", "2nd", "3rd")


def pyplot():
    """``matplotlib.pyplot``, or an ImportError that says how to install it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # optional dependency
        raise ImportError("static figures need matplotlib: pip install matplotlib "
                          "(or pip install 'landscape_widgets[plot]')") from exc
    return plt


def values_of(result, values="loss"):
    """``(name, array)`` of what to draw: ``"loss"`` (``result.losses``), the name of one of ``result.metrics``
    (arrays shaped like ``losses``), or an array of that shape."""
    losses = np.asarray(result.losses, dtype=np.float64)
    metrics = getattr(result, "metrics", None) or {}
    if isinstance(values, str):
        if values == "loss":
            return "loss", losses
        if values in metrics:
            arr = np.asarray(metrics[values], dtype=np.float64)
            if arr.shape != losses.shape:
                raise ValueError(f"metric {values!r} has shape {arr.shape}, not the losses' {losses.shape}")
            return values, arr
        names = ", ".join(repr(n) for n in ["loss", *metrics])
        raise ValueError(f"values={values!r} is not one of this {type(result).__name__}'s arrays; pass one of "
                         f"{names} (or an array shaped like .losses, {losses.shape})")
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != losses.shape:
        raise ValueError(f"values has shape {arr.shape}; pass 'loss', a metric name or an array shaped like "
                         f".losses, {losses.shape}")
    return "values", arr


def _number(value, name):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite number or None")
    return float(value)


def contour_levels(z, *, levels=None, vmin=None, vmax=None, vlevel=None, log=False):
    """The contour levels for the array ``z`` (NaN/inf ignored), as Li et al.'s ``plot_2D.py`` draws them.

    ``levels``: a sequence (used as given) or a count (default 20) of levels from ``vmin`` to ``vmax`` inclusive,
    evenly spaced, or geometrically with ``log=True``; ``vlevel``: a step instead, ``arange(vmin, vmax, vlevel)``
    (Li et al.'s ``--vmin --vmax --vlevel``).  ``vmin``/``vmax`` default to the finite (with ``log``: positive)
    range of ``z``.
    """
    vmin, vmax, vlevel = _number(vmin, "vmin"), _number(vmax, "vmax"), _number(vlevel, "vlevel")
    if levels is not None and not isinstance(levels, numbers.Integral):
        out = np.asarray(levels, dtype=np.float64).ravel()
        if len(out) < 2 or not np.isfinite(out).all() or np.any(np.diff(out) <= 0):
            raise ValueError(f"levels={levels!r} must be at least 2 finite, increasing numbers (or a count)")
        if log and out[0] <= 0:
            raise ValueError(f"log=True needs positive levels, got {out[0]}")
        return out
    if vlevel is not None and levels is not None:
        raise ValueError("pass levels= (a count or a sequence) or vlevel= (a step), not both")
    count = DEFAULT_LEVELS if levels is None else int(levels)
    if count < 2:
        raise ValueError(f"levels={levels!r}: pass a count of at least 2 (or a sequence of levels)")
    z = np.asarray(z, dtype=np.float64)
    finite = z[np.isfinite(z) & ((z > 0) if log else True)]
    if log and ((vmin is not None and vmin <= 0) or (vmax is not None and vmax <= 0)):
        raise ValueError(f"log=True needs vmin > 0 and vmax > 0, got vmin={vmin}, vmax={vmax}")
    if vmin is None or vmax is None:
        if not finite.size:
            raise ValueError("there is no finite" + (" positive" if log else "") + " value to draw levels for; "
                             + ("pass log=False or " if log else "") + "pass vmin= and vmax=")
        lo, hi = float(finite.min()), float(finite.max())
        if hi == lo:  # a flat array still gets a colour scale around its value
            lo, hi = (lo / 2, lo * 2) if log else (lo - 0.5, hi + 0.5)
        vmin = lo if vmin is None else vmin
        vmax = hi if vmax is None else vmax
    if not vmax > vmin:
        raise ValueError(f"vmax={vmax} must be larger than vmin={vmin}")
    if vlevel is not None:
        if not vlevel > 0:
            raise ValueError(f"vlevel={vlevel} must be a positive step")
        out = np.arange(vmin, vmax, vlevel)
        if len(out) < 2:
            raise ValueError(f"arange(vmin={vmin}, vmax={vmax}, vlevel={vlevel}) gives fewer than 2 levels; "
                             "pass a smaller vlevel")
        return out
    return np.geomspace(vmin, vmax, count) if log else np.linspace(vmin, vmax, count)


def _axes(ax, projection=None):
    if ax is not None:
        if projection == "3d" and getattr(ax, "name", None) != "3d":
            raise ValueError("kind='surface' draws on 3-D axes: pass ax=fig.add_subplot(projection='3d') or ax=None")
        return ax
    plt = pyplot()
    fig = plt.figure(figsize=(6.4, 5.2) if projection == "3d" else (6.0, 4.8))
    return fig.add_subplot(projection=projection)


def _check_kind(kind, kinds):
    if kind not in kinds:
        raise ValueError(f"kind={kind!r} is not known; pass one of {', '.join(map(repr, kinds))}")


def _axis_labels(surface):
    """What the plane's direction kind calls its axes (PCA: the explained variance, Li et al. Fig. 9)."""
    from .directions.kind import kind_named

    kind = kind_named(getattr(surface, "direction_kind", None))
    if kind is None:
        return "α", "β"
    record = getattr(surface, "direction_meta", None)
    return kind.axis_labels(record if record is not None else surface.meta)  # (a surface built without one)


def _grid(ax, alphas, betas, z, *, name, levels, vmin, vmax, vlevel, log, cmap, lines, colorbar, clabel):
    """Filled contours of ``z[i, j]`` at ``(alphas[i], betas[j])`` and contour lines on top; returns both sets."""
    from matplotlib import colors

    alphas, betas = np.asarray(alphas, float), np.asarray(betas, float)
    if len(alphas) < 2 or len(betas) < 2:
        raise ValueError(f"a contour plot needs at least 2 x 2 grid points, this grid has {len(alphas)} x "
                         f"{len(betas)}")
    drawn = np.where(np.isfinite(z), z, np.nan)
    if log:
        drawn = np.where(drawn > 0, drawn, np.nan)  # no place for non-positive values on a log scale
    if not np.isfinite(drawn).any():
        ax.text(0.5, 0.5, f"no finite{' positive' if log else ''} {name} on this grid", transform=ax.transAxes,
                ha="center", va="center")
        ax.set_xlim(alphas[0], alphas[-1])
        ax.set_ylim(betas[0], betas[-1])
        return None, None
    lv = contour_levels(z, levels=levels, vmin=vmin, vmax=vmax, vlevel=vlevel, log=log)
    data = np.ma.masked_invalid(drawn.T)  # z[i, j] is (alpha_i, beta_j): rows of the image are betas
    finite = drawn[np.isfinite(drawn)]
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[
        (bool(finite.size and finite.min() < lv[0]), bool(finite.size and finite.max() > lv[-1]))]
    norm = colors.LogNorm(lv[0], lv[-1]) if log else colors.Normalize(lv[0], lv[-1])
    filled = ax.contourf(alphas, betas, data, levels=lv, cmap=cmap, norm=norm, extend=extend)
    outline = None
    if lines:
        outline = ax.contour(alphas, betas, data, levels=lv, colors="k", linewidths=0.5, alpha=0.55)
        if clabel and len(outline.levels):
            ax.clabel(outline, outline.levels[::2], inline=True, fontsize=7, fmt="%.3g")
    if colorbar:
        bar = ax.figure.colorbar(filled, ax=ax, shrink=0.9)
        bar.set_label(name + (" (log scale)" if log else ""))
        _ticks(bar, lv, log)
    ax.set_aspect("auto")
    return filled, outline


def _ticks(bar, levels, log):
    """Round ticks inside the levels' range (the default puts one at every level, 0.627, 0.933, ...)."""
    from matplotlib import ticker

    locator = ticker.LogLocator(subs=(1.0, 2.0, 5.0)) if log else ticker.MaxNLocator(7)
    ticks = np.asarray(locator.tick_values(levels[0], levels[-1]))
    ticks = ticks[(ticks >= levels[0] * (1 - 1e-9)) & (ticks <= levels[-1] * (1 + 1e-9))]
    if len(ticks) >= 2:
        bar.set_ticks(ticks)
        bar.ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%.3g"))
        bar.ax.yaxis.set_minor_locator(ticker.NullLocator())


def _marks(ax, path, models):
    """The projected path (start ``o``, end ``*``) and the models' marks (:class:`~landscape_widgets.results.Marks`)."""
    if path is not None:
        path = np.asarray(path, dtype=np.float64)
        if path.ndim == 2 and path.shape[1] == 2 and len(path):
            ax.plot(path[:, 0], path[:, 1], ".-", color=PATH_COLOR, lw=1.2, ms=4, label="optimization path",
                    gid="path", zorder=3)
            ax.plot(path[:1, 0], path[:1, 1], "o", color=PATH_COLOR, ms=6, mfc="white", zorder=4, gid="path-start")
            ax.plot(path[-1:, 0], path[-1:, 1], "*", color=PATH_COLOR, ms=11, mec="k", mew=0.5, zorder=4,
                    gid="path-end")
    if models is not None and len(models.coords):
        coords = np.asarray(models.coords, dtype=np.float64).reshape(-1, 2)
        labels = list(models.labels or [])
        ax.plot(coords[:, 0], coords[:, 1], "D", color="white", mec="k", ms=6, ls="none", gid="models", zorder=5,
                label="models")
        for (a, b), label in zip(coords, labels):
            ax.annotate(str(label), (a, b), xytext=(5, 5), textcoords="offset points", fontsize=8, gid="model-label",
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.7})


def plot_surface(surface, ax=None, *, values="loss", kind="contour", levels=None, vmin=None, vmax=None, vlevel=None,
                 log=False, cmap=None, lines=True, clabel=True, colorbar=True, path=True, models=True, title=None):
    """A :class:`~landscape_widgets.Surface` as Li et al. (2018) print it.

    ``kind="contour"``: filled contours with labelled contour lines at the levels of :func:`contour_levels`
    (``levels``, ``vmin``, ``vmax``, ``vlevel``, ``log``: log-spaced levels and a log colour scale), the projected
    path ``surface.path`` (start ``o``, end ``*``) and the models of ``surface.models`` when present; the axes
    carry the labels of the plane's direction kind (``DirectionKind.axis_labels``).
    ``kind="surface"``: the 3-D surface (Li et al.'s ``plot_2D.py``), ``values`` clipped to ``[vmin, vmax]``
    where given (Li et al.'s ``zmax``; +inf to ``vmax``, NaN cells left out) and,
    with ``log=True``, ``log10`` of the values on the z-axis.  ``values``: "loss", a name in ``surface.metrics``
    or an array shaped like ``losses``; the level options, ``lines``, ``clabel``, ``path`` and ``models`` apply to
    contours.  Returns the Axes.
    """
    _check_kind(kind, KINDS)
    name, z = values_of(surface, values)
    xlabel, ylabel = _axis_labels(surface)
    if kind == "surface":
        return _surface3d(surface.alphas, surface.betas, z, ax, name=name, vmin=vmin, vmax=vmax, log=log,
                          cmap=cmap, colorbar=colorbar, labels=(xlabel, ylabel), title=title)
    ax = _axes(ax)
    _grid(ax, surface.alphas, surface.betas, z, name=name, levels=levels, vmin=vmin, vmax=vmax, vlevel=vlevel,
          log=log, cmap=cmap or "viridis", lines=lines, colorbar=colorbar, clabel=clabel)
    _marks(ax, getattr(surface, "path", None) if path else None, getattr(surface, "models", None) if models else None)
    ax.set_xlim(surface.alphas[0], surface.alphas[-1])
    ax.set_ylim(surface.betas[0], surface.betas[-1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return ax


def _surface3d(alphas, betas, z, ax, *, name, vmin, vmax, log, cmap, colorbar, labels, title):
    vmin, vmax = _number(vmin, "vmin"), _number(vmax, "vmax")
    ax = _axes(ax, "3d")
    shown = np.where(np.isfinite(z) | (z == np.inf), z, np.nan)
    if vmax is not None:
        shown = np.minimum(shown, vmax)  # as Li et al.'s zmax: the walls of a blow-up stop at vmax
    if vmin is not None:
        shown = np.maximum(shown, vmin)
    shown = np.where(np.isfinite(shown), shown, np.nan)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            shown = np.where(shown > 0, np.log10(shown), np.nan)
    A, B = np.meshgrid(alphas, betas, indexing="ij")
    if np.isfinite(shown).any():
        surf = ax.plot_surface(A, B, shown, rstride=1, cstride=1, cmap=cmap or "coolwarm", linewidth=0,
                               antialiased=False)
        if colorbar:
            bar = ax.figure.colorbar(surf, ax=ax, shrink=0.6, aspect=12, pad=0.1)
            bar.set_label(f"log10 {name}" if log else name)
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_zlabel(f"log10 {name}" if log else name)
    if title:
        ax.set_title(title)
    return ax


def plot_curve(curve, ax=None, *, log=False, metric=None, color=None, label=None, title=None):
    """A :class:`~landscape_widgets.Curve`: the loss against alpha (``log=True``: a log y-axis), and with
    ``metric=`` (a name in ``curve.metrics``) that metric on a twin y-axis; dotted marks at the models of
    ``curve.models`` (a line through models) or at the start and the model of an interpolation; a
    ``Landscape.connect`` curve is drawn beside its straight line (``curve.line_losses``).
    Returns the loss's Axes."""
    ax = _axes(ax)
    alphas = np.asarray(curve.alphas, dtype=np.float64)
    losses = np.asarray(curve.losses, dtype=np.float64)
    bezier = getattr(curve, "kind", None) == "connect"  # Garipov et al.'s curve, drawn beside the straight line
    ax.plot(alphas, losses, "-", color=color or "C0", lw=1.6,
            label=label or ("Bézier curve" if bezier else "loss"), gid="loss")
    if bezier and getattr(curve, "line_losses", None) is not None:
        ax.plot(alphas, np.asarray(curve.line_losses, dtype=np.float64), "--", color="0.45", lw=1.3,
                label="straight line", gid="straight-line")
        ax.legend(frameon=False, fontsize=8)
    if log:
        ax.set_yscale("log")
    interpolation = getattr(curve, "kind", None) == "interpolation"
    models = getattr(curve, "models", None)
    if models is not None and len(models.coords) and np.ndim(models.coords) == 1:  # a line through models
        marks = list(zip(np.asarray(models.coords, dtype=np.float64), models.labels or []))
    elif bezier:  # phi(0) is the model, phi(1) the other one
        marks = [(0.0, "model"), (1.0, "model_b")]
    else:  # Goodfellow et al. 2015: the start at 0, the model at 1
        marks = [(0.0, "start"), (1.0, "model")] if interpolation else []
    for a, text in marks:
        if alphas[0] <= a <= alphas[-1]:
            ax.axvline(a, color="0.6", lw=0.8, ls=":", zorder=0, gid="model-mark")
            right = a > alphas[0] + 0.9 * (alphas[-1] - alphas[0])  # a label at the right edge goes to its left
            ax.annotate(str(text), (a, 1.0), xycoords=("data", "axes fraction"), xytext=(-2 if right else 2, -10),
                        textcoords="offset points", fontsize=8, color="0.4", gid="model-label",
                        ha="right" if right else "left")
    ax.set_xlabel("α  (0: start, 1: model)" if interpolation else "t  (0: model, 1: model_b)" if bezier else "α")
    ax.set_ylabel("loss" + (" (log scale)" if log else ""))
    ax.set_xlim(alphas[0], alphas[-1])
    if metric is not None:
        if isinstance(metric, str) and metric == "loss":
            raise ValueError("metric='loss' is already drawn; pass the name of one of curve.metrics")
        name, values = values_of(curve, metric)
        twin = ax.twinx()
        twin.plot(alphas, values, "--", color="C1", lw=1.4, label=name, gid="metric")
        twin.set_ylabel(name, color="C1")
        twin.tick_params(axis="y", colors="C1")
    if title:
        ax.set_title(title)
    return ax


def plot_seed_spread(spread, ax=None, *, kind="contour", values="median", along="alpha", levels=None, vmin=None,
                     vmax=None, vlevel=None, log=False, cmap=None, colorbar=True, title=None):
    """A :class:`~landscape_widgets.SeedSpread`.

    ``kind="contour"``: the per-cell ``values`` ("median" or "iqr") as in :func:`plot_surface`;
    ``kind="slice"``: the slice through the centre ``along`` "alpha" (at the beta nearest 0) or "beta", each seed
    a thin line, the median bold and the 25th-75th percentile band shaded (``log``: a log y-axis).
    """
    _check_kind(kind, ("contour", "slice"))
    seeds = len(spread.seeds)
    if kind == "contour":
        if values not in ("median", "iqr"):
            raise ValueError(f"values={values!r} is not known; pass 'median' or 'iqr'")
        ax = _axes(ax)
        name = f"{'median' if values == 'median' else 'IQR of the'} loss over {seeds} seeds"
        _grid(ax, spread.alphas, spread.betas, np.asarray(getattr(spread, values), float), name=name,
              levels=levels, vmin=vmin, vmax=vmax, vlevel=vlevel, log=log, cmap=cmap or "viridis", lines=True,
              colorbar=colorbar, clabel=True)
        ax.set_xlabel("α")
        ax.set_ylabel("β")
        if title:
            ax.set_title(title)
        return ax
    if along not in ("alpha", "beta"):
        raise ValueError(f"along={along!r} is not known; pass 'alpha' or 'beta'")
    losses = np.asarray(spread.losses, dtype=np.float64)
    if along == "alpha":
        j = int(np.abs(np.asarray(spread.betas)).argmin())
        x, rows, at = np.asarray(spread.alphas, float), losses[:, :, j], ("β", spread.betas[j])
    else:
        i = int(np.abs(np.asarray(spread.alphas)).argmin())
        x, rows, at = np.asarray(spread.betas, float), losses[:, i, :], ("α", spread.alphas[i])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column stays NaN
        q25, med, q75 = np.nanpercentile(rows, [25, 50, 75], axis=0)
    ax = _axes(ax)
    for k, row in enumerate(rows):
        ax.plot(x, row, "-", color="0.55", lw=0.7, alpha=0.7, gid=f"seed-{spread.seeds[k]}",
                label="one seed" if k == 0 else None)
    ax.fill_between(x, q25, q75, color="C0", alpha=0.3, lw=0, label="25-75 %", gid="iqr")
    ax.plot(x, med, "-", color="C0", lw=2, label=f"median of {seeds} seeds", gid="median")
    if log:
        ax.set_yscale("log")
    ax.set_xlim(x[0], x[-1])
    ax.set_xlabel(f"{'α' if along == 'alpha' else 'β'}  ({at[0]} = {at[1]:.3g})")
    ax.set_ylabel("loss" + (" (log scale)" if log else ""))
    ax.legend(fontsize=8, frameon=False)
    if title:
        ax.set_title(title)
    return ax


def plot_spectrum(spectrum, ax=None, *, floor=1e-8, title=None):
    """A :class:`~landscape_widgets.Spectrum`: the SLQ density on a log y-axis (Ghorbani et al. 2019, Fig. 1), the
    top eigenvalues marked red and the bottom ones blue; the y-axis starts at ``floor`` times the peak density
    (Gaussian tails fall to 1e-300).  Without a density only the eigenvalues are marked.  Returns the Axes."""
    floor = _number(floor, "floor")
    if floor is None or not 0 < floor < 1:
        raise ValueError(f"floor={floor!r} must be in (0, 1): the lowest density shown, relative to the peak")
    ax = _axes(ax)
    density = getattr(spectrum, "density", None)
    if density is not None:
        grid = np.asarray(spectrum.density_grid, dtype=np.float64)
        density = np.asarray(density, dtype=np.float64)
        ax.plot(grid, density, "-", color="k", lw=1.2, label="SLQ density", gid="density")
        ax.set_yscale("log")
        peak = np.nanmax(density) if np.isfinite(density).any() else np.nan
        if peak > 0:
            ax.set_ylim(peak * floor, peak * 3)
        ax.set_ylabel("density (log scale)")
        ax.set_xlim(grid[0], grid[-1])
    else:
        ax.set_yticks([])
    for k, lam in enumerate(np.asarray(spectrum.top_eigenvalues, dtype=np.float64)):
        ax.axvline(lam, color="C3", lw=1, ls="--", gid="top", label="top eigenvalues" if k == 0 else None)
    for k, lam in enumerate(np.asarray(spectrum.bottom_eigenvalues, dtype=np.float64)):
        ax.axvline(lam, color="C0", lw=1, ls="--", gid="bottom", label="bottom eigenvalues" if k == 0 else None)
    ax.set_xlabel("eigenvalue λ")
    trace = getattr(spectrum, "trace", float("nan"))
    if np.isfinite(trace):
        ax.text(0.98, 0.95, f"tr(H) = {trace:.4g} ± {spectrum.trace_stderr:.2g}", transform=ax.transAxes,
                ha="right", va="top", fontsize=8)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    if title:
        ax.set_title(title)
    return ax


def plot_embedding(embedding, ax=None, *, title=None):
    """An :class:`~landscape_widgets.Embedding`: each run's path through the embedding (start ``o``, end ``*``),
    in 2-D, on 3-D axes for ``dims=3``, or against the step for ``dims=1``; the axes name the PCA's explained
    variance (Li et al. 2018, Fig. 9) and the title the trustworthiness.  Returns the Axes."""
    coords = np.asarray(embedding.coords, dtype=np.float64)
    dims = coords.shape[1]
    ax = _axes(ax, "3d" if dims == 3 else None)
    method = getattr(embedding, "method", None) or "embedding"
    runs = np.asarray(embedding.run)
    labels = getattr(embedding, "labels", None) or []
    for r in np.unique(runs):
        sel = runs == r
        pts = coords[sel]
        label = labels[r] if r < len(labels) else f"run {r}"
        xs = [np.asarray(embedding.steps)[sel], pts[:, 0]] if dims == 1 else [pts[:, k] for k in range(dims)]
        (line,) = ax.plot(*xs, ".-", lw=1.2, ms=4, label=label, gid=f"run-{r}")
        ax.plot(*[x[:1] for x in xs], "o", color=line.get_color(), mfc="white", ms=6)
        ax.plot(*[x[-1:] for x in xs], "*", color=line.get_color(), mec="k", mew=0.5, ms=11)
    explained = getattr(embedding, "explained_variance", None)
    names = [f"{PC_NAMES[k]} PC: {100 * explained[k]:.2f} %" if explained is not None
             else f"{method} {k + 1}" for k in range(dims)]
    if dims == 1:
        ax.set_xlabel("step")
        ax.set_ylabel(names[0])
    else:
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
        if dims == 3:
            ax.set_zlabel(names[2])
    ax.set_title(title or f"{method}: trustworthiness {embedding.trustworthiness:.3f}")
    if len(np.unique(runs)) > 1:
        ax.legend(fontsize=8, frameon=False)
    return ax
