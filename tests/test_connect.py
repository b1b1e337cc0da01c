"""Mode connectivity (Garipov et al. 2018): the Bézier curve's losses against explicit functional_call arithmetic with
the returned bend, its ends, the straight line beside it, training the bend (reproducible, private RNG, lowers the
loss along the curve), BatchNorm statistics, and bad input."""
import copy
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import landscape_widgets as lw
from helpers import SmallNet, assert_same, small_data, snapshot
from landscape_widgets import connect as connect_mod

CE = nn.CrossEntropyLoss()
RTOL, ATOL = 1e-5, 1e-6


pytestmark = pytest.mark.usefixtures("one_thread")


def xor_data(n=200, seed=0):
    """Four Gaussian blobs, opposite corners one class: a small task two nets solve in different ways."""
    g = torch.Generator().manual_seed(seed)
    corner = torch.randint(0, 4, (n,), generator=g)
    centres = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
    return centres[corner] + 0.35 * torch.randn(n, 2, generator=g), (corner >= 2).long()


def mlp(seed):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))


@pytest.fixture(scope="module")
def two_minima():
    """Two MLPs trained to near-zero loss from different seeds: the straight line between them has a barrier."""
    with torch.random.fork_rng(devices=[]):
        torch.set_num_threads(1)
        x, y = xor_data()
        nets = []
        for seed in (1, 2):
            net = mlp(seed)
            opt = torch.optim.Adam(net.parameters(), lr=0.05)
            for _ in range(150):
                opt.zero_grad()
                F.cross_entropy(net(x), y).backward()
                opt.step()
            nets.append(net.eval())
    return nets[0], nets[1], (x, y)


def loss_at(model, state, x, y):
    m = copy.deepcopy(model).eval()
    with torch.no_grad():
        return float(F.cross_entropy(functional_call(m, {n: t.float() for n, t in state.items()}, (x,)), y))


def params64(model):
    return {n: p.detach().double() for n, p in model.named_parameters()}


def bezier(t, a, bend, b):
    return {n: (1 - t) ** 2 * a[n] + 2 * t * (1 - t) * bend[n].double() + t ** 2 * b[n] for n in a}


def test_trained_bend_removes_the_barrier_reproducibly_with_private_rng(two_minima):
    a, b, (x, y) = two_minima
    ls = lw.Landscape(a, CE, (x, y))
    snaps = [snapshot(m) for m in (a, b)]
    rng = torch.get_rng_state()
    curve = ls.connect(b, epochs=30, batch_size=32, seed=0, steps=11, progress=False)
    assert torch.equal(rng, torch.get_rng_state())
    for m, s in zip((a, b), snaps):
        assert_same(m, s)
    again = ls.connect(b, epochs=30, batch_size=32, seed=0, steps=11, progress=False)
    for n in curve.bend:
        assert torch.equal(curve.bend[n], again.bend[n]), n
    np.testing.assert_array_equal(curve.losses, again.losses)
    other = ls.connect(b, epochs=2, batch_size=32, seed=1, steps=11, progress=False)
    assert not all(torch.equal(curve.bend[n], other.bend[n]) for n in curve.bend)

    pa, pb = params64(a), params64(b)
    ts = np.linspace(0, 1, 11)
    np.testing.assert_array_equal(curve.alphas, ts)
    hand = np.array([loss_at(a, bezier(t, pa, curve.bend, pb), x, y) for t in ts])
    line = np.array([loss_at(a, {n: (1 - t) * pa[n] + t * pb[n] for n in pa}, x, y) for t in ts])
    np.testing.assert_allclose(curve.losses, hand, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(curve.meta["line_losses"], line, rtol=RTOL, atol=ATOL)
    with torch.no_grad():
        ends = [float(F.cross_entropy(m(x), y)) for m in (a, b)]
    np.testing.assert_allclose(curve.losses[[0, -1]], ends, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.array(curve.meta["line_losses"])[[0, -1]], ends, rtol=RTOL, atol=ATOL)
    # the barriers by hand: the largest loss on the path minus the mean of its ends
    assert curve.meta["barrier"] == pytest.approx(hand.max() - np.mean(ends), rel=1e-4, abs=1e-6)
    assert curve.meta["line_barrier"] == pytest.approx(line.max() - np.mean(ends), rel=1e-4, abs=1e-6)
    assert curve.meta["line_barrier"] > 0.1  # the straight line crosses a ridge ...
    assert hand.mean() < line.mean() and curve.meta["barrier"] < curve.meta["line_barrier"] / 2  # ... the curve not
    training = curve.meta["bend_training"]
    assert curve.meta["bend"] == "trained" and training["optimizer"] == "sgd" and training["seed"] == 0
    assert training["steps"] == 30 * 7 and len(training["mean_loss_per_epoch"]) == 30  # 200 = 6 x 32 + 8
    assert curve.meta["buffers"] == "interpolate"  # no BatchNorm: nothing to recompute


def test_a_given_bend_is_used_as_given_without_training(two_minima, monkeypatch):
    a, b, (x, y) = two_minima
    bend = mlp(7)
    snaps = [snapshot(m) for m in (a, b, bend)]

    def no_training(*args, **kwargs):
        raise AssertionError("a given bend must not be trained")

    monkeypatch.setattr(connect_mod, "train_bend", no_training)
    ls = lw.Landscape(a, CE, (x, y))
    curve = ls.connect(b, bend=bend.state_dict(), steps=5, progress=False)
    assert curve.meta["bend"] == "given" and curve.meta["bend_training"] is None
    pa, pb, pbend = params64(a), params64(b), params64(bend)
    for t, v in zip(curve.alphas, curve.losses):
        assert v == pytest.approx(loss_at(a, bezier(t, pa, pbend, pb), x, y), rel=RTOL, abs=ATOL)
    for n in pbend:
        assert torch.equal(curve.bend[n], bend.state_dict()[n])
    np.testing.assert_array_equal(ls.connect(b, bend=bend, steps=5, progress=False).losses, curve.losses)
    np.testing.assert_array_equal(ls.connect(b, bend=curve.bend, steps=5, progress=False).losses, curve.losses)
    for m, s in zip((a, b, bend), snaps):
        assert_same(m, s)


def test_batchnorm_statistics_recomputed_or_interpolated_along_the_curve():
    model, b, bend = SmallNet(0), SmallNet(1), SmallNet(2)
    for m in (model, b, bend):
        m.train()
    x, y = small_data()
    ls = lw.Landscape(model, CE, (x, y))
    pa, pb, pbend = params64(model), params64(b), params64(bend)
    fresh = ls.connect(b, bend=bend, steps=3, progress=False)
    assert fresh.meta["buffers"] == "recompute"  # Garipov et al.'s choice for BatchNorm
    for t, v in zip(fresh.alphas, fresh.losses):
        ref = copy.deepcopy(model)
        with torch.no_grad():
            for n, p in ref.named_parameters():
                p.copy_(bezier(t, pa, pbend, pb)[n].float())
        torch.optim.swa_utils.update_bn([x], ref)
        ref.eval()
        with torch.no_grad():
            assert v == pytest.approx(float(F.cross_entropy(ref(x), y)), rel=RTOL, abs=ATOL)
    moved = ls.connect(b, bend=bend, steps=4, buffers="interpolate", progress=False)
    bufs = [{n: t.double() for n, t in m.named_buffers() if t.is_floating_point()} for m in (model, bend, b)]
    for t, v in zip(moved.alphas, moved.losses):
        buffers = bezier(t, bufs[0], {n: t_ for n, t_ in bufs[1].items()}, bufs[2])
        assert v == pytest.approx(loss_at(model, {**bezier(t, pa, pbend, pb), **buffers}, x, y), rel=RTOL, abs=ATOL)
    with torch.no_grad():
        own = [float(F.cross_entropy(copy.deepcopy(m).eval()(x), y)) for m in (model, b)]
    np.testing.assert_allclose(moved.losses[[0, -1]], own, rtol=RTOL)
    # a trained bend with interpolated statistics: the bend's are the midpoint's, returned with it
    trained = ls.connect(b, steps=3, epochs=2, buffers="interpolate", progress=False)
    mid = 0.5 * (bufs[0]["bn.running_mean"] + bufs[2]["bn.running_mean"])
    torch.testing.assert_close(trained.bend["bn.running_mean"].double(), mid, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(ls.connect(b, bend=trained.bend, steps=3, buffers="interpolate",
                                             progress=False).losses, trained.losses)


def test_adam_cancel_and_bad_input(two_minima):
    a, b, (x, y) = two_minima
    ls = lw.Landscape(a, CE, (x, y))
    snaps = [snapshot(m) for m in (a, b)]
    adam = ls.connect(b, optimizer="adam", lr=0.01, epochs=1, steps=3, progress=False)
    assert adam.meta["bend_training"]["optimizer"] == "adam" and "momentum" not in adam.meta["bend_training"]
    stop = threading.Event()
    stop.set()
    rng = torch.get_rng_state()
    with pytest.raises(lw.Cancelled):
        ls.connect(b, cancel=stop, progress=False)
    assert torch.equal(rng, torch.get_rng_state())
    wrong = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 3))
    cases = [(dict(model_b=copy.deepcopy(a)), ValueError, "model_b has the model's own weights"),
             (dict(model_b=wrong), ValueError, "has shape"),
             (dict(model_b=b, bend=wrong), ValueError, "has shape"),
             (dict(model_b=nn.Sequential(nn.Linear(2, 16))), ValueError, r"lacks 2 parameter\(s\)"),
             (dict(model_b=b, optimizer="lbfgs"), ValueError, "optimizer='lbfgs' is not known"),
             (dict(model_b=b, lr=0), ValueError, "lr must be a positive"),
             (dict(model_b=b, epochs=0), ValueError, "epochs=0 is out of range"),
             (dict(model_b=b, momentum=1.0), ValueError, "momentum must be"),
             (dict(model_b=b, buffers="fresh"), ValueError, "buffers='fresh' is not known"),
             (dict(model_b="b"), TypeError, "model_b must be a module")]
    for kw, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            ls.connect(progress=False, **kw)
    for m, s in zip((a, b), snaps):
        assert_same(m, s)


def test_huggingface_dict_batches_and_tied_embedding():
    from zoo import models as Z
    from zoo.reference import Reference, canonical

    case = Z.build("gpt2")
    b = Z.perturbed(case.model, 5, 0.05)
    snaps = [snapshot(m) for m in (case.model, b)]
    rng = torch.get_rng_state()
    curve = case.landscape().connect(b, epochs=3, batch_size=2, steps=3, progress=False)
    assert torch.equal(rng, torch.get_rng_state()) and curve.meta["bend_training"]["steps"] == 6
    assert "lm_head.weight" not in curve.bend  # tied to the embedding: moved once, under its first name
    ref = Reference(case)
    base = {n: p.detach().double() for n, p in canonical(case.model).items()}
    other = {n: p.detach().double() for n, p in canonical(b).items()}
    for t, v, w in zip(curve.alphas, curve.losses, curve.meta["line_losses"]):
        assert v == pytest.approx(ref.loss({n: t_.float() for n, t_ in bezier(t, base, curve.bend, other).items()}),
                                  rel=RTOL, abs=ATOL)
        assert w == pytest.approx(ref.loss({n: ((1 - t) * base[n] + t * other[n]).float() for n in base}),
                                  rel=RTOL, abs=ATOL)
    for m, s in zip((case.model, b), snaps):
        assert_same(m, s)
