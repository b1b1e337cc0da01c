"""Live Jupyter widgets (anywidget + plotly.js): ``SurfaceWidget`` and ``CurveWidget``."""
from .curve import CurveWidget
from .spectrum import SpectrumWidget
from .surface import SurfaceWidget
from .trajectory import TrajectoryWidget
from .dashboard import Dashboard

__all__ = ["CurveWidget", "SpectrumWidget", "SurfaceWidget", "TrajectoryWidget", "Dashboard"]
