"""The embedded default: sklearn's digits (1,797 8x8 images, shipped with scikit-learn, no download), a small
MLP (64-128-128-10) and a small CNN, and a deterministic trainer.  Used by the demo, the tests and the benchmarks.
"""
from __future__ import annotations

import torch
from torch import nn


def digits(*, flat=True, dtype=torch.float32):
    """(inputs, targets) of sklearn's digits, scaled to [0, 1]; ``flat=False`` gives [N, 1, 8, 8] images."""
    from sklearn.datasets import load_digits

    ds = load_digits()
    x = torch.tensor(ds.data, dtype=dtype) / 16.0
    y = torch.tensor(ds.target, dtype=torch.long)
    if not flat:
        x = x.reshape(-1, 1, 8, 8)
    return x, y


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def _init(module, seed):
    """Deterministic initialization from a private generator (the global RNG is left alone)."""
    gen = _generator(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            else:
                p.zero_()
    return module


def digits_mlp(seed=0):
    """64-128-128-10 ReLU MLP."""
    with torch.random.fork_rng(devices=[]):  # nn.Linear's default init draws from the global RNG: give it back
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    return _init(model, seed)


def digits_cnn(seed=0):
    """A small CNN for 1x8x8 digits: conv(16)-BN-ReLU-conv(32)-ReLU-pool-linear(10)."""
    with torch.random.fork_rng(devices=[]):
        model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                              nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Flatten(), nn.Linear(32 * 4 * 4, 10))
    _init(model, seed)
    with torch.no_grad():
        model[1].weight.fill_(1.0)
    return model


def train(model, data, *, epochs=30, lr=0.05, batch_size=64, seed=0, trajectory=None, weight_decay=0.0):
    """Plain SGD with momentum, shuffled by a private generator; returns the per-epoch training losses.

    ``trajectory`` (anything with ``record(model, loss=...)``) is called after every epoch.
    """
    x, y = data
    gen = _generator(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    for _epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / len(x))
        if trajectory is not None:
            trajectory.record(model, loss=history[-1])
    model.eval()
    return history
