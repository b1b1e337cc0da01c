"""The boundary for users' own models: how the loss is computed, which parameters move, what ``start`` may be."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import landscape_widgets as lw
from landscape_widgets._model import PrivateModel, select_params, state_from, strip_prefixes
from landscape_widgets.data import DataSource

from helpers import assert_same, snapshot


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


class Tied(nn.Module):
    """An embedding tied to the output layer, as language models tie them."""

    def __init__(self):
        super().__init__()
        g = _gen(3)
        self.emb = nn.Embedding(11, 6)
        self.mid = nn.Linear(6, 6)
        self.out = nn.Linear(6, 11, bias=False)
        self.out.weight = self.emb.weight
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, ids):
        return self.out(torch.tanh(self.mid(self.emb(ids))))


class WithLoss(nn.Module):
    """Returns ``{"loss": ...}`` as HuggingFace models do when labels are in the batch."""

    def __init__(self, as_attr=False):
        super().__init__()
        self.net = nn.Linear(5, 3)
        self.as_attr = as_attr
        with torch.no_grad():
            self.net.weight.copy_(torch.randn(3, 5, generator=_gen(4)))

    def forward(self, x, labels=None):
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        if self.as_attr:
            return type("Out", (), out)()
        return out


def _xy(n=12, seed=1):
    g = _gen(seed)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


# -- how the loss is computed -----------------------------------------------------------------------------------
def test_loss_fn_and_batch_loss_together_is_an_error():
    with pytest.raises(ValueError, match="either loss_fn"):
        lw.Landscape(nn.Linear(5, 3), nn.CrossEntropyLoss(), _xy(), batch_loss=lambda m, b: m(b).sum())


def test_loss_fn_must_be_callable_and_says_the_other_ways():
    with pytest.raises(TypeError, match="loss_fn=None"):
        lw.Landscape(nn.Linear(5, 3), "ce", _xy())
    with pytest.raises(TypeError, match="batch_loss"):
        lw.Landscape(nn.Linear(5, 3), data=_xy(), batch_loss=3)


@pytest.mark.parametrize("as_attr", [False, True])
def test_model_output_loss_equals_explicit(as_attr):
    x, y = _xy()
    model = WithLoss(as_attr)
    ls = lw.Landscape(model, data={"x": x, "labels": y})
    assert ls.loss() == pytest.approx(F.cross_entropy(model.net(x), y).item(), rel=1e-6)
    line = ls.line(steps=3, progress=False)
    d = line.direction
    for a, value in zip(line.alphas, line.losses):
        p = {n: t.detach() + float(a) * d[n] for n, t in model.named_parameters()}
        ref = F.cross_entropy(functional_call(model.net, {"weight": p["net.weight"], "bias": p["net.bias"]}, (x,)), y)
        assert value == pytest.approx(ref.item(), rel=1e-5)


def test_a_subset_of_a_dict_batch_indexes_every_per_sample_tensor():
    """plane(samples=n) on an HF-style dict batch: every tensor with the batch's first dimension is indexed alike,
    other entries are kept; equal to the plane on exactly those samples."""
    x, y = _xy(n=20)
    model = WithLoss()
    ls = lw.Landscape(model, data={"x": x, "labels": y})
    sub = ls.plane(resolution=3, samples=7, progress=False)
    idx = torch.randperm(20, generator=torch.Generator().manual_seed(0))[:7].sort().values
    ref = lw.Landscape(model, data={"x": x[idx], "labels": y[idx]}).plane(resolution=3, progress=False)
    np.testing.assert_array_equal(sub.losses, ref.losses)
    assert sub.meta["data"] == {"num_samples": 7, "num_batches": 1, "kind": "batch", "subset_of": 20}


def test_model_output_without_loss_names_both_ways_out():
    x, _y = _xy()
    ls = lw.Landscape(WithLoss(), data={"x": x})
    with pytest.raises(ValueError, match="loss_fn.*batch_loss"):
        ls.loss()
    ls = lw.Landscape(nn.Linear(5, 3), data=x)  # a [n, 3] tensor is no loss either
    with pytest.raises(ValueError, match=r"shape \(12, 3\)"):
        ls.loss()


def test_dict_batches_with_loss_fn_get_a_helpful_error():
    x, y = _xy()
    ls = lw.Landscape(WithLoss(), nn.CrossEntropyLoss(), [{"x": x, "labels": y}])
    with pytest.raises(TypeError, match="loss_fn=None"):
        ls.loss()


def test_batch_loss_sees_the_points_weights_and_weights_batches_by_size():
    """An L2-regularized loss over triples (x, y, w) in batches of unequal size: the sample-weighted mean of
    batch_loss at theta + a d, by explicit arithmetic."""
    g = _gen(5)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    batches = []
    for n in (7, 3, 10):
        batches.append((torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g),
                        torch.rand(n, generator=g)))
    lam = 0.3

    def batch_loss(m, b):
        x, y, w = b
        per = F.cross_entropy(m(x), y, reduction="none")
        return (per * w).sum() / w.sum() + lam * sum(p.pow(2).sum() for p in m.parameters())

    snap = snapshot(model)
    ls = lw.Landscape(model, data=batches, batch_loss=batch_loss)
    for evaluator in ("loop", "vmap"):
        line = ls.line(steps=4, progress=False, evaluator=evaluator)
        for a, value in zip(line.alphas, line.losses):
            m = copy.deepcopy(model)
            with torch.no_grad():
                for n, p in m.named_parameters():
                    p.add_(float(a) * line.direction[n])
            ref = sum(batch_loss(m, b).item() * len(b[0]) for b in batches) / 20
            assert value == pytest.approx(ref, rel=1e-5), evaluator
    assert_same(model, snap)


def test_one_batch_shapes():
    x, y = _xy()
    assert DataSource({"x": x, "labels": y}, pairs=False).single is not None
    assert DataSource((x, y, y.float()), pairs=False).num_samples == 12
    assert DataSource(x, pairs=False).num_samples == 12
    many = DataSource([{"x": x}, {"x": x[:4]}], pairs=False)
    assert many.iterable is not None
    assert [n for _x, _y, n in many.batches("cpu")] == [12, 4]
    assert DataSource((x, y), pairs=True).single is not None


def _dense_hessian(model, names, x, y):
    """``torch.autograd.functional.hessian`` of the cross-entropy over the parameters ``names``, flattened."""
    base = dict(model.named_parameters())

    def f(v):
        parts, off = {}, 0
        for n in names:
            k = base[n].numel()
            parts[n] = v[off:off + k].reshape(base[n].shape)
            off += k
        return F.cross_entropy(functional_call(model, parts, (x,)), y)

    return torch.autograd.functional.hessian(f, torch.cat([base[n].detach().reshape(-1) for n in names]))


# -- which parameters move --------------------------------------------------------------------------------------
class Frozen(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(5, 4)
        self.adapter = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)
        self.backbone.requires_grad_(False)

    def forward(self, x):
        h = torch.tanh(self.backbone(x))
        return self.head(h + self.adapter(h))


def test_params_rules():
    m = Frozen()
    assert select_params(m, None) == (["adapter.weight", "adapter.bias", "head.weight", "head.bias"],
                                      "requires_grad")
    assert select_params(m, "all")[0][:2] == ["backbone.weight", "backbone.bias"]
    assert select_params(m, ["head.weight"]) == (["head.weight"], "names")
    assert select_params(m, lambda n, p: n.startswith("adapter")) == (["adapter.weight", "adapter.bias"],
                                                                       "callable")
    with pytest.raises(ValueError, match="not parameters"):
        select_params(m, ["head.weights"])
    with pytest.raises(ValueError, match="'all'"):
        select_params(m, "head")
    with pytest.raises(ValueError, match="selects no"):
        select_params(m, lambda n, p: False)
    m.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad=True"):
        select_params(m, None)
    with pytest.raises(ValueError, match="not parameters"):  # at construction, not at the first computation
        lw.Landscape(Frozen(), nn.CrossEntropyLoss(), _xy(), params=["nope"])


def test_frozen_parameters_stay_and_meta_says_so():
    x, y = _xy()
    model = Frozen()
    snap = snapshot(model)
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y))
    surf = ls.plane(resolution=3, progress=False)
    assert set(surf.directions[0]) == {"adapter.weight", "adapter.bias", "head.weight", "head.bias"}
    assert surf.meta["params_rule"] == "requires_grad"
    assert surf.meta["moved_parameters"] == 4 * 4 + 4 + 3 * 4 + 3
    assert surf.meta["total_parameters"] == surf.meta["moved_parameters"] + 5 * 4 + 4
    d1, d2 = surf.directions
    base = dict(model.named_parameters())
    for i, j in ((0, 0), (2, 1)):
        p = {n: base[n].detach() + surf.alphas[i] * d1.get(n, 0) + surf.betas[j] * d2.get(n, 0) for n in base}
        ref = F.cross_entropy(functional_call(model, p, (x,)), y).item()
        assert surf.losses[i, j] == pytest.approx(ref, rel=1e-5)
    spec = ls.spectrum(k=2, bottom=0, density=False, trace=False)
    assert spec.meta["num_parameters"] == surf.meta["moved_parameters"]
    H = _dense_hessian(copy.deepcopy(model).double(), list(d1), x.double(), y)  # the moved parameters only
    top = np.sort(np.linalg.eigvalsh(H.numpy()))[::-1][:2]
    np.testing.assert_allclose(spec.top_eigenvalues, top, rtol=1e-4)
    assert assert_same(model, snap) is None


def test_explicit_direction_moving_a_frozen_parameter_is_refused():
    x, y = _xy()
    model = Frozen()
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y))
    d = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="keeps fixed.*params="):
        ls.line(direction=d, steps=3, progress=False)
    d.update({n: torch.zeros_like(p) for n, p in model.backbone.named_parameters(prefix="backbone")})
    assert np.isfinite(ls.line(direction=d, steps=3, progress=False).losses).all()


# -- tied weights and what ``start`` may be -------------------------------------------------------------------
def test_interpolate_accepts_state_dicts_with_tied_duplicates_and_wrapper_prefixes():
    ids = torch.randint(0, 11, (16, 5), generator=_gen(6))
    model = Tied()
    init = copy.deepcopy(model.state_dict())
    assert "out.weight" in init and "emb.weight" in init
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.1)

    def lm_loss(logits, targets):
        return F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1))

    ls = lw.Landscape(model, lm_loss, (ids, ids))
    ref = ls.interpolate(init, steps=5, progress=False)
    for start in ({f"_orig_mod.{k}": v for k, v in init.items()}, {f"module.{k}": v for k, v in init.items()},
                  {k: v for k, v in init.items() if k != "out.weight"}):
        np.testing.assert_array_equal(ls.interpolate(start, steps=5, progress=False).losses, ref.losses)
    # explicit: every use of the tied weight sees theta(a)
    now = dict(model.named_parameters())
    for a, value in zip(ref.alphas, ref.losses):
        p = {n: (1 - a) * init[n] + a * now[n].detach() for n in now}
        logits = functional_call(model, p, (ids,))
        assert value == pytest.approx(lm_loss(logits, ids).item(), rel=1e-5)
    bad = dict(init)
    bad["out.weight"] = bad["out.weight"] + 1
    with pytest.raises(ValueError, match="tied"):
        ls.interpolate(bad, steps=3, progress=False)
    with pytest.raises(ValueError, match="does not have.*'extra'"):
        ls.interpolate({**init, "extra": torch.zeros(1)}, steps=3, progress=False)
    with pytest.raises(ValueError, match="lacks.*mid.weight"):
        ls.interpolate({k: v for k, v in init.items() if k != "mid.weight"}, steps=3, progress=False)


def test_strip_prefixes_only_strips_what_the_model_lacks():
    assert strip_prefixes(["_orig_mod.a", "_orig_mod.b"], ["a", "b"]) == ["a", "b"]
    assert strip_prefixes(["module.module.a"], ["a"]) == ["a"]
    assert strip_prefixes(["module.a"], ["module.a"]) == ["module.a"]


def test_compiled_and_data_parallel_models_are_evaluated_on_their_module():
    x, y = _xy()
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    plain = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y)).line(steps=3, progress=False)
    for wrapped in (torch.compile(model), nn.DataParallel(model)):
        ls = lw.Landscape(wrapped, nn.CrossEntropyLoss(), (x, y))
        line = ls.line(steps=3, progress=False)
        np.testing.assert_array_equal(line.losses, plain.losses)
        assert set(line.direction) == {n for n, _p in model.named_parameters()}
        start = copy.deepcopy(wrapped.state_dict())
        assert np.isfinite(ls.interpolate(start, steps=3, progress=False).losses).all()
        private = PrivateModel(wrapped, torch.device("cpu"))
        assert state_from(start, private, need_buffers=True).keys() == set(private.names)


# -- Hessians through kernels without a second derivative -------------------------------------------------------
class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(4, 12)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)
        h = F.scaled_dot_product_attention(q, k, v, is_causal=True).squeeze(1)
        return self.out(h).mean(1)


def test_hessian_through_sdpa_equals_the_dense_hessian():
    g = _gen(7)
    model = Attention()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x, y = torch.randn(6, 5, 4, generator=g), torch.randint(0, 2, (6,), generator=g)
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y))
    spec = ls.spectrum(k=3, bottom=1, density=False, trace=True, trace_samples=200)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.MATH):
        H = _dense_hessian(copy.deepcopy(model).double(), [n for n, _p in model.named_parameters()], x.double(), y)
    ev = np.linalg.eigvalsh(H.numpy())
    np.testing.assert_allclose(spec.top_eigenvalues, ev[::-1][:3], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(spec.bottom_eigenvalues, ev[:1], rtol=1e-3, atol=1e-4)


class _OnceDifferentiable(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.tanh()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (1 - x.tanh() ** 2)


def test_a_missing_second_derivative_says_what_to_change():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 3)

        def forward(self, x):
            return _OnceDifferentiable.apply(self.fc(x))

    ls = lw.Landscape(Net(), nn.CrossEntropyLoss(), _xy())
    assert np.isfinite(ls.line(steps=3, progress=False).losses).all()  # surfaces need no second derivative
    with pytest.raises(RuntimeError, match="second derivative.*attn_implementation='eager'"):
        ls.spectrum(k=1, bottom=0, density=False, trace=False)


def test_spectrum_without_trace_spends_no_products_on_it():
    x, y = _xy()
    ls = lw.Landscape(nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)), nn.CrossEntropyLoss(), (x, y))
    spec = ls.spectrum(k=2, bottom=0, density=False, trace=False)
    assert np.isnan(spec.trace) and "trace" not in spec.meta["hvps"]
    assert spec.meta["hvps_total"] == spec.meta["hvps"]["top"] + spec.meta["hvps"]["bottom"]
    with pytest.raises(TypeError, match="trace must be True or False"):
        ls.spectrum(trace="no")
