"""Small models (a few hundred parameters, with biases and an eval-mode BatchNorm) and their exact Hessians,
shared by tests/test_hessian.py and tests/test_hessian_directions.py."""
import copy

import numpy as np
import torch
from torch import nn
from torch.func import functional_call


def _randomize(model, seed, scale):
    """Random weights (private generator) and BatchNorm running statistics away from (0, 1); eval mode."""
    gen = torch.Generator().manual_seed(seed)
    bn = model[1]
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale)
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen, dtype=torch.float64) * 0.3)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=gen, dtype=torch.float64) + 0.5)
    return model.eval()


def small_mlp(dtype=torch.float64, seed=0):
    """Linear(6, 12) - BatchNorm1d(12) - Tanh - Linear(12, 4): 160 parameters."""
    model = nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.Tanh(), nn.Linear(12, 4)).to(dtype)
    return _randomize(model, seed, 0.7)


def small_cnn(dtype=torch.float64, seed=0):
    """Conv(1->4, 3x3) - BatchNorm2d - Softplus - Flatten - Linear(64, 3): 243 parameters on 1x4x4 inputs."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Softplus(), nn.Flatten(),
                          nn.Linear(64, 3)).to(dtype)
    return _randomize(model, seed, 0.5)


def classification_data(model, n=50, seed=1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    shape = (n, 6) if isinstance(model[0], nn.Linear) else (n, 1, 4, 4)
    classes = model[-1].out_features
    x = torch.randn(shape, generator=gen, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=gen)
    return x, y


def dense_hessian(model, loss_fn, x, y):
    """The exact Hessian over the flattened parameters in float64: torch.autograd.functional.hessian of the
    loss through functional_call, independent of the library's code."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [int(np.prod(s)) for s in shapes]
    m64 = copy.deepcopy(model).double().eval()
    flat0 = torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])

    def f(flat):
        params = {n: t.view(s) for n, t, s in zip(names, torch.split(flat, sizes), shapes)}
        return loss_fn(functional_call(m64, params, (x.double(),)), y)

    return torch.autograd.functional.hessian(f, flat0, vectorize=True).numpy()


def flat(d, model):
    return np.concatenate([d[n].detach().double().reshape(-1).numpy() for n, _ in model.named_parameters()])
