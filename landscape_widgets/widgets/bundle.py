"""The one front-end bundle and how each widget loads it: from a shared ``Bundle`` widget where the front end
resolves widget references (JupyterLab, Notebook 7), else carried by every widget (marimo, Colab)."""
from __future__ import annotations

import os
import sys

import anywidget
import traitlets as t

from ..export import STUB, bundle_source


class Bundle(anywidget.AnyWidget):
    """The front-end bundle, once per kernel.  In Jupyter each widget's ``_esm`` is a small loader that takes the
    bundle from this widget (a widget reference), so a notebook saved with its widget state stores the 1.8 MB
    bundle once however many widgets it shows."""

    _esm = t.Unicode("export default {};").tag(sync=True)
    source = t.Unicode("").tag(sync=True)


_BUNDLE = None


def shared_bundle() -> Bundle:
    global _BUNDLE
    if _BUNDLE is None or getattr(_BUNDLE, "comm", None) is None:  # first use, or closed
        _BUNDLE = Bundle(source=bundle_source())
    return _BUNDLE


def references_work() -> bool:
    """Whether each widget may load the bundle from the shared :class:`Bundle` (a widget reference, resolved by
    Jupyter's widget manager: JupyterLab, Notebook 7).  marimo renders each anywidget on its own and Colab's manager
    is its own: there, and with ``LANDSCAPE_WIDGETS_SHARED_BUNDLE=0``, every widget carries the whole bundle."""
    if os.environ.get("LANDSCAPE_WIDGETS_SHARED_BUNDLE", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if "google.colab" in sys.modules:
        return False
    marimo = sys.modules.get("marimo")
    try:
        return not (marimo is not None and marimo.running_in_notebook())
    except Exception:  # noqa: BLE001 -- an older marimo without the function: take the safe path
        return marimo is None


def esm_traits() -> dict:
    """The ``_esm`` (and ``_bundle``) a new widget starts with."""
    if references_work():
        return {"_esm": bundle_source(STUB), "_bundle": shared_bundle()}
    return {"_esm": bundle_source()}
