"""Live Jupyter widgets (anywidget + plotly.js): one module per view (``SurfaceWidget``, ``CurveWidget``,
``SpectrumWidget``, ``TrajectoryWidget``) and its JS file in js/src/views/, on the shared machinery of
:mod:`._base` (the LiveWidget), :mod:`.jobs`, :mod:`.controls`, :mod:`.status`, :mod:`.browser` and :mod:`.bundle`;
``Dashboard`` lays the views out together."""
from .curve import CurveWidget
from .spectrum import SpectrumWidget
from .surface import SurfaceWidget
from .trajectory import TrajectoryWidget
from .dashboard import Dashboard

__all__ = ["CurveWidget", "SpectrumWidget", "SurfaceWidget", "TrajectoryWidget", "Dashboard"]
