"""``Dashboard``: the views of one landscape side by side: curve, surface, Hessian spectrum and the trajectory
embedding, in a grid that reflows to one column in a narrow JupyterLab side panel, all recomputing in one shared
worker thread, and exported together as one offline page.
"""
from __future__ import annotations

import ipywidgets

from ..export import write_html
from ._base import LiveWidget
from .jobs import SharedJobs, start_worker
from .curve import CurveWidget
from .spectrum import SpectrumWidget
from .surface import SurfaceWidget
from .trajectory import TrajectoryWidget

MIN_COLUMN_PX = 340  # two columns from ~700 px on; a side panel (~350-500 px) gets one


class Dashboard(ipywidgets.GridBox):
    """Every view of ``ls`` in one layout.

    ``start`` (a state_dict or module, e.g. the initialization) gives the interpolation curve start -> model;
    without it the curve is a random line.  ``trajectory`` (an ``lw.Trajectory`` or a list) adds the trajectory
    embedding; ``spectrum=False`` leaves out the Hessian spectrum (``spectrum_options`` go to ``SpectrumWidget``,
    which follows the surface).  The random plane's trust panel is under the plane, with or without a spectrum;
    the spectrum view marks the plane's curvatures on its density and repeats that same panel (the same numbers),
    and its own ``tr(H)/N``, from more products, is labelled with its estimator and products like the panel's.
    ``w.views`` lists the widgets (``w.curve``, ``w.surface``, ``w.spectrum``, ``w.trajectory``, ``w.pca_surface``
    -- the PCA plane with the path drawn, for one trajectory; None where absent).  One engine: every computation
    of every view, the first ones included, runs in one worker thread, one job after another, so the views do not
    fight over the CPU.
    """

    def __init__(self, ls, *, trajectory=None, start=None, resolution=21, spectrum=True, title=None,
                 trajectory_options=None, spectrum_options=None):
        if title is not None and not isinstance(title, str):
            raise TypeError(f"title must be a string or None, got {type(title).__name__}")
        self.title = title or "landscape_widgets dashboard"
        # one engine: every job of every view, the first ones included, runs in one worker thread, one after another,
        # so the views never fight over the CPU (a dashboard that computed its first four results at once did)
        self._jobs = start_worker(self)
        jobs = SharedJobs(self._jobs)
        self.curve = CurveWidget(ls, start, title="Interpolation: start → model" if start is not None
                                 else "Random line through the model", jobs=jobs)
        # the trust panel stays under its plane, as everywhere else
        self.surface = SurfaceWidget(ls, resolution=resolution, title="Filter-normalized random plane", jobs=jobs)
        # the spectrum follows the surface and shows the plane's own panel (the same numbers): one value of
        # kappa, lambda_max, lambda_min and the panel's tr(H)/N per page
        self.spectrum = (SpectrumWidget(ls, surface=self.surface, title="Hessian spectrum", jobs=jobs,
                                        **(spectrum_options or {})) if spectrum else None)
        self.trajectory = (TrajectoryWidget(trajectory, title="Optimization path", jobs=jobs,
                                            **(trajectory_options or {})) if trajectory is not None else None)
        # with one recorded run: the plane of its two principal directions, with the path drawn (Li et al. §7)
        single = trajectory if not isinstance(trajectory, (list, tuple)) else (
            trajectory[0] if len(trajectory) == 1 else None)
        self.pca_surface = (SurfaceWidget(ls, directions="pca", trajectory=single, resolution=resolution,
                                          title="PCA plane of the optimization path", jobs=jobs)
                            if single is not None else None)
        self.views = [w for w in (self.curve, self.surface, self.pca_surface, self.spectrum, self.trajectory)
                      if w is not None]
        super().__init__(children=self.views, layout=ipywidgets.Layout(
            grid_template_columns=f"repeat(auto-fit, minmax({MIN_COLUMN_PX}px, 1fr))", grid_gap="12px",
            width="100%"))

    def wait(self, timeout=None) -> "Dashboard":
        """Block until every view's latest computation has finished."""
        for w in self.views:
            w.wait(timeout)
        return self

    @property
    def error(self) -> str:
        """The views' error messages, "" when all computed."""
        return "; ".join(f"{w.title}: {w.error}" for w in self.views if isinstance(w, LiveWidget) and w.error)

    def to_html(self, path, *, title=None, info=None) -> str:
        """One self-contained offline page with every view (see :mod:`landscape_widgets.export`)."""
        return write_html(path, self.views, title=title or self.title, info=info)

    def close(self):
        for w in getattr(self, "views", ()):  # close() also runs from __del__ after a failed __init__
            w.close()
        if getattr(self, "_jobs", None) is not None:
            self._jobs.put(None)
            self._jobs = None
        super().close()
