"""The checks of a Landscape's first evaluation: data that differ between passes (random augmentation, a shuffled
DataLoader with drop_last) warn once with ``lw.DataChangesWarning``, and ``lw.freeze`` reads them once; a loss that
is no mean over the batch's samples is an error (a torch loss module) or warns (``lw.LossReductionWarning``)."""
import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import landscape_widgets as lw


def _gen(seed):
    return torch.Generator().manual_seed(seed)


class Counted(nn.Module):
    """A small MLP that counts its forward calls (the private copy shares the class counter)."""
    calls = 0

    def __init__(self, seed=0):
        super().__init__()
        self.fc1 = nn.Linear(5, 8)
        self.fc2 = nn.Linear(8, 3)
        g = _gen(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=g))

    def forward(self, x):
        type(self).calls += 1
        return self.fc2(torch.tanh(self.fc1(x)))


def counted(fn):
    """How many forwards ``fn()`` runs, and what it returns."""
    before = Counted.calls
    out = fn()
    return Counted.calls - before, out


def tensors(n=40, seed=1):
    g = _gen(seed)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


class Augmented(torch.utils.data.Dataset):
    """Samples with noise added at every read, from NumPy's, Python's or torch's global RNG (as augmentation
    pipelines draw in the main process)."""

    def __init__(self, rng="numpy", n=40):
        self.x, self.y = tensors(n)
        self.rng = rng

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        if self.rng == "numpy":
            noise = torch.from_numpy(np.random.normal(0.0, 0.5, 5).astype(np.float32))
        elif self.rng == "python":
            noise = torch.tensor([random.gauss(0.0, 0.5) for _ in range(5)])
        else:
            noise = 0.5 * torch.randn(5)
        return self.x[i] + noise, self.y[i]


def loader(dataset=None, **kw):
    return torch.utils.data.DataLoader(dataset if dataset is not None else torch.utils.data.TensorDataset(*tensors()),
                                       batch_size=kw.pop("batch_size", 8), **kw)


def rng_states():
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def assert_rng_states(before):
    torch_state, np_state, py_state = before
    assert torch.equal(torch_state, torch.get_rng_state()), "torch's global RNG changed"
    now = np.random.get_state()
    assert np_state[0] == now[0] and np.array_equal(np_state[1], now[1]) and np_state[2:] == now[2:], \
        "NumPy's global RNG changed"
    assert py_state == random.getstate(), "Python's global RNG changed"


@pytest.fixture
def no_data_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", lw.DataChangesWarning)
        warnings.simplefilter("error", lw.LossReductionWarning)
        yield


def landscape(data, loss_fn=None, **kw):
    return lw.Landscape(Counted(), nn.CrossEntropyLoss() if loss_fn is None else loss_fn, data, device="cpu", **kw)


# -- data that change between passes ------------------------------------------------------------------------------
@pytest.mark.parametrize("rng", ["numpy", "python", "torch"])
def test_augmented_dataset_warns_from_loss(rng):
    ls = landscape(loader(Augmented(rng)))
    with pytest.warns(lw.DataChangesWarning, match=r"(?s)differ between passes.*lw\.freeze"):
        ls.loss()
    with warnings.catch_warnings():
        warnings.simplefilter("error", lw.DataChangesWarning)  # once per Landscape
        ls.loss()
        ls.line(steps=3, progress=False)


def test_augmented_dataset_warns_from_plane_once():
    ls = landscape(loader(Augmented()))
    with pytest.warns(lw.DataChangesWarning) as record:
        ls.plane(resolution=3, progress=False)
    assert len([w for w in record if issubclass(w.category, lw.DataChangesWarning)]) == 1
    msg = str(next(w.message for w in record if issubclass(w.category, lw.DataChangesWarning)))
    assert len([t for t in msg.split() if t[:1].isdigit() and "." in t]) >= 2, msg  # both values


def test_plane_without_the_origin_warns():
    with pytest.warns(lw.DataChangesWarning, match="at the same point"):
        landscape(loader(Augmented())).plane(resolution=2, progress=False)


class Passes:
    """Batches behind an iterable that counts its passes (not in memory as far as the library can tell)."""

    def __init__(self, batches):
        self.batches = batches
        self.count = 0

    def __iter__(self):
        self.count += 1
        return iter(self.batches)


def passes(data, fn):
    before = data.count
    fn()
    return data.count - before


@pytest.mark.parametrize("call", ["loss", "plane", "plane_even", "interpolate", "line_even"])
def test_the_check_costs_one_pass(call, no_data_warning):
    """The first computation reads the data once more than the same computation after it, also where its grid
    lacks the model's weights (the check then evaluates the grid's first point again)."""
    data = Passes(list(loader()))
    ls = landscape(data)
    start = Counted(seed=3)
    run = {"loss": ls.loss,
           "plane": lambda: ls.plane(resolution=3, progress=False, evaluator="loop"),
           "plane_even": lambda: ls.plane(resolution=2, progress=False, evaluator="loop"),
           "interpolate": lambda: ls.interpolate(start, steps=4, progress=False, evaluator="loop"),
           "line_even": lambda: ls.line(steps=4, progress=False, evaluator="loop")}[call]
    first = passes(data, run)
    assert first == passes(data, run) + 1


def test_every_pass_of_one_call_reads_the_same_augmentation():
    """The global RNGs are restored around every pass: a plane's tiles (and the loss) see the same draws."""
    ls = landscape(loader(Augmented()))
    with pytest.warns(lw.DataChangesWarning):
        center = ls.loss()
    surf = ls.plane(resolution=3, progress=False)
    assert surf.losses[1, 1] == pytest.approx(center, rel=1e-12)
    assert ls.loss() == center


def test_freeze_repeats_exactly_without_warning(no_data_warning):
    before = rng_states()
    data = lw.freeze(loader(Augmented(), shuffle=True))
    assert_rng_states(before)
    assert len(data) == 5 and all(isinstance(b, (tuple, list)) and len(b) == 2 for b in data)
    ls = landscape(data)
    calls, first = counted(ls.loss)
    assert calls == 5  # in memory: no extra pass
    assert ls.loss() == first
    surf = ls.plane(resolution=3, progress=False)
    assert surf.losses[1, 1] == first
    # the same batches whatever the caller's random state, for a given seed; another seed draws others
    np.random.seed(123)
    torch.manual_seed(5)
    again = lw.freeze(loader(Augmented(), shuffle=True))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(data, again))
    other = lw.freeze(loader(Augmented(), shuffle=True), seed=1)
    assert not torch.equal(other[0][0], data[0][0])


def test_freeze_keeps_the_loaders_own_generator_and_a_subset():
    g = _gen(3)
    src = loader(Augmented(), shuffle=True, generator=g)
    state = g.get_state()
    before = rng_states()
    sub = lw.freeze(src, samples=12)
    assert_rng_states(before)
    assert torch.equal(g.get_state(), state)
    assert [len(b[1]) for b in sub] == [8, 8]  # whole batches until they hold 12 samples
    ls = landscape(sub)
    assert ls.data.describe()["num_samples"] is None or ls.data.describe()["num_samples"] == 16
    ls.loss()
    assert ls.data.describe()["num_samples"] == 16


def test_freeze_dict_and_tuple_batches_and_one_shot_iterators(no_data_warning):
    x, y = tensors()
    w = torch.rand(40, generator=_gen(4)) + 0.1
    dicts = lw.freeze({"x": x[i:i + 10], "y": y[i:i + 10]} for i in range(0, 40, 10))  # a generator: read once
    assert len(dicts) == 4 and list(dicts) == list(dicts)

    def dict_loss(m, b):
        return F.cross_entropy(m(b["x"]), b["y"])

    got = lw.Landscape(Counted(), data=dicts, batch_loss=dict_loss, device="cpu").loss()
    with torch.no_grad():
        assert got == pytest.approx(float(F.cross_entropy(Counted()(x), y)), rel=1e-6)
    triples = lw.freeze([(x[:20], y[:20], w[:20]), (x[20:], y[20:], w[20:])], samples=15)
    assert len(triples) == 1 and len(triples[0]) == 3
    one = lw.freeze((x, y), samples=10, seed=2)  # one batch: a fixed random subset of it, same structure
    assert isinstance(one, tuple) and one[0].shape == (10, 5) and torch.equal(one[1], lw.freeze((x, y), 10, 2)[1])
    assert lw.freeze((x, y)) is not None and lw.freeze((x, y))[0] is x
    with pytest.raises(ValueError, match="samples"):
        lw.freeze(loader(), samples=0)


@pytest.mark.parametrize("own_generator", [False, True])
def test_shuffled_drop_last_loader_warns(own_generator):
    kw = {"generator": _gen(0)} if own_generator else {}
    ds = torch.utils.data.TensorDataset(*tensors(45))  # 5 batches of 8, 5 samples dropped: which depends on the shuffle
    ls = landscape(loader(ds, shuffle=True, drop_last=True, **kw))
    with pytest.warns(lw.DataChangesWarning, match="drop_last"):
        ls.loss()


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("own_generator", [False, True])
def test_plain_loaders_do_not_warn_and_check_once_with_one_pass(shuffle, own_generator, no_data_warning):
    kw = {"generator": _gen(0)} if own_generator else {}
    ds = torch.utils.data.TensorDataset(*tensors(45))  # 6 batches, the last of 5 samples
    ls = landscape(loader(ds, shuffle=shuffle, **kw))
    first_calls, first = counted(ls.loss)
    calls, again = counted(ls.loss)
    assert calls == 6 and first_calls == 2 * calls  # the check: exactly one extra pass, on the first call
    assert again == pytest.approx(first, rel=1e-6)
    calls, _ = counted(lambda: ls.line(steps=3, progress=False, evaluator="loop"))  # checked: no pass more
    batches = landscape(list(loader(ds)))
    assert calls == counted(lambda: batches.line(steps=3, progress=False, evaluator="loop"))[0]


def test_plane_checks_with_one_extra_pass(no_data_warning):
    """The plane's own value at the model's weights is one of the two passes compared."""
    batches = list(loader())
    frozen = counted(lambda: landscape(batches).plane(resolution=3, progress=False, evaluator="loop"))
    streamed = counted(lambda: landscape(loader()).plane(resolution=3, progress=False, evaluator="loop"))
    assert streamed[0] - frozen[0] == len(batches)
    np.testing.assert_allclose(streamed[1].losses, frozen[1].losses, rtol=1e-12)


def test_in_memory_tensors_never_pass_again(no_data_warning):
    x, y = tensors()
    for data in ((x, y), [(x[:20], y[:20]), (x[20:], y[20:])]):
        ls = landscape(data)
        first, value = counted(ls.loss)
        again, _ = counted(ls.loss)
        assert first == again, data.__class__
        assert ls.loss() == value


def test_check_leaves_the_global_rng_untouched():
    ls = landscape(loader(Augmented(), shuffle=True))
    before = rng_states()
    with pytest.warns(lw.DataChangesWarning):
        ls.loss()
    ls.plane(resolution=3, progress=False)
    assert_rng_states(before)


def test_spectrum_checks_the_data():
    ds = torch.utils.data.TensorDataset(*tensors(45))
    ls = landscape(loader(ds, shuffle=True, drop_last=True, generator=_gen(1)))
    with pytest.warns(lw.DataChangesWarning):
        ls.spectrum(k=1, bottom=0, density=False, trace=False, progress=False)


# -- the loss's scale ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss_fn", [nn.CrossEntropyLoss(reduction="sum"), nn.MSELoss(reduction="sum"),
                                     nn.NLLLoss(reduction="none")])
def test_sum_reduced_loss_module_is_an_error(loss_fn):
    with pytest.raises(ValueError, match=r"(?s)reduction='(sum|none)'.*mean over its samples.*reduction='mean'"):
        landscape(tensors(), loss_fn)


def test_mean_reduced_loss_modules_are_fine(no_data_warning):
    x, y = tensors()
    landscape((x, y), nn.CrossEntropyLoss()).loss()
    kl = nn.KLDivLoss(reduction="batchmean")
    landscape((x, F.softmax(torch.randn(40, 3, generator=_gen(2)), -1)),
              lambda out, t: kl(F.log_softmax(out, -1), t)).loss()


@pytest.mark.parametrize("kind", ["loss_fn", "batch_loss", "loader"])
def test_sum_callable_warns_once(kind):
    x, y = tensors()

    def summed(out, t):
        return F.cross_entropy(out, t, reduction="sum")

    if kind == "loss_fn":
        ls = landscape((x, y), summed)
    elif kind == "loader":
        ls = landscape(loader(), summed)
    else:
        ls = lw.Landscape(Counted(), data=(x, y), batch_loss=lambda m, b: summed(m(b[0]), b[1]), device="cpu")
    with pytest.warns(lw.LossReductionWarning, match=r"(?s)mean over the batch's samples.*sample-weighted mean"):
        ls.loss()
    with warnings.catch_warnings():
        warnings.simplefilter("error", lw.LossReductionWarning)
        ls.plane(resolution=3, progress=False)


def test_mean_and_regularized_callables_do_not_warn(no_data_warning):
    x, y = tensors()
    landscape((x, y), lambda out, t: F.cross_entropy(out, t)).loss()
    landscape(loader(), lambda out, t: F.cross_entropy(out, t)).loss()

    def ce_l2(m, b):
        return F.cross_entropy(m(b[0]), b[1]) + 0.05 * sum(p.pow(2).sum() for p in m.parameters())

    lw.Landscape(Counted(), data=(x, y), batch_loss=ce_l2, device="cpu").loss()
    lw.Landscape(Counted(), data=[(x[:7], y[:7]), (x[7:], y[7:])], batch_loss=ce_l2, device="cpu").loss()

    def token_mean(out, t):  # a mean over equal-length "tokens": the per-sample mean too
        return F.cross_entropy(out.repeat(3, 1), t.repeat(3))

    landscape((x, y), token_mean).loss()
    landscape((x[:1], y[:1]), lambda out, t: F.cross_entropy(out, t, reduction="sum")).loss()  # one sample: no test
