"""The main job on the embedded default: train the digits MLP, then write one offline page with the live widgets'
export: the interpolation from its initialization to the trained weights (a CurveWidget) and a filter-normalized
random plane around the trained weights (a SurfaceWidget)."""
from __future__ import annotations

import copy
import time

import torch

from . import examples
from .landscape import Landscape


def run_demo(out, *, resolution=41, epochs=30, seed=0, progress=True):
    from .export import write_html
    from .widgets import CurveWidget, SurfaceWidget

    t0 = time.perf_counter()
    say = print if progress else (lambda *a, **k: None)
    data = examples.digits()
    model = examples.digits_mlp(seed=seed)
    start = copy.deepcopy(model.state_dict())
    say(f"training the digits MLP for {epochs} epochs")
    history = examples.train(model, data, epochs=epochs, seed=seed)
    ls = Landscape(model, torch.nn.CrossEntropyLoss(), data, device="cpu")
    say("interpolation init -> trained")
    curve = CurveWidget(ls, start, steps=81, span=(-0.5, 1.5), title="Interpolation: initialization → trained")
    say(f"random plane {resolution}x{resolution}")
    surface = SurfaceWidget(ls, resolution=resolution, seed=seed, title="Filter-normalized random plane")
    for w in (curve, surface):
        if w.error:
            raise RuntimeError(f"demo computation failed: {w.error}")
    info = (f"sklearn digits ({data[0].shape[0]} samples), MLP trained {epochs} epochs "
            f"(train loss {history[-1]:.4f}); {time.perf_counter() - t0:.1f} s on {ls.device}")
    return write_html(out, [curve, surface], title="landscape_widgets demo", info=info)
