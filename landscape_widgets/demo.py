"""The main job on the embedded default: train the digits MLP, compute an interpolation curve from its
initialization and a filter-normalized random plane around the trained weights, and write one offline page."""
from __future__ import annotations

import copy
import time

import torch

from . import examples
from .landscape import Landscape


def run_demo(out, *, resolution=41, epochs=30, seed=0, progress=True):
    t0 = time.perf_counter()
    data = examples.digits()
    model = examples.digits_mlp(seed=seed)
    start = copy.deepcopy(model.state_dict())
    history = examples.train(model, data, epochs=epochs, seed=seed)
    ls = Landscape(model, torch.nn.CrossEntropyLoss(), data, device="cpu")
    curve = ls.interpolate(start, steps=81, span=(-0.5, 1.5), progress=progress)
    surface = ls.plane(resolution=resolution, seed=seed, progress=progress)
    from .export import write_demo_page

    info = {"train_losses": history, "seconds": round(time.perf_counter() - t0, 2)}
    return write_demo_page(out, curve=curve, surface=surface, info=info)
