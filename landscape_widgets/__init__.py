"""landscape_widgets: see and trust the loss landscape of a PyTorch model, live in Jupyter.

    import landscape_widgets as lw
    ls = lw.Landscape(model, loss_fn, (inputs, targets))
    surf = ls.plane(resolution=41)          # filter-normalized random plane (Li et al. 2018)
"""
from ._version import __version__  # noqa: E402
from .driver import Cancelled, Tile  # noqa: E402
from .landscape import Landscape  # noqa: E402
from .results import Curve, Surface, load  # noqa: E402
from .hessian import NonFiniteHessian, Spectrum  # noqa: E402
from .results import SeedSpread  # noqa: E402
from .results import CurvatureMap  # noqa: E402
from .trajectory import Trajectory  # noqa: E402
from .embedding import Embedding, embed  # noqa: E402
from .data import DataChangesWarning, freeze  # noqa: E402
from .objective import LossReductionWarning  # noqa: E402
from .executor import Executor  # noqa: E402

__all__ = ["CurvatureMap", "NonFiniteHessian", "SeedSpread", "Spectrum",
           "DataChangesWarning", "Executor", "LossReductionWarning", "freeze",
           "Cancelled", "Curve", "Embedding", "Landscape", "Surface", "Tile", "Trajectory", "embed", "load",
           "__version__"]
# imported on first use: anywidget/ipywidgets stay out of the import
_WIDGETS = ("CurveWidget", "SpectrumWidget", "SurfaceWidget", "TrajectoryWidget", "Dashboard")


def __getattr__(name):
    if name in _WIDGETS:
        from . import widgets
        return getattr(widgets, name)
    raise AttributeError(f"module 'landscape_widgets' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_WIDGETS))
