"""Live Jupyter widgets (anywidget + plotly.js): ``SurfaceWidget`` and ``CurveWidget``."""
from .curve import CurveWidget
from .surface import SurfaceWidget
from .trajectory import TrajectoryWidget

__all__ = ["CurveWidget", "SurfaceWidget", "TrajectoryWidget"]
