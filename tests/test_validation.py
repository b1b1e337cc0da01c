"""Bad input gets a clear error that names the argument, and nothing changes."""
import numpy as np
import pytest
import torch
from torch import nn

import landscape_widgets as lw
from helpers import SmallNet, assert_same, small_data, snapshot

CE = nn.CrossEntropyLoss()


@pytest.fixture
def ls_and_snap():
    model = SmallNet()
    snap = snapshot(model)
    yield lw.Landscape(model, CE, small_data()), model, snap
    assert_same(model, snap)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(normalization="filtre"), ValueError, "normalization='filtre'.*'filter'"),
    (dict(directions="randm"), ValueError, "directions='randm' is not a known direction kind"),
    (dict(ignore="bias"), ValueError, "ignore='bias'"),
    (dict(resolution=1), ValueError, "resolution=1 is out of range"),
    (dict(resolution=(5, 0)), ValueError, "resolution=0"),
    (dict(resolution="big"), TypeError, "resolution must be an int"),
    (dict(resolution=2.5), TypeError, "resolution must be an int"),
    (dict(span=0), ValueError, "span=0 must be > 0"),
    (dict(span=-1.0), ValueError, "must be > 0"),
    (dict(span=float("nan")), ValueError, "finite"),
    (dict(span=((1.0, -1.0), (-1.0, 1.0))), ValueError, "reversed"),
    (dict(span=((0.0, 1.0),)), ValueError, "span must be"),
    (dict(seed=-1), ValueError, "seed=-1"),
    (dict(seed="a"), TypeError, "seed must be an int"),
])
def test_plane_bad_arguments(ls_and_snap, kwargs, exc, match):
    ls, _, _ = ls_and_snap
    with pytest.raises(exc, match=match):
        ls.plane(progress=False, **kwargs)


def test_explicit_direction_errors(ls_and_snap):
    ls, model, _ = ls_and_snap
    good = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    missing = dict(good)
    missing.pop("fc1.weight")
    with pytest.raises(ValueError, match=r"directions\[0\] lacks .*fc1.weight"):
        ls.plane(directions=(missing, good), progress=False)
    extra = dict(good, **{"fc9.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"directions\[1\] has tensor\(s\) for unknown parameter\(s\) \['fc9.weight'\]"):
        ls.plane(directions=(good, extra), progress=False)
    wrong = dict(good, **{"fc2.weight": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match=r"\['fc2.weight'\] has shape \(3, 3\); parameter 'fc2.weight' has shape \(4, 7\)"):
        ls.plane(directions=(good, wrong), progress=False)
    with pytest.raises(TypeError, match="a pair"):
        ls.plane(directions=(good,), progress=False)
    with pytest.raises(ValueError, match="NaN"):
        ls.plane(directions=(good, dict(good, **{"fc2.bias": torch.full((4,), float("nan"))})), progress=False)


def test_line_and_interpolate_errors(ls_and_snap):
    ls, model, _ = ls_and_snap
    with pytest.raises(ValueError, match="steps=1"):
        ls.line(steps=1, progress=False)
    with pytest.raises(ValueError, match="reversed"):
        ls.line(span=(1.0, 0.0), progress=False)
    with pytest.raises(ValueError, match="buffers='states'"):
        ls.interpolate(SmallNet(1), buffers="states", progress=False)
    with pytest.raises(ValueError, match="span must be a pair"):
        ls.interpolate(SmallNet(1), span=1.0, progress=False)
    sd = SmallNet(1).state_dict()
    sd.pop("bn.running_mean")
    with pytest.raises(ValueError, match="buffers='model'"):
        ls.interpolate(sd, progress=False)
    with pytest.raises(ValueError, match="does not have"):
        ls.interpolate(dict(SmallNet(1).state_dict(), extra=torch.zeros(1)), progress=False)
    with pytest.raises(TypeError, match="start must be a module"):
        ls.interpolate([1, 2], progress=False)


def test_constructor_errors():
    x, y = small_data()
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        lw.Landscape(lambda t: t, CE, (x, y))
    with pytest.raises(ValueError, match="no floating-point parameters"):
        lw.Landscape(nn.ReLU(), CE, (x, y))
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        lw.Landscape(SmallNet(), "ce", (x, y))
    with pytest.raises(ValueError, match="data is empty"):
        lw.Landscape(SmallNet(), CE, (x[:0], y[:0]))
    with pytest.raises(ValueError, match="data is empty"):
        lw.Landscape(SmallNet(), CE, [])
    with pytest.raises(ValueError, match="same first dimension"):
        lw.Landscape(SmallNet(), CE, (x, y[:3]))
    with pytest.raises(TypeError, match="one-shot iterator"):
        lw.Landscape(SmallNet(), CE, ((x, y) for _ in range(2)))
    with pytest.raises(TypeError, match="data must be"):
        lw.Landscape(SmallNet(), CE, 42)
    with pytest.raises(ValueError, match="device='tpu9'"):
        lw.Landscape(SmallNet(), CE, (x, y), device="tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            lw.Landscape(SmallNet(), CE, (x, y), device="cuda")


def test_non_scalar_loss_and_empty_loader():
    model = SmallNet()
    snap = snapshot(model)
    x, y = small_data()
    def per_sample(out, t):
        return nn.functional.cross_entropy(out, t, reduction="none")

    with pytest.raises(ValueError, match="loss_fn must return a scalar.*shape \\(40,\\)"):
        lw.Landscape(model, per_sample, (x, y)).plane(resolution=2, progress=False)
    with pytest.raises(ValueError, match=r"reduction='none'.*reduction='mean'"):  # a torch loss module: at once
        lw.Landscape(model, nn.CrossEntropyLoss(reduction="none"), (x, y))
    empty_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:0], y[:0]), batch_size=4)
    with pytest.raises(ValueError, match="data is empty"):
        lw.Landscape(model, CE, empty_loader)

    class NoLen:
        def __iter__(self):
            return iter([])

    with pytest.raises(ValueError, match="no samples"):
        lw.Landscape(model, CE, NoLen()).loss()
    assert_same(model, snap)


def test_loss_returning_python_float_and_dict_inputs():
    class DictNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, a, b):
            return self.lin(a + b)

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 3, generator=gen), torch.randn(6, 3, generator=gen)
    y = torch.randint(0, 2, (6,), generator=gen)
    model = DictNet()
    ref = float(CE(model(a, b), y))
    assert lw.Landscape(model, CE, [({"a": a, "b": b}, y)]).loss() == pytest.approx(ref, rel=1e-6)
    assert lw.Landscape(model, CE, [((a, b), y)]).loss() == pytest.approx(ref, rel=1e-6)
    assert lw.Landscape(model, lambda o, t: float(CE(o, t)), [((a, b), y)]).loss() == pytest.approx(ref, rel=1e-6)
    assert np.isfinite(ref)
