"""Shared test helpers: a small model with every layer kind, data, and independent references."""
import copy

import torch
from torch import nn


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def randomize(module, gen):
    """Weights N(0, 0.25) and the BatchNorm ``module.bn``'s running statistics away from (0, 1), from ``gen``."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        c = module.bn.num_features
        module.bn.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
        module.bn.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
    return module


class SmallNet(nn.Module):
    """Linear, Conv2d, BatchNorm and biases: every normalization branch is exercised."""

    def __init__(self, seed=0):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc1 = nn.Linear(3 * 6 * 6, 7)
        self.fc2 = nn.Linear(7, 4)
        randomize(self, _gen(seed))

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.fc2(torch.tanh(self.fc1(h.flatten(1))))


def small_data(n=40, seed=1):
    gen = _gen(seed)
    x = torch.randn(n, 1, 8, 8, generator=gen)
    y = torch.randint(0, 4, (n,), generator=gen)
    return x, y


def snapshot(model):
    return {
        "params": {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "modes": [m.training for m in model.modules()],
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
    }


def assert_same(model, snap):
    now = snapshot(model)
    for n, (t, rg) in snap["params"].items():
        t2, rg2 = now["params"][n]
        assert rg == rg2, n
        assert torch.equal(t, t2) and t.dtype == t2.dtype, n
    for n, t in snap["buffers"].items():
        assert torch.equal(t, now["buffers"][n]), n
    assert snap["modes"] == now["modes"]
    for n, g in snap["grads"].items():
        g2 = now["grads"][n]
        assert (g is None and g2 is None) or torch.equal(g, g2), n


def direct_loss(model, params, x, y, loss_fn=nn.functional.cross_entropy, buffers=None):
    """Independent reference: a fresh deep copy in eval mode with the given weights loaded."""
    m = copy.deepcopy(model).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(params[n])
        if buffers:
            for n, b in m.named_buffers():
                if n in buffers:
                    b.copy_(buffers[n])
        return float(loss_fn(m(x), y))


def moving(ls, private, dirs):
    """The moving tensors of ``dirs`` on ``private`` (the engine's :meth:`Plan.moving`)."""
    from landscape_widgets.engine import Plan
    return Plan("test", private, list(dirs), [[0.0] * len(dirs)], tile_size=1).moving()


def loop_evaluator(ls, private, dirs, **settings):
    """The per-point loop's run for ``dirs`` on ``private`` (``settings``: the loop executor's)."""
    from landscape_widgets.engine import Plan
    from landscape_widgets.loop import LoopExecutor
    plan = Plan("test", private, list(dirs), [[0.0] * len(dirs)], tile_size=1, evaluator="loop")
    return LoopExecutor(**settings).start(ls.problem, plan)


def auto_as_on_cuda(**settings):
    """evaluator="auto" as it resolves on CUDA (vmap with autotune), with the vmap evaluator's ``settings``."""
    from landscape_widgets.batched import VmapExecutor
    return VmapExecutor("auto", autotune=True, **settings)


def force_micro_batches(monkeypatch, samples):
    """Settings that force micro-batches on (any activation is 'large', chunks of ``samples``): ``.tuning`` (a
    :class:`~landscape_widgets.accelerations.Tuning`), ``.loop`` (a loop executor with it, for ``evaluator=``) and
    ``.plans``, every plan made (the chunks' sample counts, or None where a batch stayed whole)."""
    from types import SimpleNamespace

    from landscape_widgets import accelerations
    from landscape_widgets.loop import LoopExecutor
    tuning = accelerations.Tuning(micro_min_bytes=0, micro_bytes=1, micro_min_samples=samples)
    plans = []
    real = accelerations.plan_micro_batches

    def spy(*args, **kwargs):
        plan = real(*args, **kwargs)
        plans.append(None if plan is None else [n for _x, _y, n in plan])
        return plan

    monkeypatch.setattr(accelerations, "plan_micro_batches", spy)
    return SimpleNamespace(tuning=tuning, loop=LoopExecutor(tuning=tuning), plans=plans)


def f32(buf, shape=None):
    """A widget's float32 bytes as a numpy array (shaped when ``shape`` is given)."""
    import numpy as np
    a = np.frombuffer(bytes(buf), dtype="<f4")
    return a if shape is None else a.reshape(shape)
