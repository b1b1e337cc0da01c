"""The main job on the embedded default: train the digits MLP while recording its trajectory, then write one offline
page with the :class:`~landscape_widgets.widgets.Dashboard`'s export: the interpolation from its initialization to
the trained weights, a filter-normalized random plane, the PCA plane of the path with the path drawn, the Hessian
spectrum with the trust panel, and the trajectory embedding."""
from __future__ import annotations

import contextlib
import copy
import time

import torch

from . import examples
from .landscape import Landscape


def run_demo(out, *, resolution=41, epochs=30, seed=0, progress=True):
    from .trajectory import Trajectory
    from .widgets import Dashboard
    from .widgets._base import status_log

    t0 = time.perf_counter()
    say = print if progress else (lambda *a, **k: None)
    data = examples.digits()
    model = examples.digits_mlp(seed=seed)
    start = copy.deepcopy(model.state_dict())
    traj = Trajectory()
    traj.record(model)
    say(f"training the digits MLP for {epochs} epochs (recording the trajectory)")
    history = examples.train(model, data, epochs=epochs, seed=seed, trajectory=traj)
    ls = Landscape(model, torch.nn.CrossEntropyLoss(), data, device="cpu")
    say(f"dashboard: curve, {resolution}x{resolution} random and PCA planes, Hessian spectrum, embedding")
    # a PCA plane and an embedding need at least 3 snapshots
    log = (lambda w, status: say(f"  [{time.perf_counter() - t0:6.1f} s] {w.title or w._view}: {status}",
                                 flush=True)) if progress else None
    with status_log(log) if log else contextlib.nullcontext():
        dash = Dashboard(ls, trajectory=traj if len(traj) >= 3 else None, start=start, resolution=resolution,
                         title="landscape_widgets demo", spectrum_options={"runs": 3})
    dash.wait(timeout=1800)
    if dash.error:
        raise RuntimeError(f"demo computation failed: {dash.error}")
    info = (f"sklearn digits ({data[0].shape[0]} samples), MLP trained {epochs} epochs "
            f"(train loss {history[-1]:.4f}); {time.perf_counter() - t0:.1f} s on {ls.device}")
    path = dash.to_html(out, info=info)
    dash.close()
    return path
