"""Shared fixtures data for the trajectory tests: a small digits MLP trained a few epochs, recorded every epoch."""
import torch

from landscape_widgets import Trajectory, examples


def trained(epochs=8, seed=0, n=400, lr=0.05, **traj_options):
    x, y = examples.digits()
    x, y = x[:n], y[:n]
    model = examples.digits_mlp(seed=seed)
    traj = Trajectory(**traj_options)
    traj.record(model)
    examples.train(model, (x, y), epochs=epochs, lr=lr, seed=seed, trajectory=traj)
    return model, traj, (x, y)


def snapshot(model):
    """Everything the user could observe about a model: weights, buffers, flags, bitwise."""
    return ({n: p.detach().clone() for n, p in model.named_parameters()},
            {n: b.clone() for n, b in model.named_buffers()},
            model.training, [p.requires_grad for p in model.parameters()])


def same(a, b):
    return (a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])
            and all(torch.equal(a[1][k], b[1][k]) for k in a[1]) and a[2:] == b[2:])
